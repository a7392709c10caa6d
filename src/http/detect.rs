//! Which HTTP a connection speaks: HTTP/2 when its first bytes are the
//! HTTP/2 connection preface, HTTP/1 as soon as they differ from it.
//!
//! The bytes read to tell are handed to hyper in its first read together
//! with whatever else has arrived, so that a request head sent at once
//! lands in one read: hyper's read buffer then keeps its initial size
//! instead of growing for the rest of the head (8 KiB a connection less).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::deadline::{Around, Wrapped};

/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Reads until the first bytes are the preface or differ from it.
pub async fn detect<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(Protocol, Prefixed<I>)> {
    let mut buf = [0u8; PREFACE.len()];
    let mut filled = 0;
    let protocol = loop {
        if filled == PREFACE.len() {
            break Protocol::Http2;
        }
        let n = io.read(&mut buf[filled..]).await?;
        let read = &buf[filled..filled + n];
        filled += n;
        if n == 0 || read != &PREFACE[filled - n..filled] {
            break Protocol::Http1;
        }
    };
    let prefix = Prefix {
        prefix: buf,
        start: 0,
        end: filled,
        error: None,
    };
    Ok((protocol, Wrapped::around(io, prefix)))
}

/// A connection whose first bytes were already read.
pub type Prefixed<I> = Wrapped<I, Prefix>;

/// The first bytes of a connection, read to tell its protocol.
pub struct Prefix {
    prefix: [u8; PREFACE.len()],
    /// The part of `prefix` not yet handed over.
    start: usize,
    end: usize,
    /// An error met while reading past the prefix, for the next read.
    error: Option<io::Error>,
}

impl<I: AsyncRead> Around<I> for Prefix {
    fn poll_read(
        &mut self,
        mut inner: Pin<&mut I>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        if self.start == self.end {
            return inner.poll_read(cx, buf);
        }
        let n = (self.end - self.start).min(buf.remaining());
        buf.put_slice(&self.prefix[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end && buf.remaining() > 0 {
            // What followed the prefix, if it has arrived: nothing is lost
            // by waiting, the prefix is returned either way.
            if let Poll::Ready(Err(e)) = inner.as_mut().poll_read(cx, buf) {
                self.error = Some(e);
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn detected(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let (protocol, mut io) = detect(server).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (protocol, all)
    }

    #[tokio::test]
    async fn http1_http2_and_short_inputs_are_told_apart_and_kept_whole() {
        let get = b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(detected(&[get]).await, (Protocol::Http1, get.to_vec()));
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(detected(&[&h2]).await, (Protocol::Http2, h2.clone()));
        assert_eq!(
            detected(&[&PREFACE[..5], &PREFACE[5..]]).await.0,
            Protocol::Http2
        );
        assert_eq!(
            detected(&[b"PRI "]).await,
            (Protocol::Http1, b"PRI ".to_vec())
        );
        assert_eq!(detected(&[]).await, (Protocol::Http1, Vec::new()));
    }

    #[tokio::test]
    async fn the_first_read_carries_the_prefix_and_what_followed() {
        let get = b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(get).await.unwrap();
        let (_, mut io) = detect(server).await.unwrap();
        let mut buf = [0u8; 256];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get);
    }
}
