//! The one response body type: a single chunk, plain or secret. A secret
//! chunk (a private key) is zeroized when hyper drops it after writing.

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

pub struct Body(Option<Chunk>);

impl Body {
    pub fn empty() -> Body {
        Body(None)
    }

    pub fn secret(bytes: Zeroizing<Vec<u8>>) -> Body {
        Body(Some(Chunk::Secret(bytes, 0)))
    }
}

impl<T: Into<Bytes>> From<T> for Body {
    fn from(b: T) -> Body {
        let b = b.into();
        Body((!b.is_empty()).then_some(Chunk::Plain(b)))
    }
}

impl hyper::body::Body for Body {
    type Data = Chunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        Poll::Ready(self.0.take().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |c| c.remaining() as u64))
    }
}
