//! Accepting connections and serving HTTP/1.1 on them.
//!
//! A connection starts on the sidecar's own short path for the usual request (`lean.rs`); the first
//! request that path does not take, and everything after it on that connection, is served by hyper, which
//! gets the bytes already read. What goes beyond what hyper does alone, on either path:
//! - a client that starts a request but does not finish its headers within the header timeout gets a
//!   `408` JSON answer (hyper just closes); an idle keep-alive connection is closed silently after the same
//!   time, as a client that sent nothing is owed no answer;
//! - a request head hyper cannot parse gets a JSON answer with hyper's status (400, 414, 431) instead of
//!   hyper's empty one: hyper writes that answer itself, so the stream below it holds back a response
//!   head written while no request is being served (only hyper's own error answers are) and the
//!   connection writes the JSON answer in its place once hyper has given up;
//! - connections are capped (`connections.rs`) and a request head is at most [`MAX_REQUEST_HEAD_BYTES`],
//!   so a flood of connections cannot grow memory without bound;
//! - after refusing a request without reading its body (401, 403, 413 by Content-Length, 429), the
//!   connection lingers, reading and discarding what the client still sends for a few seconds, so that the
//!   client gets to read the answer instead of a connection reset.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::body::{ClientBody, ResponseBody};
use super::connections::{Connections, Registration};
use super::handler::{ConnectionState, Handler};
use super::headers::whole_seconds;

mod lean;

/// How long a lingering close reads at most, and how long it waits for each read.
const LINGER_TOTAL: Duration = Duration::from_secs(10);
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(25);
/// The largest request head (request line and headers) read, in bytes: 431 beyond it. It bounds the
/// memory of a connection waiting for headers (hyper's default is about 400 KiB).
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// What a client that had sent part of a request reads when its connection is closed to make room.
const EVICTED_MESSAGE: &str = "too many connections are waiting for request headers (--max-pending-headers) and \
                               this one waited longest; send the whole request promptly";

/// A TCP stream that remembers whether bytes arrived since the last response was written (whether a
/// request has started), and holds back the answers hyper writes itself.
struct Tracked {
    stream: TcpStream,
    /// What the lean path read before it handed the connection over: read again first.
    replay: BytesMut,
    request_started: bool,
    registration: Arc<Registration>,
    /// The status of an answer hyper wrote itself (to a request head it could not parse), held back.
    held_back: Option<StatusCode>,
    /// Bytes went out while the connection waited for headers (an answer hyper joined to the last one).
    wrote_while_waiting: bool,
}

impl Tracked {
    /// Holds back `bytes` if they are hyper's own answer: a response head written while the connection
    /// waits for a request's headers, i.e. after the last response was written out and before the next
    /// request reached the service. (A client that pipelines a malformed request behind one whose answer
    /// it does not read can have hyper's answer joined to the rest of that answer: it then goes out as
    /// hyper wrote it.)
    fn hold_back(&mut self, bytes: &[u8]) -> bool {
        if !self.registration.is_waiting() {
            return false;
        }
        if !bytes.starts_with(b"HTTP/1.1 ") {
            self.wrote_while_waiting |= !bytes.is_empty();
            return false;
        }
        let status = bytes
            .get(9..12)
            .and_then(|code| StatusCode::from_bytes(code).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        self.held_back = Some(status);
        true
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            self.request_started = true;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.request_started = true;
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held_back.is_some() || self.hold_back(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.request_started = false;
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if self.held_back.is_some() || self.hold_back(first) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.request_started = false;
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes its own buffer into the stream before flushing the stream.
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            self.registration.flushed();
        }
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not passed on: the connection closes the socket itself once hyper is done with it, after the
        // answer it may still owe (one in place of hyper's own, a 408).
        Poll::Ready(Ok(()))
    }
}

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time for a request's headers to arrive (and for an idle keep-alive connection to stay open).
    pub header_read_timeout: Duration,
}

/// A response body that tells the connection when the response has ended (or was dropped), so that the
/// connection counts as waiting for headers again once the rest is written out.
struct Watched {
    inner: ResponseBody,
    registration: Option<Arc<Registration>>,
}

