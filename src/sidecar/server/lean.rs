//! The usual request served without hyper: the sidecar's own cost per request is mostly hyper's
//! machinery around a request that needs none of it (a small HTTP/1.1 request whose body, if any, came
//! with its head), so that request takes a short path here:
//!
//! 1. wait for a head (under the header timeout, giving way to an eviction or a shutdown) and parse it
//!    with httparse into a request whose header values share the bytes read;
//! 2. hand it to the handler, exactly as hyper would;
//! 3. write the answer: its head and, when it is ready, its body in one write; a body that is still
//!    arriving follows as it arrives (chunked when its length is not known).
//!
//! Every connection starts here. The first request that is not plain - not HTTP/1.1, `HEAD`, with
//! `Transfer-Encoding`, `Expect` or `Upgrade`, a `Content-Length` that is repeated or not a number, a
//! body still arriving, or a head httparse or `http` refuse - hands the connection over, with every byte
//! read so far, to hyper, which serves the rest of it with the answers `mod.rs` documents. One set of
//! rules for the unusual, so this path never decides anything hyper would decide differently.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{ConnectionLimits, MAX_REQUEST_HEAD_BYTES, answer, json_answer};
use crate::sidecar::body::{ClientBody, ResponseBody};
use crate::sidecar::connections::Registration;
use crate::sidecar::handler::{ConnectionState, Handler};
use crate::sidecar::headers::whole_seconds;

/// Header fields in a request head at most (hyper's own bound; beyond it hyper answers 431).
const MAX_HEADERS: usize = 100;
/// The read buffer a connection starts with, and how much it grows by when it runs out of room.
const READ_SIZE: usize = 8 * 1024;
/// Room below which the read buffer grows before a read. Growing only then keeps a connection that sent part
/// of a request at one [`READ_SIZE`] buffer: a flood of them is held to the memory the connection caps allow.
const MIN_READ_ROOM: usize = 1024;
/// The write buffer a connection keeps between answers (an answer's head and small body fit).
const KEPT_WRITE_BUFFER: usize = 4 * 1024;
/// A body frame up to this size is copied into the write buffer (one write with what precedes it).
const INLINE_FRAME: usize = 16 * 1024;

/// Where each field of a head is (`[name start, name length, value start, value length]`): inline for the
/// usual few fields, and not zeroed first (an array for all `MAX_HEADERS` would be 1.6 KiB set per request).
type Spans = SmallVec<[[u32; 4]; 16]>;

/// How the connection left this path.
pub(super) enum Outcome {
    /// It is done: closed by the client, timed out, evicted, shut down, or answered with a close.
    Closed,
    /// hyper serves the rest of it, starting with these bytes (the start of a request this path does not
    /// serve).
    HandOver(BytesMut),
}

/// What ends a wait for a request head early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    /// Closed to make room for a new connection.
    Evicted,
}

/// A request read off the connection, or why none was.
// Made once per request and taken apart at once: boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not a request this path serves: hyper takes it from here.
    Unusual,
    Request {
        request: Request<ClientBody>,
        /// The client asked for the connection to be closed after this request.
        close: bool,
    },
}

