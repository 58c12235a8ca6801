//! Reading YAML strictly: a mapping key given twice is refused (last-one-wins would let `revoked: false`
//! after `revoked: true` silently issue a key), and nesting is bounded before the parser sees it.
//!
//! The parser reports a duplicate at the line where its mapping starts (the visitor that notices it has
//! no position of its own); the message names the key and the path to the mapping.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Flow collections (`[`/`{`) open at once in one document, at most. The deserializer stops at 128 levels
/// anyway, but only after the parser has read the whole document, which takes time quadratic in the
/// nesting; orgkeeper's manifests need fewer than ten.
pub const MAX_NESTING: usize = 128;

/// Nesting deeper than [`MAX_NESTING`], at this 1-based line.
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
}

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "more than {MAX_NESTING} '[' or '{{' open at once (counting those in strings and comments too); not read"
        )
    }
}

/// Refuses text that opens more than [`MAX_NESTING`] flow collections within one document. It counts
/// every bracket, quoted or not: a scanner that tried to skip strings could be fooled into missing real
/// brackets, and no manifest needs that many. One pass, linear in the text.
pub fn check_nesting(text: &str) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut at_line_start = true;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if at_line_start && bytes[i..].starts_with(b"---") {
            let rest = &bytes[i + 3..];
            if rest.is_empty() || matches!(rest[0], b'\n' | b'\r' | b' ' | b'\t') {
                depth = 0;
            }
        }
        at_line_start = b == b'\n';
        match b {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(TooDeep { line });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A JSON value read from YAML like `serde_json::Value` is, except that a mapping key given twice is an
/// error (at the key's line) instead of the last value winning.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {key:?} in the mapping that starts here; keep exactly one (orgkeeper never lets the last one win)"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Value, serde_norway::Error> {
        StrictValue::deserialize(serde_norway::Deserializer::from_str(text)).map(|v| v.0)
    }

    #[test]
    fn a_key_given_twice_is_refused_at_its_mappings_line() {
        let error = read("kind: ApiKey\nspec:\n  revoked: true\n  revoked: false\n").unwrap_err();
        assert!(error.to_string().contains("spec: duplicate key \"revoked\""), "{error}");
        assert_eq!(error.location().map(|l| l.line()), Some(3), "{error}");
    }

    #[test]
    fn values_read_as_serde_json_reads_them() {
        let text = "a: 1\nb: [true, null, 2.5, x]\nc: {d: -3}\n";
        let strict = read(text).unwrap();
        let lenient: Value = serde_norway::from_str(text).unwrap();
        assert_eq!(strict, lenient);
    }

    #[test]
    fn deep_nesting_is_refused_and_documents_start_afresh() {
        let deep = format!("a: {}", "[".repeat(MAX_NESTING + 1));
        assert_eq!(check_nesting(&format!("x: 1\n{deep}")), Err(TooDeep { line: 2 }));
        let almost = format!("a: {}\n", "[".repeat(MAX_NESTING));
        assert_eq!(check_nesting(&format!("{almost}---\n{almost}")), Ok(()));
    }
}
