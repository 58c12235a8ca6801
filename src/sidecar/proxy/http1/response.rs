//! Reading the upstream's response head with `httparse`, and deciding from it how the body is delimited
//! and whether the connection can carry another request (RFC 9112 §6.3, §9.3).

use bytes::{Buf, Bytes};
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;

use super::body::Framing;
use super::chunked::Chunked;
use super::{Connection, Http1Error};

/// The largest response head read; a larger one is an error, not a bigger buffer.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
pub const MAX_HEADERS: usize = 100;
/// Bytes asked for per read while the head arrives.
const READ_SIZE: usize = 8 * 1024;

/// A final (non-1xx) response head.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once the body has been read to its end.
    pub keep_alive: bool,
}

/// Reads until a final response head has arrived (skipping 1xx interim responses); what follows it in
/// the buffer is the start of the body. `to_head` says the request was `HEAD`: its answer has no body.
pub async fn read_head(connection: &mut Connection, to_head: bool) -> Result<Head, Http1Error> {
    let mut received = !connection.buffer.is_empty();
    loop {
        if let Some(head) = parse_head(connection, to_head)? {
            return Ok(head);
        }
        if connection.buffer.len() >= MAX_HEAD {
            return Err(Http1Error::HeadTooLarge);
        }
        connection.buffer.reserve(READ_SIZE);
        match connection.stream.read_buf(&mut connection.buffer).await {
            Ok(0) if received => return Err(Http1Error::ClosedInHead),
            Ok(0) => return Err(Http1Error::ClosedBeforeAnswer),
            Ok(_) => received = true,
            Err(e) if !received && is_reset(&e) => return Err(Http1Error::ClosedBeforeAnswer),
            Err(e) => return Err(Http1Error::Read(e)),
        }
    }
}

/// A reset where a response was expected says the same as a close: the upstream dropped the connection.
fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
    )
}

/// The final head if it is complete in the buffer, taking it (and any interim responses) out of it.
fn parse_head(connection: &mut Connection, to_head: bool) -> Result<Option<Head>, Http1Error> {
    // Filled by `Parsed::from`, kept here rather than in what it returns (no copy per answer).
    let mut spans = Spans::new();
    loop {
        // Nothing read yet (the first look, before the answer arrives): nothing to parse.
        if connection.buffer.is_empty() {
            return Ok(None);
        }
        let Some(parsed) = Parsed::from(&connection.buffer, &mut spans)? else {
            return Ok(None);
        };
        match parsed.code {
            101 => return Err(Http1Error::Upgrade),
            100..=199 => connection.buffer.advance(parsed.length),
            _ => {
                let head = connection.buffer.split_to(parsed.length).freeze();
                return build(&head, &parsed, &spans, to_head).map(Some);
            }
        }
    }
}

/// Where each field is (`[name start, name end, value start, value end]`): inline for the usual few
/// fields, and not zeroed first (an array for all `MAX_HEADERS` would be 1.6 KiB set per answer).
type Spans = SmallVec<[[u32; 4]; 16]>;

/// A complete head, parsed once; its fields' names and values are in the [`Spans`] filled with it, as
/// offsets into its bytes, so that the head can then be split off the buffer and its values share it
/// rather than be copied.
struct Parsed {
    length: usize,
    code: u16,
    http_10: bool,
}

impl Parsed {
    /// The head at the start of `bytes`, or `None` while it is partial.
    fn from(bytes: &[u8], spans: &mut Spans) -> Result<Option<Parsed>, Http1Error> {
        // Left uninitialised: httparse writes only the fields there are.
        let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            bytes,
            &mut fields,
        ) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => return Err(Http1Error::HeadTooLarge),
            Ok(httparse::Status::Complete(length)) => length,
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::TooManyHeaders),
            Err(e) => return Err(Http1Error::MalformedHead(e)),
        };
        // Every name and value is a slice of `bytes` (which is at most MAX_HEAD long here).
        let offset = |part: &[u8]| (part.as_ptr() as usize - bytes.as_ptr() as usize) as u32;
        spans.clear();
        spans.extend(response.headers.iter().map(|field| {
            let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
            [
                name,
                name + field.name.len() as u32,
                value,
                value + field.value.len() as u32,
            ]
        }));
        Ok(Some(Parsed {
            length,
            code: response.code.unwrap_or_default(),
            http_10: response.version == Some(0),
        }))
    }
}

