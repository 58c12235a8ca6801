//! Writing a request to the upstream: its head, with a write's (small) body, in one write; a read's body
//! streamed after it, as it arrives.
//!
//! A read's body keeps the client's framing: with its `Content-Length` (which the sidecar's server has
//! already held the client to) the bytes go through as they are; without one they are sent chunked. The
//! body's own deadline and size bound ([`RequestBody`]) end the request with an error, and the handler
//! answers from the [`StreamFault`](crate::sidecar::body::StreamFault) it recorded.

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::header;
use hyper::http::request::Parts;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Http1Error;
use crate::sidecar::body::RequestBody;

/// A body up to this size is copied behind the head so that both leave in one write.
const INLINE_BODY: usize = 64 * 1024;
/// A streamed chunk up to this size is copied between its size line and CRLF, for one write per chunk.
const INLINE_CHUNK: usize = 16 * 1024;

/// A request, encoded once so that a request a stale pooled connection did not take can be written
/// again on a new one.
pub struct Outgoing {
    /// The head, and the body too when it is small.
    message: Vec<u8>,
    rest: Rest,
}

/// What follows the message.
enum Rest {
    Nothing,
    /// A large write body.
    Bytes(Bytes),
    /// A read's body, taken from the [`RequestBody`] as it arrives; chunked when its length is not known.
    Stream {
        chunked: bool,
    },
}

impl Outgoing {
    pub fn new(parts: &Parts, body: &RequestBody) -> Outgoing {
        let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
        let size: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let inline = match body {
            RequestBody::Full(Some(bytes)) if bytes.len() <= INLINE_BODY => bytes.len(),
            _ => 0,
        };
        let mut message = Vec::with_capacity(size + target.len() + inline + 64);
        for piece in [parts.method.as_str(), " ", target, " HTTP/1.1\r\n"] {
            message.extend_from_slice(piece.as_bytes());
        }
        for (name, value) in &parts.headers {
            message.extend_from_slice(name.as_str().as_bytes());
            message.extend_from_slice(b": ");
            message.extend_from_slice(value.as_bytes());
            message.extend_from_slice(b"\r\n");
        }
        let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
        let rest = match body {
            RequestBody::Full(None) => Rest::Nothing,
            RequestBody::Full(Some(bytes)) => {
                if !has_length {
                    message.extend_from_slice(format!("content-length: {}\r\n", bytes.len()).as_bytes());
                }
                if bytes.len() > INLINE_BODY {
                    Rest::Bytes(bytes.clone())
                } else {
                    Rest::Nothing
                }
            }
            RequestBody::Streaming { .. } => {
                if !has_length {
                    message.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                Rest::Stream { chunked: !has_length }
            }
        };
        message.extend_from_slice(b"\r\n");
        if let RequestBody::Full(Some(bytes)) = body
            && bytes.len() <= INLINE_BODY
        {
            message.extend_from_slice(bytes);
        }
        Outgoing { message, rest }
    }

    /// Whether the request can be written again: a streamed body is consumed as it is sent.
    pub fn replayable(&self) -> bool {
        !matches!(self.rest, Rest::Stream { .. })
    }

    /// Writes the request. [`Http1Error::Unsent`] says the upstream got none of it.
    pub async fn write(&self, stream: &mut TcpStream, body: &mut RequestBody) -> Result<(), Http1Error> {
        write_first(stream, &self.message).await?;
        match &self.rest {
            Rest::Nothing => Ok(()),
            Rest::Bytes(bytes) => stream.write_all(bytes).await.map_err(Http1Error::Write),
            Rest::Stream { chunked } => stream_body(stream, body, *chunked).await,
        }
    }
}

/// Writes the start of a request, telling apart a failure before any of it was taken.
async fn write_first(stream: &mut TcpStream, mut bytes: &[u8]) -> Result<(), Http1Error> {
    let mut sent = false;
    while !bytes.is_empty() {
        match stream.write(bytes).await {
            Ok(0) => return Err(Http1Error::Write(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if !sent => return Err(Http1Error::Unsent(e)),
            Err(e) => return Err(Http1Error::Write(e)),
        }
        sent = true;
    }
    Ok(())
}

/// Sends a read's body as its frames arrive (trailers are not forwarded).
async fn stream_body(stream: &mut TcpStream, body: &mut RequestBody, chunked: bool) -> Result<(), Http1Error> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Http1Error::RequestBody)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            stream.write_all(&data).await.map_err(Http1Error::Write)?;
            continue;
        }
        let size = format!("{:x}\r\n", data.len());
        if data.len() <= INLINE_CHUNK {
            let chunk = [size.as_bytes(), &data, b"\r\n"].concat();
            stream.write_all(&chunk).await.map_err(Http1Error::Write)?;
        } else {
            for piece in [size.as_bytes(), &data, b"\r\n"] {
                stream.write_all(piece).await.map_err(Http1Error::Write)?;
            }
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(Http1Error::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = hyper::Request::post("/api/batch?x=1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_small_body_is_written_with_the_head() {
        let outgoing = Outgoing::new(
            &parts(&[("host", "up"), ("content-length", "2")]),
            &RequestBody::Full(Some(Bytes::from_static(b"{}"))),
        );
        assert_eq!(
            String::from_utf8(outgoing.message.clone()).unwrap(),
            "POST /api/batch?x=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert!(matches!(outgoing.rest, Rest::Nothing) && outgoing.replayable());
    }

    #[test]
    fn a_body_without_a_length_gets_one_and_a_large_one_follows_the_head() {
        let large = Bytes::from(vec![b'x'; INLINE_BODY + 1]);
        let outgoing = Outgoing::new(&parts(&[("host", "up")]), &RequestBody::Full(Some(large)));
        assert_eq!(
            String::from_utf8(outgoing.message.clone()).unwrap(),
            format!(
                "POST /api/batch?x=1 HTTP/1.1\r\nhost: up\r\ncontent-length: {}\r\n\r\n",
                INLINE_BODY + 1
            )
        );
        assert!(matches!(&outgoing.rest, Rest::Bytes(b) if b.len() == INLINE_BODY + 1));
        let empty = Outgoing::new(&parts(&[("host", "up")]), &RequestBody::Full(None));
        assert!(empty.message.ends_with(b"host: up\r\n\r\n"));
    }
}
