//! Request and response bodies: a write's body read whole but bounded in size and time, a read's body
//! streamed to the upstream under a deadline and a size bound, and the upstream's response streamed back while the request
//! keeps its concurrency slot.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::limits::Permit;
use super::metrics::InFlight;
use super::proxy::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: hyper's, or one the lean HTTP/1.1 path (`server/lean.rs`) found whole in
/// what it had read with the head.
pub enum ClientBody {
    Hyper(Incoming),
    Buffered(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Buffered(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Buffered(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// What an answer streamed from the upstream holds until its body ends or is dropped: the request's
/// concurrency slot and its place in the in-flight gauge.
pub type Held = (Permit, InFlight);

/// What the sidecar answers with: its own JSON, or the upstream's body streamed through.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream { inner: UpstreamBody, hold: Option<Held> },
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream { inner, hold } => {
                let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
                if frame.is_none() {
                    hold.take();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// How a streamed request body ended badly, so the handler can answer 408 or 400 rather than 502.
#[derive(Clone, Default)]
pub struct StreamFault(Arc<AtomicU8>);

impl StreamFault {
    const TIMED_OUT: u8 = 1;
    const ABORTED: u8 = 2;
    const TOO_LARGE: u8 = 3;

    pub fn timed_out(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::TIMED_OUT
    }

    pub fn aborted(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::ABORTED
    }

    /// More arrived than the body's bound: the upstream got part of it, then an error, never all of it.
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::TOO_LARGE
    }

    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::Release);
    }
}

/// The body sent to the upstream.
pub enum RequestBody {
    Full(Option<Bytes>),
    /// A client's body streamed through; it fails if it has not ended by the deadline, or once more than
    /// `left` bytes more arrive.
    Streaming {
        inner: ClientBody,
        deadline: Pin<Box<Sleep>>,
        fault: StreamFault,
        left: u64,
    },
}

impl RequestBody {
    pub fn streaming(inner: ClientBody, deadline: Instant, max: u64, fault: StreamFault) -> Self {
        if inner.is_end_stream() {
            return RequestBody::Full(None);
        }
        RequestBody::Streaming {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            fault,
            left: max,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than allowed")]
struct BodyTooLarge;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Streaming {
                inner,
                deadline,
                fault,
                left,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    fault.set(StreamFault::ABORTED);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let size = frame.data_ref().map_or(0, |data| data.len() as u64);
                    if size > *left {
                        fault.set(StreamFault::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    *left -= size;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(other) => Poll::Ready(other),
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        fault.set(StreamFault::TIMED_OUT);
                        return Poll::Ready(Some(Err(BodyTimedOut.into())));
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Streaming { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Streaming { inner, .. } => inner.size_hint(),
        }
    }
}

/// Why a write body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More than the limit arrived; reading stopped there.
    TooLarge,
    TimedOut,
    /// The client stopped sending, or sent a broken chunked encoding.
    Aborted,
}

/// Reads a body whole, stopping as soon as it exceeds `max` bytes or `deadline` passes.
pub async fn read_bounded(mut body: ClientBody, max: Option<u64>, deadline: Instant) -> Result<Bytes, ReadError> {
    let max = max.unwrap_or(u64::MAX);
    let capacity = body.size_hint().lower().min(max).min(1 << 20) as usize;
    let mut buffer = Vec::with_capacity(capacity);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadError::TimedOut),
            Ok(None) => return Ok(Bytes::from(buffer)),
            Ok(Some(Err(_))) => return Err(ReadError::Aborted),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if (buffer.len() + data.len()) as u64 > max {
                return Err(ReadError::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
    }
}
