//! JSON bodies exactly as the official clients see them from Oso Cloud: `{"message": "..."}`, with a space
//! after `:` and `,` (the captures in the reference were recorded that way), `application/json` always.

use std::io;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::ser::Formatter;

/// serde_json's compact output with `", "` and `": "` separators, like Python's `json.dumps`.
struct Spaced;

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serialises `value` with the spaced separators.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Serialising plain structs, strings and lists into memory cannot fail.
    if value.serialize(&mut serializer).is_err() {
        out = br#"{"message": "cannot encode the response"}"#.to_vec();
    }
    out
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// A JSON response.
pub fn response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let mut response = (status, to_vec(value)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"message": "..."}` with a status: what every success without data and every error looks like.
pub fn message(status: StatusCode, message: &str) -> Response {
    response(status, &Message { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_the_captured_bytes() {
        assert_eq!(
            to_vec(&Message {
                message: "Batch operation successful"
            }),
            br#"{"message": "Batch operation successful"}"#
        );
        let nested = serde_json::json!([{"a": [1, 2]}, {}, []]);
        assert_eq!(to_vec(&nested), br#"[{"a": [1, 2]}, {}, []]"#);
        assert_eq!(to_vec(&Vec::<u8>::new()), b"[]");
    }
}
