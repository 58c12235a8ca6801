//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded from the connection's buffer
//! as bytes arrive, however the reads split it.
//!
//! Chunk extensions are ignored and trailer fields discarded: the sidecar relays the body to its client
//! re-chunked by its own server, and trailers are not forwarded (`Trailer` is hop-by-hop here).

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size line (with its extensions) longer than this is refused rather than buffered.
const MAX_LINE: usize = 4 * 1024;
/// The most trailer-section bytes read (and discarded) before the body counts as malformed.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size line is not a hexadecimal size")]
    BadSize,
    #[error("a chunk size line is longer than {MAX_LINE} bytes")]
    LongLine,
    #[error("a chunk's data is not followed by CRLF")]
    MissingCrlf,
    #[error("the trailer section is larger than {MAX_TRAILERS} bytes")]
    LongTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (this many trailer bytes so far).
    Trailers(usize),
    Done,
}

/// Where a chunked body is.
#[derive(Debug)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size }
    }
}

impl Chunked {
    /// Takes the next piece of chunk data out of `buffer`, if there is any yet, consuming the framing
    /// around it. Framing after the data is consumed too as far as `buffer` reaches, so that the end of
    /// the body is seen with its last data when they arrive together.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        self.skip_framing(buffer)?;
        let State::Data(left) = self.state else {
            return Ok(None);
        };
        if buffer.is_empty() {
            return Ok(None);
        }
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
        let data = buffer.split_to(take).freeze();
        let left = left - take as u64;
        self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
        self.skip_framing(buffer)?;
        Ok(Some(data))
    }

    /// Whether the terminating chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes size lines, data CRLFs and trailers until data is next, the body ends, or more bytes are
    /// needed.
    fn skip_framing(&mut self, buffer: &mut BytesMut) -> Result<(), ChunkError> {
        loop {
            match self.state {
                State::Data(_) | State::Done => return Ok(()),
                State::Size => {
                    let Some(line) = take_line(buffer, MAX_LINE, ChunkError::LongLine)? else {
                        return Ok(());
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::DataEnd => {
                    if buffer.len() < 2 {
                        return Ok(());
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    buffer.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let room = MAX_TRAILERS.saturating_sub(seen);
                    let Some(line) = take_line(buffer, room, ChunkError::LongTrailers)? else {
                        return Ok(());
                    };
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(ChunkError::LongTrailers);
                    }
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailers(seen)
                    };
                }
            }
        }
    }
}

/// The next CRLF-terminated line (without its CRLF), or `None` until it has fully arrived. A line that
/// cannot end within `max` bytes is `too_long`.
fn take_line(buffer: &mut BytesMut, max: usize, too_long: ChunkError) -> Result<Option<Bytes>, ChunkError> {
    match buffer.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) if end > max => Err(too_long),
        Some(end) => {
            let line = buffer.split_to(end).freeze();
            buffer.advance(2);
            Ok(Some(line))
        }
        None if buffer.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// `1a;name=value` -> 26: hex digits, then optional whitespace and extensions, which are ignored.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .is_none_or(|at| rest[at] == b';');
    if digits == 0 || digits > 16 || !rest_ok {
        return Err(ChunkError::BadSize);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ChunkError::BadSize)?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError::BadSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder in pieces of `step` bytes; returns the data and whether the body ended.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        let mut chunked = Chunked::default();
        let mut buffer = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step) {
            buffer.extend_from_slice(piece);
            while let Some(bytes) = chunked.decode(&mut buffer)? {
                data.extend_from_slice(&bytes);
            }
        }
        Ok((data, chunked.is_done(), buffer.len()))
    }

    const BODY: &[u8] = b"5;ext=\"x\"\r\nhello\r\n1 \r\n \r\n10\r\n0123456789abcdef\r\n0\r\nx-checksum: 1\r\n\r\n";

    #[test]
    fn a_body_decodes_the_same_however_the_reads_split_it() {
        for step in 1..=BODY.len() {
            let (data, done, left) = decode_in_steps(BODY, step).unwrap();
            assert_eq!(data, b"hello 0123456789abcdef", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(left, 0, "trailers consumed, step {step}");
        }
    }

    #[test]
    fn the_end_is_seen_with_the_last_data_when_they_arrive_together() {
        let mut chunked = Chunked::default();
        let mut buffer = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(chunked.decode(&mut buffer).unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(chunked.is_done());
        assert_eq!(
            &buffer[..],
            b"NEXT",
            "bytes after the body are left for the caller to judge"
        );
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (data, done, _) = decode_in_steps(b"5\r\nhel", 2).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hel"[..], false));
        let (_, done, _) = decode_in_steps(b"0\r\nx: 1\r\n", 3).unwrap();
        assert!(!done, "the trailer section has not ended");
    }

    #[test]
    fn malformed_framing_is_an_error_not_data() {
        assert_eq!(decode_in_steps(b"zz\r\n", 4), Err(ChunkError::BadSize));
        assert_eq!(decode_in_steps(b"\r\n", 4), Err(ChunkError::BadSize));
        assert_eq!(decode_in_steps(b"5x\r\nhello\r\n", 4), Err(ChunkError::BadSize));
        assert_eq!(
            decode_in_steps(b"11111111111111111\r\n", 32),
            Err(ChunkError::BadSize),
            "more than 64 bits"
        );
        assert_eq!(decode_in_steps(b"3\r\nabcX\r\n", 16), Err(ChunkError::MissingCrlf));
        let long = [b"1;".as_slice(), &[b'a'; MAX_LINE]].concat();
        assert_eq!(decode_in_steps(&long, 512), Err(ChunkError::LongLine));
        let trailers = [b"0\r\n".as_slice(), &b"x: y\r\n".repeat(MAX_TRAILERS / 6 + 1)].concat();
        assert_eq!(decode_in_steps(&trailers, 1000), Err(ChunkError::LongTrailers));
    }
}