/// The head's status and headers, and its framing.
///
/// `Connection` and `Keep-Alive` describe this connection, not the message, and most upstreams send them
/// on every answer (`Connection: keep-alive`): they are read here and left out of the headers, so that
/// the proxy's own hop-by-hop pass finds nothing to do. A `Connection` that names other headers stays,
/// for that pass to remove them too.
fn build(head: &Bytes, parsed: &Parsed, spans: &[[u32; 4]], to_head: bool) -> Result<Head, Http1Error> {
    let status = StatusCode::from_u16(parsed.code).map_err(|_| Http1Error::BadStatus)?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut close = false;
    let mut delimiters = Delimiters::default();
    for [name_start, name_end, value_start, value_end] in spans {
        let name = &head[*name_start as usize..*name_end as usize];
        let value = &head[*value_start as usize..*value_end as usize];
        delimiters.note(name, value);
        if name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            let mut only_persistence = true;
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                only_persistence &= token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"keep-alive");
            }
            if only_persistence {
                continue;
            }
        }
        let name = HeaderName::from_bytes(name).map_err(|_| Http1Error::BadHeader)?;
        let value = HeaderValue::from_maybe_shared(head.slice(*value_start as usize..*value_end as usize))
            .map_err(|_| Http1Error::BadHeader)?;
        headers.append(name, value);
    }
    let (framing, delimited) = delimiters.framing(status, &mut headers, to_head)?;
    let keep_alive = delimited && !parsed.http_10 && !close;
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// What a head's fields say about how its body is delimited, noted as the fields are read (so that
/// deciding takes no look-ups in the header map afterwards).
#[derive(Default)]
struct Delimiters<'a> {
    /// The last `Transfer-Encoding` value, if there is one.
    transfer_encoding: Option<&'a [u8]>,
    /// The `Content-Length`: `None` when absent; an error, kept until it matters (a `Transfer-Encoding`
    /// overrides it), when a value is not a number or two values differ.
    content_length: Option<Result<u64, Http1Error>>,
}

impl<'a> Delimiters<'a> {
    fn note(&mut self, name: &[u8], value: &'a [u8]) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let seen = self.content_length.take();
            self.content_length = Some(match seen {
                Some(Err(e)) => Err(e),
                seen => content_length(value, seen.and_then(Result::ok)),
            });
        }
    }

    /// How the body ends, and whether that end leaves the connection usable (RFC 9112 §6.3: a body read
    /// until the close does not, nor one sent with both framings, which is a message to distrust).
    fn framing(
        self,
        status: StatusCode,
        headers: &mut HeaderMap,
        to_head: bool,
    ) -> Result<(Framing, bool), Http1Error> {
        if to_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Length(0), true));
        }
        if let Some(last) = self.transfer_encoding {
            let both = self.content_length.is_some();
            if both {
                headers.remove(header::CONTENT_LENGTH);
            }
            // As `HeaderValue::to_str` reads it: a value with other than visible ASCII names no coding.
            let visible = last.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b));
            let chunked = visible
                && last
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                (Framing::Chunked(Chunked::default()), !both)
            } else {
                (Framing::UntilClose, false)
            });
        }
        match self.content_length.transpose()? {
            Some(length) => Ok((Framing::Length(length), true)),
            None => Ok((Framing::UntilClose, false)),
        }
    }
}

