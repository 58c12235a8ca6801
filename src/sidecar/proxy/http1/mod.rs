//! HTTP/1.1 to the upstream, without a connection task: the request's own task writes the request on a
//! pooled keep-alive connection and reads the response head; the response body then reads the
//! connection itself ([`Http1Body`]) and hands it back to the pool at its end.
//!
//! Why not hyper's client: with it a request went through a channel to the connection's task, the
//! response came back through a oneshot and the body through a want-signalled channel, four to five task
//! polls a request, and hyper's client state machine ran on top; in front of an upstream that costs
//! almost nothing the upstream connection's task alone was 7-9% of the sidecar's samples, against 29-31%
//! for all of its user space. Without it a forwarded request costs 15% less user-space CPU
//! (docs/sidecar.md, "The lean HTTP/1.1 path").
//! A sidecar with one upstream, one pool per worker thread, and requests it never pipelines needs none
//! of that: a connection is either lent to exactly one request or idle in the pool.
//!
//! - `request`: writes the head (and a small body) in one write, a read's body streamed after it;
//! - `response`: parses the head with `httparse`, bounded in size, and decides the body's framing;
//! - `body`: the response body, reading the connection directly;
//! - `chunked`: the chunked coding's decoder;
//! - `watchdog`: the upstream timeout, one timer per connection rather than per request.

mod body;
mod chunked;
mod request;
mod response;
mod watchdog;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper::http::request::Parts;
use hyper::{Method, Response};
use tokio::net::TcpStream;

pub use body::Http1Body;
use request::Outgoing;
use response::{MAX_HEAD, MAX_HEADERS};
use watchdog::Watchdog;

use super::{ForwardError, connect, within};
use crate::sidecar::body::{BoxError, RequestBody};

/// Idle connections kept per worker; more are closed when their request ends.
const MAX_IDLE: usize = 512;
/// An idle connection's read buffer larger than this (after a large answer) is not kept with it.
const MAX_IDLE_BUFFER: usize = 16 * 1024;
/// The read buffer a new connection starts with: a typical answer arrives in one read.
const INITIAL_BUFFER: usize = 8 * 1024;
/// A connection idle for longer is checked before it is lent: an upstream may have closed it, or written
/// to it (a 408 at its idle timeout), which the next request would take for its answer. Idle timeouts
/// are seconds, so a connection back from a request a moment ago needs no check (and no system call).
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Why a request over HTTP/1.1 failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("cannot send the request to the upstream: {0}")]
    Unsent(#[source] std::io::Error),
    #[error("sending the request to the upstream failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("the upstream closed the connection without answering")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection in the middle of its response head")]
    ClosedInHead,
    #[error("reading the upstream's response failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("the upstream's response head is larger than {} KiB", MAX_HEAD / 1024)]
    HeadTooLarge,
    #[error("the upstream's response has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the upstream's response head is malformed: {0}")]
    MalformedHead(httparse::Error),
    #[error("the upstream's response has a status code outside 100-999")]
    BadStatus,
    #[error("the upstream's response has a header field that is not valid")]
    BadHeader,
    #[error("the upstream's response has an invalid or contradictory Content-Length")]
    BadLength,
    #[error("the upstream answered 101 Switching Protocols, which the sidecar does not relay")]
    Upgrade,
    #[error("the upstream did not answer within the upstream timeout")]
    TimedOut,
}

impl Http1Error {
    /// Whether the request cannot have reached the upstream's application: nothing of it was written, or
    /// the connection closed without a byte of an answer, as an idle keep-alive connection the upstream
    /// closed meanwhile does.
    fn stale(&self) -> bool {
        matches!(self, Http1Error::Unsent(_) | Http1Error::ClosedBeforeAnswer)
    }
}

impl From<Http1Error> for ForwardError {
    fn from(error: Http1Error) -> Self {
        match error {
            Http1Error::TimedOut => ForwardError::TimedOut,
            error => ForwardError::Unreachable(error.to_string()),
        }
    }
}

/// A keep-alive connection and what has been read from it but not yet used.
///
/// It lives in a `Box` from its opening to its closing ([`Lent`]): a request takes it from the pool, the
/// response body holds it and gives it back, and each of those hands passes a pointer instead of the
/// 96 bytes (the native profile had copies of such values between the layers at 1.37 us a request,
/// against nginx's 0.44).
struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    /// When it went back to the pool.
    idle_since: Instant,
    /// Bounds the wait for each answer; `None` only while a request is using it.
    watchdog: Option<Watchdog>,
}

impl Connection {
    /// Connects, within `deadline` (the first request's).
    async fn open(authority: &str, deadline: tokio::time::Instant) -> Result<Lent, ForwardError> {
        Ok(Box::new(Connection {
            stream: within(deadline, connect(authority)).await?,
            buffer: BytesMut::with_capacity(INITIAL_BUFFER),
            idle_since: Instant::now(),
            watchdog: Some(Watchdog::new(deadline)),
        }))
    }

