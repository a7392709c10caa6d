//! The one response body type: a single chunk, plain or secret, or a
//! stream of chunks (the change feed). A secret chunk (a private key) is
//! zeroized when hyper drops it after writing.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};
use zeroize::Zeroizing;

pub enum Chunk {
    Plain(Bytes),
    Secret(Zeroizing<Vec<u8>>, usize),
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Plain(b) => b.remaining(),
            Chunk::Secret(v, pos) => v.len() - pos,
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Plain(b) => b.chunk(),
            Chunk::Secret(v, pos) => &v[*pos..],
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Plain(b) => b.advance(n),
            Chunk::Secret(v, pos) => {
                assert!(*pos + n <= v.len(), "advance past the end of a chunk");
                *pos += n;
            }
        }
    }
}

/// Chunks that come one at a time, until there are none (a change feed
/// stream).
pub trait Chunks: Send + Sync {
    /// The next chunk, `None` at the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

pub struct Body(Option<Chunk>, Option<Box<dyn Chunks>>);

impl Body {
    pub fn empty() -> Body {
        Body(None, None)
    }

    pub fn secret(bytes: Zeroizing<Vec<u8>>) -> Body {
        Body(Some(Chunk::Secret(bytes, 0)), None)
    }

    /// The chunks of `stream`, until it ends.
    pub fn stream(stream: impl Chunks + 'static) -> Body {
        Body(None, Some(Box::new(stream)))
    }
}

impl<T: Into<Bytes>> From<T> for Body {
    fn from(b: T) -> Body {
        let b = b.into();
        Body((!b.is_empty()).then_some(Chunk::Plain(b)), None)
    }
}

impl hyper::body::Body for Body {
    type Data = Chunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        if let Some(stream) = self.1.as_mut() {
            return stream
                .poll_chunk(cx)
                .map(|b| b.map(|b| Ok(Frame::data(Chunk::Plain(b)))));
        }
        Poll::Ready(self.0.take().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none() && self.1.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.1.is_some() {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.0.as_ref().map_or(0, |c| c.remaining() as u64))
    }
}
