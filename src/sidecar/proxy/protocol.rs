//! Which HTTP version the sidecar speaks to its upstream.
//!
//! HTTP/2 without TLS ("h2c", prior knowledge, RFC 9113 §3.3) carries every request of a worker over two
//! connections: many requests go out in one write and their answers come back in one read, on both sides,
//! where HTTP/1.1 needs a connection, a write and a read per request in flight. On loopback that halves the
//! system calls and wake-ups of a forwarded request, which is most of what forwarding costs. `orgkeeper
//! facts` speaks h2c; an upstream that does not gets HTTP/1.1. `Auto` finds out by sending the HTTP/2
//! connection preface on a throw-away connection: an HTTP/2 server answers with a SETTINGS frame, an
//! HTTP/1.1 server with an error response or by closing.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ForwardError, connect};

/// The protocol setting: `auto` (the default), `http1` or `http2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/2 if the upstream speaks h2c, else HTTP/1.1; found out at the first connection and again
    /// after the upstream could not be reached.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 (h2c); checked once like `Auto`, and an upstream that does not speak it gets a 502 saying so.
    Http2,
}

impl FromStr for UpstreamProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" => Ok(UpstreamProtocol::Http1),
            "http2" => Ok(UpstreamProtocol::Http2),
            other => Err(format!("{other:?} is not one of auto, http1, http2")),
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        })
    }
}

/// The protocol requests go out with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

const UNDECIDED: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// The setting and, for `Auto`, what the upstream was found to speak (shared by all workers).
pub struct Choice {
    setting: UpstreamProtocol,
    found: AtomicU8,
    /// One probe at a time: requests arriving meanwhile wait for its answer instead of probing too.
    probing: tokio::sync::Mutex<()>,
}

impl Choice {
    pub fn new(setting: UpstreamProtocol) -> Choice {
        Choice {
            setting,
            found: AtomicU8::new(UNDECIDED),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    /// The protocol for the next request, probing the upstream if that is not known yet.
    pub async fn wire(&self, authority: &str, limit: Duration) -> Result<Wire, ForwardError> {
        if let Some(wire) = self.known() {
            return Ok(wire);
        }
        let _probing = self.probing.lock().await;
        if let Some(wire) = self.found() {
            return Ok(wire);
        }
        // Forced HTTP/2 asks too, once: an upstream that does not speak it would otherwise only show as
        // "broken pipe" on every request.
        let wire = if speaks_h2c(authority, limit).await? {
            Wire::Http2
        } else if self.setting == UpstreamProtocol::Http2 {
            return Err(ForwardError::Unreachable(format!(
                "{authority} does not speak HTTP/2 without TLS (h2c), which --upstream-protocol http2 \
                 requires; start the sidecar with --upstream-protocol auto or http1"
            )));
        } else {
            Wire::Http1
        };
        tracing::info!(
            upstream = authority,
            protocol = if wire == Wire::Http2 {
                "HTTP/2 (h2c)"
            } else {
                "HTTP/1.1"
            },
            "found the upstream's protocol"
        );
        self.found
            .store(if wire == Wire::Http2 { HTTP2 } else { HTTP1 }, Ordering::Release);
        Ok(wire)
    }

    /// The upstream could not be reached: it may come back as another server, so ask again next time.
    pub fn forget(&self) {
        self.found.store(UNDECIDED, Ordering::Release);
    }

    /// The protocol for the next request, if no probe is needed to know it.
    pub fn known(&self) -> Option<Wire> {
        if self.setting == UpstreamProtocol::Http1 {
            return Some(Wire::Http1);
        }
        self.found()
    }

    fn found(&self) -> Option<Wire> {
        match self.found.load(Ordering::Acquire) {
            HTTP1 => Some(Wire::Http1),
            HTTP2 => Some(Wire::Http2),
            _ => None,
        }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// The type of a SETTINGS frame, the first frame an HTTP/2 server sends.
const SETTINGS: u8 = 0x4;

/// Whether the upstream answers the HTTP/2 preface like an HTTP/2 server. Not reaching it at all is an
/// error; anything else (an HTTP/1.1 error response, a close, a reset, silence for `limit`) means no.
pub async fn speaks_h2c(authority: &str, limit: Duration) -> Result<bool, ForwardError> {
    let mut stream = connect(authority).await?;
    if stream.write_all(PREFACE).await.is_err() {
        return Ok(false);
    }
    // A frame starts with a 3-byte length, then its type.
    let mut head = [0u8; 4];
    let read = tokio::time::timeout(limit, stream.read_exact(&mut head)).await;
    Ok(matches!(read, Ok(Ok(_))) && head[3] == SETTINGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_and_prints_its_three_values() {
        for text in ["auto", "http1", "http2"] {
            assert_eq!(text.parse::<UpstreamProtocol>().unwrap().to_string(), text);
        }
        assert!(
            "h2c"
                .parse::<UpstreamProtocol>()
                .unwrap_err()
                .contains("auto, http1, http2")
        );
    }
}