pub(super) async fn serve(
    stream: &mut TcpStream,
    registration: &Registration,
    handler: &Handler,
    limits: ConnectionLimits,
    shutdown: &CancellationToken,
    state: &ConnectionState,
) -> Outcome {
    let mut buffer = BytesMut::with_capacity(READ_SIZE);
    // Allocated by the first answer: a connection that never completes a request does not hold one.
    let mut out = Vec::new();
    // One timer for the connection, and one future for what ends a wait early, made once: their wakers
    // stay registered across requests instead of being registered and removed for every request. The
    // timer is not moved at every request either: it keeps the deadline of an earlier wait, and when it
    // fires before the current wait's deadline it is moved there (once per header timeout at most).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_set = false;
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => Stop::Shutdown,
            () = async {
                loop {
                    registration.evicted().await;
                    if registration.is_evicted() {
                        return;
                    }
                }
            } => Stop::Evicted,
        }
    };
    tokio::pin!(stop);
    loop {
        // 1. A request head.
        let mut deadline = None;
        let (request, close) = loop {
            match parse(&mut buffer) {
                Parsed::Request { request, close } => break (request, close),
                Parsed::Unusual => return Outcome::HandOver(buffer),
                Parsed::Partial if buffer.len() >= MAX_REQUEST_HEAD_BYTES => return Outcome::HandOver(buffer),
                Parsed::Partial => {}
            }
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.header_read_timeout);
            if !timer_set {
                timer.as_mut().reset(deadline);
                timer_set = true;
            }
            if buffer.capacity() - buffer.len() < MIN_READ_ROOM {
                buffer.reserve(READ_SIZE);
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buffer) => match read {
                    Ok(n) if n > 0 => {}
                    _ => return Outcome::Closed,
                },
                () = &mut timer => {
                    if tokio::time::Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    if !buffer.is_empty() {
                        let message = format!(
                            "the request headers did not arrive within {} s",
                            whole_seconds(limits.header_read_timeout)
                        );
                        let _ = answer(stream, StatusCode::REQUEST_TIMEOUT, &message, registration).await;
                    }
                    return Outcome::Closed;
                }
                stop = &mut stop => {
                    if stop == Stop::Evicted && !buffer.is_empty() {
                        // Written without waiting and not lingering: under a flood that would keep
                        // connections open.
                        let _ = stream.try_write(&json_answer(
                            StatusCode::SERVICE_UNAVAILABLE,
                            super::EVICTED_MESSAGE,
                            &[("retry-after", "1")],
                        ));
                    }
                    return Outcome::Closed;
                }
            }
        };

        // 2. The handler.
        registration.serving();
        let response = handler.handle(request, state).await;

        // 3. The answer.
        let close = close || shutdown.is_cancelled();
        let kept = write_response(stream, response, &mut out, close).await;
        registration.ending();
        registration.flushed();
        if !matches!(kept, Ok(true)) {
            return Outcome::Closed;
        }
        // What a large request or answer grew is given back: an idle connection keeps small buffers, so
        // that many of them stay within the memory the connection caps allow for.
        if buffer.is_empty() && buffer.capacity() > 2 * READ_SIZE {
            buffer = BytesMut::with_capacity(READ_SIZE);
        }
        if out.capacity() > KEPT_WRITE_BUFFER {
            out = Vec::with_capacity(KEPT_WRITE_BUFFER);
        }
    }
}

/// Takes a plain request off the front of `buffer`, or says why it cannot.
fn parse(buffer: &mut BytesMut) -> Parsed {
    // Left uninitialised: httparse writes only the fields there are (a head has a handful, not 100).
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, &mut fields) {
        // Over the bound even if it arrived whole in one read: hyper answers 431, as for any other.
        Ok(httparse::Status::Complete(length)) if length > MAX_REQUEST_HEAD_BYTES => return Parsed::Unusual,
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unusual,
    };
    if parsed.version != Some(1) {
        return Parsed::Unusual;
    }
    let Some(method) = parsed.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return Parsed::Unusual;
    };
    if method == Method::HEAD {
        return Parsed::Unusual;
    }
    let mut content_length: Option<usize> = None;
    let mut close = false;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length, parse_length(field.value)) {
                (None, Some(length)) => content_length = Some(length),
                _ => return Parsed::Unusual,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= field
                .value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if [&b"transfer-encoding"[..], b"expect", b"upgrade"]
            .iter()
            .any(|unusual| name.eq_ignore_ascii_case(unusual))
        {
            return Parsed::Unusual;
        }
    }
    let body_length = content_length.unwrap_or(0);
    if buffer.len() - length < body_length {
        return Parsed::Unusual;
    }
    // Where the target and each field are in the head, so that the head can be split off the buffer and
    // shared by the values instead of copied into each.
    // (The head is at most MAX_REQUEST_HEAD_BYTES long here, so its offsets fit in a u32.)
    let offset = |part: &[u8]| (part.as_ptr() as usize - buffer.as_ptr() as usize) as u32;
    let target = parsed.path.map(|path| (offset(path.as_bytes()), path.len() as u32));
    let spans: Spans = parsed
        .headers
        .iter()
        .map(|field| {
            let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
            [name, field.name.len() as u32, value, field.value.len() as u32]
        })
        .collect();
    let Some((target_start, target_length)) = target else {
        return Parsed::Unusual;
    };
    let head = buffer.split_to(length).freeze();
    let Some(mut request) = build(&head, method, (target_start, target_length), &spans) else {
        // Not taken after all: the head goes back in front of the rest, for hyper to read.
        let mut whole = BytesMut::with_capacity(head.len() + buffer.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buffer);
        *buffer = whole;
        return Parsed::Unusual;
    };
    if body_length > 0 {
        *request.body_mut() = ClientBody::Buffered(Some(buffer.split_to(body_length).freeze()));
    }
    Parsed::Request { request, close }
}

/// The request, or `None` when `http` refuses its target or a field's name or value.
fn build(
    head: &Bytes,
    method: Method,
    (target_start, target_length): (u32, u32),
    spans: &[[u32; 4]],
) -> Option<Request<ClientBody>> {
    let range = |start: u32, length: u32| start as usize..(start + length) as usize;
    let uri = Uri::from_maybe_shared(head.slice(range(target_start, target_length))).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &[name_start, name_length, value_start, value_length] in spans {
        let name = HeaderName::from_bytes(&head[range(name_start, name_length)]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(range(value_start, value_length))).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Buffered(None));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// A `Content-Length` value: digits only, as hyper requires.
fn parse_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    Chunked,
}

