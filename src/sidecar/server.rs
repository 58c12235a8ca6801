//! Accepting connections and serving HTTP/1.1 on them.
//!
//! Two things here go beyond what hyper does alone:
//! - a client that starts a request but does not finish its headers within the header timeout gets a
//!   `408` JSON answer (hyper just closes); an idle keep-alive connection is closed silently after the same
//!   time, as a client that sent nothing is owed no answer;
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

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::handler::{ConnectionState, Handler};
use super::headers::whole_seconds;

/// How long a lingering close reads at most, and how long it waits for each read.
const LINGER_TOTAL: Duration = Duration::from_secs(10);
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(25);

/// A TCP stream that remembers whether bytes arrived since the last response was written, i.e. whether a
/// request has started.
struct Tracked {
    stream: TcpStream,
    request_started: bool,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
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
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time for a request's headers to arrive (and for an idle keep-alive connection to stay open).
    pub header_read_timeout: Duration,
}

/// Serves connections from `listener` until `shutdown`, then lets requests in flight finish.
///
/// Connections are served by `workers` threads, each running its own single-threaded runtime with its own
/// handler (and so its own upstream connection pool), like nginx's worker processes: a request, its
/// upstream call and its answer stay on one thread, without cross-thread wake-ups. Keys, limits and
/// metrics are shared. This loop only accepts and hands connections out in turn.
pub async fn serve(
    listener: TcpListener,
    handler: impl Fn() -> Arc<Handler>,
    limits: ConnectionLimits,
    workers: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut inboxes = Vec::new();
    let mut finished = Vec::new();
    for index in 0..workers.max(1) {
        let (inbox, connections) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let (handler, shutdown) = (handler(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("sidecar-worker-{index}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(worker(connections, handler, limits, shutdown)),
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
        let _ = stream.set_nodelay(true);
        let stream = stream.into_std()?;
        // A worker that has stopped (it cannot start its runtime) hands its turn to the next one.
        let mut stream = Some(stream);
        for _ in 0..inboxes.len() {
            next = (next + 1) % inboxes.len();
            match inboxes[next].send(stream.take().expect("not sent yet")) {
                Ok(()) => break,
                Err(returned) => stream = Some(returned.0),
            }
        }
        if stream.is_some() {
            return Err(io::Error::other("no sidecar worker is running"));
        }
    }
    drop(inboxes);
    for worker in finished {
        let _ = worker.await;
    }
    Ok(())
}

/// One worker: serves the connections it is handed until shutdown, then drains them.
async fn worker(
    mut connections: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    handler: Arc<Handler>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // Every connection task holds a sender; when all are dropped, `recv` returns None.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = connections.recv() => match stream {
                Some(stream) => stream,
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
            serve_connection(stream, handler, &builder, limits, shutdown).await;
            drop(alive);
        });
    }
    drop(alive);
    let _ = tokio::time::timeout(DRAIN, all_done.recv()).await;
}

async fn serve_connection(
    stream: TcpStream,
    handler: Arc<Handler>,
    builder: &http1::Builder,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut io = Tracked {
        stream,
        request_started: false,
    };
    let state = Arc::new(ConnectionState::default());
    let service_state = state.clone();
    let service = service_fn(move |request| {
        let (handler, state) = (handler.clone(), service_state.clone());
        async move { Ok::<_, Infallible>(handler.handle(request, &state).await) }
    });
    let result = {
        let connection = builder.serve_connection(TokioIo::new(&mut io), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    match result {
        Err(e) if e.is_timeout() && io.request_started => {
            let _ = request_timeout(&mut io.stream, limits.header_read_timeout).await;
        }
        Err(e) if e.is_timeout() => {}
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
        Ok(()) => {}
    }
    if state.left_body_unread.load(Ordering::Acquire) {
        linger(&mut io.stream).await;
    }
}

/// Answers a client whose headers did not arrive in time, then closes.
async fn request_timeout(stream: &mut TcpStream, after: Duration) -> io::Result<()> {
    let body = serde_json::json!({
        "message": format!("the request headers did not arrive within {} s", whole_seconds(after))
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    linger(stream).await;
    Ok(())
}

/// Reads and discards what the client still sends (bounded in time), so closing does not reset the
/// connection before the client has read the answer.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER_TOTAL, async {
        loop {
            match tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    })
    .await;
}