/// A `Content-Length` value (a number, or a list of the same number) with the one seen before, if any:
/// every value and every item of a list must be the same number.
fn content_length(value: &[u8], seen: Option<u64>) -> Result<u64, Http1Error> {
    let mut length = seen;
    for item in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(Http1Error::BadLength);
        }
        let parsed: u64 = std::str::from_utf8(item)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or(Http1Error::BadLength)?;
        if length.is_some_and(|earlier| earlier != parsed) {
            return Err(Http1Error::BadLength);
        }
        length = Some(parsed);
    }
    length.ok_or(Http1Error::BadLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_to(text: &[u8], to_head: bool) -> Result<Head, Http1Error> {
        let mut spans = Spans::new();
        let parsed = Parsed::from(text, &mut spans)?.expect("a complete head");
        build(&Bytes::copy_from_slice(text), &parsed, &spans, to_head)
    }

    fn head(text: &str) -> Result<Head, Http1Error> {
        head_to(text.as_bytes(), false)
    }

    fn length_and_code(bytes: &[u8]) -> Result<Option<(usize, u16)>, Http1Error> {
        let mut spans = Spans::new();
        Ok(Parsed::from(bytes, &mut spans)?.map(|parsed| (parsed.length, parsed.code)))
    }

    #[test]
    fn the_head_gives_status_headers_and_length() {
        let head = head("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(matches!(head.framing, Framing::Length(2)));
        assert!(head.keep_alive);
    }

    #[test]
    fn persistence_headers_are_read_and_left_out_and_a_connection_naming_others_stays() {
        let plain = head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nServer: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(plain.keep_alive);
        let names: Vec<_> = plain.headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["server", "content-length"]);
        let naming =
            head("HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: 1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!naming.keep_alive, "close is still read");
        assert_eq!(
            naming.headers["connection"], "close, x-hop",
            "for the hop-by-hop pass to remove x-hop"
        );
    }

    #[test]
    fn what_the_connection_may_do_next_follows_the_head() {
        let close = head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!close.keep_alive, "Connection: close");
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!old.keep_alive, "HTTP/1.0");
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert!(matches!(until_close.framing, Framing::UntilClose) && !until_close.keep_alive);
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert!(matches!(chunked.framing, Framing::Chunked(_)) && chunked.keep_alive);
        let both = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert!(matches!(both.framing, Framing::Chunked(_)) && !both.keep_alive);
        assert!(
            !both.headers.contains_key(header::CONTENT_LENGTH),
            "not relayed as the length"
        );
        let no_content = head("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n").unwrap();
        assert!(matches!(no_content.framing, Framing::Length(0)) && no_content.keep_alive);
        let answer_to_head = head_to(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true).unwrap();
        assert!(matches!(answer_to_head.framing, Framing::Length(0)));
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").unwrap().framing,
            Framing::Length(5)
        ));
        for bad in ["5, 6", "-1", "+5", "", "5 5", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(matches!(head(&text), Err(Http1Error::BadLength)), "{bad:?}");
        }
        let differing = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\ncontent-length: 6\r\n\r\n");
        assert!(
            matches!(differing, Err(Http1Error::BadLength)),
            "two fields, two lengths"
        );
        // A length that does not decide the framing is not an error: a Transfer-Encoding overrides it, and
        // a 204 has no body whatever it says.
        let overridden = head("HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(overridden.framing, Framing::Chunked(_)) && !overridden.keep_alive);
        assert!(!overridden.headers.contains_key(header::CONTENT_LENGTH));
        let no_content = head("HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n").unwrap();
        assert!(matches!(no_content.framing, Framing::Length(0)));
        // The last coding decides, and only a value `to_str` reads names one.
        let not_last = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
        assert!(matches!(not_last.framing, Framing::UntilClose) && !not_last.keep_alive);
        let opaque = head_to(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xe9, chunked\r\n\r\n", false).unwrap();
        assert!(matches!(opaque.framing, Framing::UntilClose));
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_refused() {
        assert!(matches!(length_and_code(b"HTTP/1.1 200 OK\r\nA: b"), Ok(None)));
        assert!(matches!(
            length_and_code(b"HTTP/1.1 100 Continue\r\n\r\n"),
            Ok(Some((25, 100)))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            length_and_code(text.as_bytes()),
            Err(Http1Error::TooManyHeaders)
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            length_and_code(huge.as_bytes()),
            Err(Http1Error::HeadTooLarge)
        ));
        assert!(matches!(
            length_and_code(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(Http1Error::MalformedHead(_))
        ));
    }
}