/// Writes the answer. Ok(true) when the connection may carry another request.
async fn write_response(
    stream: &mut TcpStream,
    response: Response<ResponseBody>,
    out: &mut Vec<u8>,
    mut close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    out.clear();
    out.reserve(KEPT_WRITE_BUFFER);
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared = None;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
            close |= has_close(value);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            declared = declared.or_else(|| value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        DATE.with(|date| {
            let mut date = date.borrow_mut();
            date.refresh();
            push_field(out, b"date", &date.value);
        });
    }
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(length) = declared {
        Framing::Length(length)
    } else if let Some(length) = body.size_hint().exact() {
        push_field(out, b"content-length", itoa::Buffer::new().format(length).as_bytes());
        Framing::Length(length)
    } else {
        push_field(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if close {
        push_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    if framing != Framing::None {
        while !body.is_end_stream() {
            let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // What was sent cannot be taken back: the client sees the answer cut short.
                    tracing::debug!(error = %e, "the response body broke off");
                    stream.write_all(out).await?;
                    return Ok(false);
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if matches!(framing, Framing::Length(length) if sent > length) {
                tracing::debug!("the response body is longer than its Content-Length");
                stream.write_all(out).await?;
                return Ok(false);
            }
            push_data(stream, out, framing, data).await?;
            // A body still arriving goes out as it arrives, not with its next frame.
            if !body.is_end_stream() && !out.is_empty() {
                stream.write_all(out).await?;
                out.clear();
            }
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    // Releases the request's slot and the upstream connection before the last write.
    drop(body);
    if matches!(framing, Framing::Length(length) if sent < length) {
        close = true;
    }
    stream.write_all(out).await?;
    Ok(!close)
}

/// Adds a body frame after what `out` holds, writing both out first when the frame is large.
async fn push_data(stream: &mut TcpStream, out: &mut Vec<u8>, framing: Framing, data: Bytes) -> io::Result<()> {
    if framing == Framing::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    if data.len() <= INLINE_FRAME {
        out.extend_from_slice(&data);
    } else {
        stream.write_all(out).await?;
        out.clear();
        stream.write_all(&data).await?;
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn has_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

thread_local! {
    /// This thread's `Date` value, formatted once a second.
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: u64::MAX, value: Vec::new() }) };
}

struct CachedDate {
    second: u64,
    value: Vec<u8>,
}

impl CachedDate {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.value = httpdate::fmt_http_date(now).into_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buffer = BytesMut::from(bytes);
        (parse(&mut buffer), buffer)
    }

    #[test]
    fn a_plain_request_is_taken_with_its_body_and_the_next_one_is_left() {
        let (request, rest) = parsed(
            b"POST /api/batch?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nX-Two: 1\r\nx-two: 2\r\n\r\nbodyGET / HTTP/1.1\r\n",
        );
        let Parsed::Request { request, close } = request else {
            panic!("a plain request")
        };
        assert!(!close);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path_and_query().unwrap().as_str(), "/api/batch?x=1");
        assert_eq!(request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(request.headers()["host"], "a");
        let ClientBody::Buffered(Some(body)) = request.into_body() else {
            panic!("a buffered body")
        };
        assert_eq!(&body[..], b"body");
        assert_eq!(
            &rest[..],
            b"GET / HTTP/1.1\r\n",
            "the next request stays for the next turn"
        );
    }

    #[test]
    fn a_partial_head_waits_and_connection_close_is_noticed() {
        assert!(matches!(parsed(b"GET / HTTP/1.1\r\nHost: a\r\n").0, Parsed::Partial));
        let (request, _) = parsed(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(matches!(request, Parsed::Request { close: true, .. }));
    }

    #[test]
    fn unusual_requests_are_left_whole_for_hyper() {
        for bytes in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nnot yet",
            b"NOT HTTP\r\n\r\n",
            // A target refused (by httparse or `http`): nothing is taken, the next request stays behind it.
            b"GET /a\x7fb HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            let (outcome, rest) = parsed(bytes);
            assert!(
                matches!(outcome, Parsed::Unusual),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "nothing consumed");
        }
        let large = format!(
            "GET / HTTP/1.1\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD_BYTES)
        );
        let (outcome, rest) = parsed(large.as_bytes());
        assert!(
            matches!(outcome, Parsed::Unusual),
            "a head over the bound, even whole, is hyper's (431)"
        );
        assert_eq!(rest.len(), large.len());
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"4 2"), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }
}
