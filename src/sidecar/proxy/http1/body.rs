//! The upstream's response body, read straight from its connection by whoever polls the body (the
//! client connection's task), with no connection task in between.
//!
//! The body owns the connection. It goes back to the pool only when the body was read to its exact end
//! with nothing after it and the head allowed another request; a body dropped early (the client went
//! away, the upstream timed out) closes the connection, whose unread rest would otherwise be taken for
//! the next response.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::chunked::{ChunkError, Chunked};
use super::{Idle, Lent};
use crate::sidecar::body::BoxError;

/// Bytes asked for per read of a body: large enough for few reads of a large body.
const READ_SIZE: usize = 64 * 1024;

/// How the body ends.
#[derive(Debug)]
pub enum Framing {
    /// After this many more bytes (0: no body, or read to its end).
    Length(u64),
    Chunked(Chunked),
    /// When the upstream closes the connection.
    UntilClose,
}

impl Framing {
    /// The next piece of body data in `buffer`, if any.
    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        match self {
            Framing::Length(left) => {
                if *left == 0 || buffer.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buffer.len());
                *left -= take as u64;
                Ok(Some(buffer.split_to(take).freeze()))
            }
            Framing::Chunked(chunked) => chunked.decode(buffer),
            Framing::UntilClose => Ok((!buffer.is_empty()).then(|| buffer.split().freeze())),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Framing::Length(left) => *left == 0,
            Framing::Chunked(chunked) => chunked.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// How much the next read should make room for.
    fn read_size(&self) -> usize {
        match self {
            Framing::Length(left) => usize::try_from(*left).unwrap_or(READ_SIZE).clamp(1, READ_SIZE),
            _ => READ_SIZE,
        }
    }
}

/// Why a response body broke off; the client sees its own response end uncleanly.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the upstream closed the connection before the response body was complete")]
    Closed,
    #[error("reading the upstream's response body failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("the upstream's chunked response body is malformed: {0}")]
    Chunked(#[from] ChunkError),
}

/// A response body from an HTTP/1.1 upstream connection.
pub struct Http1Body {
    /// `None` once the body has ended (or broken).
    connection: Option<Lent>,
    framing: Framing,
    /// Where the connection goes when the body ends cleanly; `None` when it must not be reused.
    pool: Option<Idle>,
}

impl Http1Body {
    pub(super) fn new(connection: Lent, framing: Framing, pool: Option<Idle>) -> Http1Body {
        let mut body = Http1Body {
            connection: Some(connection),
            framing,
            pool,
        };
        if body.framing.is_done() {
            body.finish();
        }
        body
    }

    /// The body has been read to its end: the connection goes back to the pool if it may carry another
    /// request and nothing arrived after the body (which would be taken for the next response).
    fn finish(&mut self) {
        if let (Some(connection), Some(pool)) = (self.connection.take(), self.pool.take())
            && connection.buffer.is_empty()
        {
            pool.put(connection);
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut connection.buffer) {
                Err(e) => return this.fail(e.into()),
                Ok(Some(data)) => {
                    if this.framing.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.framing.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            match ready!(connection.poll_fill(cx, this.framing.read_size())) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(BodyError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(BodyError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.connection, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(left)) => SizeHint::with_exact(*left),
            (Some(_), _) => SizeHint::default(),
        }
    }
}