    /// Whether the idle connection can be lent: it has been idle only briefly, or nothing (not even its
    /// end) has arrived on it since its last answer.
    fn usable(&self) -> bool {
        if self.idle_since.elapsed() < CHECK_IDLE_AFTER {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads what has arrived into the buffer (0: the upstream closed the connection).
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<std::io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < room.min(INITIAL_BUFFER) {
            self.buffer.reserve(room);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

/// One worker's idle connections.
#[derive(Clone, Default)]
pub struct Pool {
    idle: Idle,
}

/// The idle connections, most recently used last (and taken first: its buffers are warm).
#[derive(Clone, Default)]
struct Idle(Arc<Mutex<Vec<Lent>>>);

/// A connection as it is passed around: see [`Connection`].
type Lent = Box<Connection>;

impl Idle {
    fn take(&self) -> Option<Lent> {
        loop {
            let connection = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if connection.usable() {
                return Some(connection);
            }
        }
    }

    fn put(&self, mut connection: Lent) {
        if connection.buffer.capacity() > MAX_IDLE_BUFFER {
            connection.buffer = BytesMut::new();
        }
        connection.idle_since = Instant::now();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }
}

impl Pool {
    /// Sends on an idle connection, or a new one, and returns once the response head has arrived, or
    /// [`ForwardError::TimedOut`] at `deadline`. A request an idle connection did not take (the upstream
    /// had closed it) is sent again on a new connection, unless its streamed body was already used up.
    pub async fn send(
        &self,
        authority: &str,
        parts: &Parts,
        mut body: RequestBody,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Http1Body>, ForwardError> {
        let outgoing = Outgoing::new(parts, &body);
        let to_head = parts.method == Method::HEAD;
        if let Some(connection) = self.idle.take() {
            match self.exchange(connection, &outgoing, &mut body, to_head, deadline).await {
                Err(e) if e.stale() && outgoing.replayable() => {
                    tracing::debug!(error = %e, "an idle upstream connection was closed; sending on a new one");
                }
                done => return done.map_err(Into::into),
            }
        }
        let connection = Connection::open(authority, deadline).await?;
        Ok(self
            .exchange(connection, &outgoing, &mut body, to_head, deadline)
            .await?)
    }

    async fn exchange(
        &self,
        mut connection: Lent,
        outgoing: &Outgoing,
        body: &mut RequestBody,
        to_head: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Http1Body>, Http1Error> {
        if connection.buffer.capacity() < INITIAL_BUFFER {
            connection.buffer.reserve(INITIAL_BUFFER);
        }
        let mut watchdog = connection.watchdog.take().unwrap_or_else(|| Watchdog::new(deadline));
        let answered = watchdog
            .bound(
                deadline,
                std::pin::pin!(Self::talk(&mut connection, outgoing, body, to_head)),
            )
            .await;
        connection.watchdog = Some(watchdog);
        let (head, request_written) = answered?;
        let pool = (request_written && head.keep_alive).then(|| self.idle.clone());
        Ok(respond(connection, head, pool))
    }

    /// Writes the request and reads the answer's head; with it, whether the request was written whole
    /// (a connection whose request was cut short cannot carry another).
    async fn talk(
        connection: &mut Connection,
        outgoing: &Outgoing,
        body: &mut RequestBody,
        to_head: bool,
    ) -> Result<(response::Head, bool), Http1Error> {
        // Let the worker's other ready requests run first, so that the writes to the upstream leave
        // in a burst after them, as they did from hyper's connection tasks: an upstream on the same
        // cores then wakes once for several requests instead of preempting the sidecar at every write
        // (on the static benchmark 45-49k requests/s writing at once, 54-59k with this: docs/sidecar.md,
        // "The lean HTTP/1.1 path").
        tokio::task::yield_now().await;
        if let Err(error) = outgoing.write(&mut connection.stream, body).await {
            // An upstream may answer before it has read all of a large body (a 413) and close the
            // connection: its answer, if it arrived, is the one to relay.
            if !matches!(error, Http1Error::Write(_)) {
                return Err(error);
            }
            return match response::read_head(connection, to_head).await {
                Ok(head) => Ok((head, false)),
                Err(_) => Err(error),
            };
        }
        Ok((response::read_head(connection, to_head).await?, true))
    }
}

/// The response, its body reading `connection` (which goes back to `pool`, if any, at the body's end).
fn respond(connection: Lent, head: response::Head, pool: Option<Idle>) -> Response<Http1Body> {
    let mut response = Response::new(Http1Body::new(connection, head.framing, pool));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering every request with `pieces`, written one at a time with a pause between
    /// them (so the sidecar reads them separately); it closes the connection after each answer when
    /// `close` is set. Returns its address and how many connections it accepted.
    async fn upstream(pieces: &[&[u8]], close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|piece| piece.to_vec()).collect();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let pieces = pieces.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                        }
                        request.clear();
                        for piece in &pieces {
                            if socket.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    async fn get(pool: &Pool, address: &str) -> Result<Response<Http1Body>, ForwardError> {
        let parts = hyper::Request::get("/x")
            .header("host", "up")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        pool.send(
            address,
            &parts,
            RequestBody::Full(None),
            tokio::time::Instant::now() + Duration::from_secs(30),
        )
        .await
    }

    async fn text(response: Response<Http1Body>) -> Result<String, BoxError> {
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn idle(pool: &Pool) -> usize {
        pool.idle.0.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_returns_the_connection_and_one_dropped_early_closes_it() {
        let (address, accepted) = upstream(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"world"],
            false,
        )
        .await;
        let pool = Pool::default();
        for _ in 0..3 {
            assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "helloworld");
            assert_eq!(idle(&pool), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all three");

        let early = get(&pool, &address).await.unwrap();
        assert_eq!(idle(&pool), 0);
        drop(early);
        assert_eq!(idle(&pool), 0, "half a body left unread: never reused");
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "helloworld");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_chunked_body_arriving_in_pieces_is_relayed_whole_and_the_connection_kept() {
        let pieces: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"4\r\nab",
            b"cd\r",
            b"\n3;x=1\r\nefg\r\n0\r\n",
            b"Trailer-A: 1\r\n",
            b"\r\n",
        ];
        let (address, accepted) = upstream(&pieces, false).await;
        let pool = Pool::default();
        for _ in 0..2 {
            assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "abcdefg");
        }
        assert_eq!((idle(&pool), accepted.load(Ordering::SeqCst)), (1, 1));
    }

    #[tokio::test]
    async fn a_body_until_the_close_is_read_whole_and_the_connection_not_kept() {
        let (address, _) = upstream(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close"], true).await;
        let pool = Pool::default();
        assert_eq!(
            text(get(&pool, &address).await.unwrap()).await.unwrap(),
            "until the close"
        );
        assert_eq!(idle(&pool), 0);
    }

    #[tokio::test]
    async fn a_kept_connection_times_out_at_its_own_request_deadline_and_is_not_kept() {
        // Answers the first request on a connection, then reads the next and never answers it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = socket.read(&mut buffer).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
                });
            }
        });
        let pool = Pool::default();
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
        assert_eq!(idle(&pool), 1);
        let parts = hyper::Request::get("/x").body(()).unwrap().into_parts().0;
        let started = tokio::time::Instant::now();
        let wait = Duration::from_millis(300);
        let held = pool
            .send(&address, &parts, RequestBody::Full(None), started + wait)
            .await;
        assert!(matches!(held, Err(ForwardError::TimedOut)), "{:?}", held.err());
        assert!(started.elapsed() >= wait, "timed out early: {:?}", started.elapsed());
        assert_eq!(idle(&pool), 0, "a connection still owing an answer is not lent again");
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let (address, accepted) = upstream(&[answer], true).await;
        let pool = Pool::default();
        for _ in 0..2 {
            assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
            assert_eq!(idle(&pool), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced_and_the_request_sent_again() {
        // Closes after each answer without saying so: the pooled connection is stale when next used.
        let (address, accepted) = upstream(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], true).await;
        let pool = Pool::default();
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_wrote_to_is_not_lent() {
        // After each answer, what a server may send at its idle timeout (here: at once).
        let answer: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n",
        ];
        let (address, accepted) = upstream(&answer, false).await;
        let pool = Pool::default();
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut connection = pool.idle.0.lock().unwrap().pop().unwrap();
        connection.idle_since -= CHECK_IDLE_AFTER;
        pool.idle.0.lock().unwrap().push(connection);
        assert_eq!(text(get(&pool, &address).await.unwrap()).await.unwrap(), "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the 408 was not taken for the answer"
        );
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_whole_body_was_read_is_relayed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buffer).await;
            let answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!";
            socket.write_all(answer).await.unwrap();
            // Closing with the rest of the body unread resets the connection.
        });
        let parts = hyper::Request::post("/api/batch")
            .header("host", "up")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let body = RequestBody::Full(Some(vec![b'x'; 32 << 20].into()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let response = Pool::default().send(&address, &parts, body, deadline).await.unwrap();
        assert_eq!(response.status(), hyper::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(text(response).await.unwrap(), "big!");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_broken_head_a_clear_one() {
        let (address, _) = upstream(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"], true).await;
        let pool = Pool::default();
        let error = text(get(&pool, &address).await.unwrap()).await.unwrap_err();
        assert!(
            error.to_string().contains("before the response body was complete"),
            "{error}"
        );
        assert_eq!(idle(&pool), 0);

        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let (address, _) = upstream(&[huge.as_bytes()], true).await;
        let Err(ForwardError::Unreachable(detail)) = get(&pool, &address).await else {
            panic!("an oversized head is an error");
        };
        assert_eq!(detail, "the upstream's response head is larger than 64 KiB");
        let (address, _) = upstream(&[b"HTTP/1.1 200 OK\r\nContent-Le"], true).await;
        let Err(ForwardError::Unreachable(detail)) = get(&pool, &address).await else {
            panic!("a head cut short is an error");
        };
        assert_eq!(
            detail,
            "the upstream closed the connection in the middle of its response head"
        );
    }
}
