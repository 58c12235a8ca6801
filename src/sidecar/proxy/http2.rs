//! HTTP/2 to the upstream: a worker's requests share two long-lived connections, in turn.
//!
//! Two, not one: the upstream reads each connection on one task, so a second connection lets a
//! multi-threaded upstream read on two threads, and a request waits behind fewer others when one
//! connection's task is busy (one connection measured a p99 twice as long at the same throughput).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{ForwardError, connect, drive};
use crate::sidecar::body::RequestBody;

const CONNECTIONS: usize = 2;
/// Flow-control windows: large enough that a 10 MiB write or a large read is not throttled by
/// round trips to grant credit (they are credit, not memory set aside).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

type Slot = tokio::sync::Mutex<Option<SendRequest<RequestBody>>>;

/// One worker's connections.
#[derive(Clone, Default)]
pub struct Connections {
    slots: Arc<[Slot; CONNECTIONS]>,
    next: Arc<AtomicUsize>,
}

impl Connections {
    /// Sends on the next connection (opened if it is not open). A request the connection refused before
    /// sending it (it had just closed) goes out on a new connection: it never reached the upstream.
    pub async fn send(
        &self,
        authority: &str,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS];
        let mut request = request;
        for _ in 0..2 {
            let mut sender = open(slot, authority).await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        request = unsent;
                        slot.lock().await.take();
                    }
                    None => return Err(error.into_error().into()),
                },
            }
        }
        Err(ForwardError::Unreachable(
            "the upstream closed its HTTP/2 connection before taking the request".into(),
        ))
    }
}

/// The slot's connection, opened first if it is closed or was never opened.
async fn open(slot: &Slot, authority: &str) -> Result<SendRequest<RequestBody>, ForwardError> {
    let mut held = slot.lock().await;
    if let Some(sender) = held.as_ref().filter(|sender| !sender.is_closed()) {
        return Ok(sender.clone());
    }
    let stream = connect(authority).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(stream))
        .await?;
    drive(connection);
    *held = Some(sender.clone());
    Ok(sender)
}