impl Watched {
    fn ended(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.ending();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for Watched {
    type Data = hyper::body::Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.ended();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves connections from `listener` until `shutdown`, then lets requests in flight finish.
///
/// Connections are served by `workers` threads, each running its own single-threaded runtime with its own
/// handler (and so its own upstream connection pool), like nginx's worker processes: a request, its
/// upstream call and its answer stay on one thread, without cross-thread wake-ups. Keys, limits and
/// metrics are shared. This loop only accepts, applies the connection caps, and hands connections out in
/// turn.
pub async fn serve(
    listener: TcpListener,
    handler: impl Fn() -> Arc<Handler>,
    limits: ConnectionLimits,
    connections: Arc<Connections>,
    workers: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    type Handed = (std::net::TcpStream, Registration);
    let mut inboxes = Vec::new();
    let mut finished = Vec::new();
    for index in 0..workers.max(1) {
        let (inbox, handed) = tokio::sync::mpsc::unbounded_channel::<Handed>();
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let (handler, shutdown) = (handler(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("sidecar-worker-{index}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(worker(handed, handler, limits, shutdown)),
                    Err(e) => tracing::error!(error = %e, "cannot start a sidecar worker"),
                }
                let _ = done.send(());
            })?;
        inboxes.push(inbox);
        finished.push(finished_rx);
    }
    let mut next = 0;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(registration) = connections.admit() else {
            refuse_at_capacity(&stream);
            continue;
        };
        // Under a flood, accepting faster than the workers close the connections evicted to make room
        // would let memory grow past what the caps allow.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = connections.wait_for_room() => {}
        }
        let _ = stream.set_nodelay(true);
        let stream = stream.into_std()?;
        // A worker that has stopped (it cannot start its runtime) hands its turn to the next one.
        let mut handed = Some((stream, registration));
        for _ in 0..inboxes.len() {
            next = (next + 1) % inboxes.len();
            match inboxes[next].send(handed.take().expect("not sent yet")) {
                Ok(()) => break,
                Err(returned) => handed = Some(returned.0),
            }
        }
        if handed.is_some() {
            return Err(io::Error::other("no sidecar worker is running"));
        }
    }
    drop(inboxes);
    for worker in finished {
        let _ = worker.await;
    }
    Ok(())
}

/// Answers a connection beyond `--max-connections` with a 503 and closes it, without waiting for anything:
/// what the client already sent is read first (so the close does not reset the answer away), what does
/// not fit in the socket's buffer is not written.
fn refuse_at_capacity(stream: &TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.try_write(&json_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "the sidecar is serving as many connections as it accepts (--max-connections); retry in a moment",
        &[("retry-after", "1")],
    ));
}

/// One worker: serves the connections it is handed until shutdown, then drains them.
async fn worker(
    mut handed: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, Registration)>,
    handler: Arc<Handler>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // Every connection task holds a sender; when all are dropped, `recv` returns None.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, registration) = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = handed.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a connection");
                continue;
            }
        };
        let (handler, builder, shutdown, alive) = (handler.clone(), builder.clone(), shutdown.clone(), alive.clone());
        tokio::spawn(async move {
            serve_connection(stream, Arc::new(registration), handler, &builder, limits, shutdown).await;
            drop(alive);
        });
    }
    drop(alive);
    let _ = tokio::time::timeout(DRAIN, all_done.recv()).await;
}

/// How hyper's side of a connection ended.
enum Ended {
    Served(Result<(), hyper::Error>),
    /// Closed to make room for a new connection while it waited for a request's headers.
    Evicted,
}

async fn serve_connection(
    mut stream: TcpStream,
    registration: Arc<Registration>,
    handler: Arc<Handler>,
    builder: &http1::Builder,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let state = Arc::new(ConnectionState::default());
    let replay = match lean::serve(&mut stream, &registration, &handler, limits, &shutdown, &state).await {
        lean::Outcome::HandOver(replay) => replay,
        lean::Outcome::Closed => {
            if state.left_body_unread.load(Ordering::Acquire) {
                linger(&mut stream, &registration).await;
            }
            return;
        }
    };
    let mut io = Tracked {
        stream,
        request_started: !replay.is_empty(),
        replay,
        registration: registration.clone(),
        held_back: None,
        wrote_while_waiting: false,
    };
    let (service_state, service_registration, service_handler) = (state.clone(), registration.clone(), handler.clone());
    let service = service_fn(move |request| {
        let (handler, state, registration) = (
            service_handler.clone(),
            service_state.clone(),
            service_registration.clone(),
        );
        registration.serving();
        // Boxed: the handler's state machine is large, and hyper moves the service future it gets. (The
        // lean path keeps it in the connection's task instead, allocated once per connection.)
        Box::pin(async move {
            let response = handler.handle(request.map(ClientBody::Hyper), &state).await;
            Ok::<_, Infallible>(response.map(|inner| Watched {
                inner,
                registration: Some(registration),
            }))
        })
    });
    let ended = {
        let connection = builder.serve_connection(TokioIo::new(&mut io), service);
        tokio::pin!(connection);
        loop {
            tokio::select! {
                result = connection.as_mut() => break Ended::Served(result),
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    break Ended::Served(connection.await);
                }
                _ = registration.evicted() => if registration.is_evicted() {
                    break Ended::Evicted;
                },
            }
        }
    };
    if let Some(status) = io.held_back {
        handler
            .metrics
            .unknown()
            .reject(super::metrics::RefusalReason::BadRequest);
        let detail = match &ended {
            Ended::Served(Err(e)) => e.to_string(),
            _ => String::new(),
        };
        let _ = answer(
            &mut io.stream,
            status,
            &malformed_message(status, &detail),
            &registration,
        )
        .await;
        return;
    }
    match ended {
        Ended::Evicted if io.request_started => {
            // Written without waiting and not lingering: under a flood that would keep connections open.
            let _ = io.stream.try_write(&json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                EVICTED_MESSAGE,
                &[("retry-after", "1")],
            ));
            return;
        }
        Ended::Evicted => return,
        Ended::Served(Err(e)) if e.is_timeout() && io.request_started => {
            let message = format!(
                "the request headers did not arrive within {} s",
                whole_seconds(limits.header_read_timeout)
            );
            let _ = answer(&mut io.stream, StatusCode::REQUEST_TIMEOUT, &message, &registration).await;
            return;
        }
        Ended::Served(Err(e)) if e.is_timeout() => {}
        Ended::Served(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ended::Served(Ok(())) => {}
    }
    if state.left_body_unread.load(Ordering::Acquire) {
        linger(&mut io.stream, &registration).await;
    }
}

/// What a client whose request head hyper could not parse reads.
fn malformed_message(status: StatusCode, detail: &str) -> String {
    match status {
        StatusCode::URI_TOO_LONG => "the request target (URI) is too long".into(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
            "the request line and headers are larger than {MAX_REQUEST_HEAD_BYTES} bytes, or there are more than 100 \
             headers"
        ),
        _ if detail.is_empty() => "malformed HTTP request".into(),
        _ => format!("malformed HTTP request: {detail}"),
    }
}

/// An HTTP/1.1 answer with a JSON `{"message": ...}` body that closes the connection.
fn json_answer(status: StatusCode, message: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in headers {
        answer.push_str(&format!("{name}: {value}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    answer.into_bytes()
}

/// Answers a client the sidecar gave up on (headers late or malformed), then closes.
async fn answer(
    stream: &mut TcpStream,
    status: StatusCode,
    message: &str,
    registration: &Registration,
) -> io::Result<()> {
    // A client that reads nothing cannot hold the connection open.
    tokio::time::timeout(LINGER_IDLE, stream.write_all(&json_answer(status, message, &[])))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    stream.shutdown().await?;
    linger(stream, registration).await;
    Ok(())
}

/// Reads and discards what the client still sends (bounded in time, and cut short if the connection is
/// chosen to make room), so closing does not reset the connection before the client has read the answer.
async fn linger(stream: &mut TcpStream, registration: &Registration) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let drain = tokio::time::timeout(LINGER_TOTAL, async {
        loop {
            match tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    });
    tokio::select! {
        _ = drain => {}
        _ = async {
            loop {
                registration.evicted().await;
                if registration.is_evicted() {
                    return;
                }
            }
        } => {}
    }
}
