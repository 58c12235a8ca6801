//! The query string of `GET /api/facts`: `predicate=has_role&args.0.type=User&args.0.id=alice&args.2.type=...`.
//!
//! The clients send only the parts of a pattern that are not wildcards, so a read names a predicate and
//! constrains some positions; facts of any arity that have those positions match.

use std::collections::BTreeMap;

use crate::domain::facts::{FactFilter, MAX_ARGS, ValuePattern, check_id, check_predicate, check_type};

use super::wire::WireError;

fn bad(message: String) -> WireError {
    WireError(message)
}

/// Parses the raw (still percent-encoded) query string.
pub fn parse_facts_query(raw: Option<&str>) -> Result<FactFilter, WireError> {
    let mut predicate: Option<String> = None;
    let mut constraints: BTreeMap<usize, ValuePattern> = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        let value = decode(value)?;
        if key == "predicate" {
            if predicate.is_some() {
                return Err(bad("query parameter \"predicate\" is given twice".into()));
            }
            check_predicate(&value).map_err(|e| bad(format!("query parameter \"predicate\": {e}")))?;
            predicate = Some(value);
            continue;
        }
        let (position, field) = parse_arg_key(&key)?;
        let key = format!("args.{position}.{field}");
        let slot = constraints.entry(position).or_default();
        let target = if field == "type" { &mut slot.type_ } else { &mut slot.id };
        if target.is_some() {
            return Err(bad(format!("query parameter {key:?} is given twice")));
        }
        let checked = if field == "type" {
            check_type(&value)
        } else {
            check_id(&value)
        };
        checked.map_err(|e| bad(format!("query parameter {key:?}: {e}")))?;
        *target = Some(value);
    }
    let predicate = predicate.ok_or_else(|| bad("missing query parameter \"predicate\"".into()))?;
    Ok(FactFilter::query(predicate, constraints))
}

/// `args.N.type` or `args.N.id` → (N, "type" | "id").
fn parse_arg_key(key: &str) -> Result<(usize, &str), WireError> {
    let unknown = || {
        let shown: String = key.chars().take(64).collect();
        bad(format!(
            "unknown query parameter {shown:?}: expected \"predicate\", \"args.N.type\" or \"args.N.id\""
        ))
    };
    let rest = key.strip_prefix("args.").ok_or_else(unknown)?;
    let (number, field) = rest.split_once('.').ok_or_else(unknown)?;
    if !matches!(field, "type" | "id") || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown());
    }
    match number.parse::<usize>() {
        Ok(n) if n < MAX_ARGS => Ok((n, field)),
        _ => Err(bad(format!(
            "query parameter {key:?}: argument positions go from 0 to {}",
            MAX_ARGS - 1
        ))),
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn decode(text: &str) -> Result<String, WireError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| bad("malformed percent-encoding in the query string".into()))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("the query string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::facts::Arity;

    #[test]
    fn the_captured_queries_parse() {
        let filter = parse_facts_query(Some(
            "predicate=has_role&args.0.type=User&args.2.type=Organization&args.2.id=acme",
        ))
        .unwrap();
        assert_eq!(filter.predicate, "has_role");
        assert_eq!(filter.arity, Arity::AtLeast(3));
        assert_eq!(filter.args[0].type_.as_deref(), Some("User"));
        assert_eq!(filter.args[0].id, None);
        assert_eq!(filter.args[1], ValuePattern::any());
        assert_eq!(filter.args[2].id.as_deref(), Some("acme"));
        // Node puts the predicate last.
        let node = parse_facts_query(Some(
            "args.0.type=User&args.2.type=Organization&args.2.id=acme&predicate=has_role",
        ))
        .unwrap();
        assert_eq!(node, filter);
        let all = parse_facts_query(Some("predicate=has_role")).unwrap();
        assert_eq!(all.arity, Arity::AtLeast(0));
    }

    #[test]
    fn values_are_percent_decoded() {
        let filter = parse_facts_query(Some("predicate=has%5Frole&args.0.id=a+b%20c%C3%A9")).unwrap();
        assert_eq!(filter.predicate, "has_role");
        assert_eq!(filter.args[0].id.as_deref(), Some("a b cé"));
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        let message = |q: &str| parse_facts_query(Some(q)).unwrap_err().0;
        assert_eq!(
            parse_facts_query(None).unwrap_err().0,
            "missing query parameter \"predicate\""
        );
        assert!(message("predicate=a&predicate=b").contains("twice"));
        assert!(message("predicate=a&args.0.id=x&args.0.id=y").contains("twice"));
        assert!(message("predicate=a&foo=1").contains("unknown query parameter \"foo\""));
        assert!(message("predicate=a&args.x.id=1").contains("unknown query parameter"));
        assert!(message("predicate=a&args.0.name=1").contains("unknown query parameter"));
        assert!(message("predicate=a&args.64.id=1").contains("from 0 to 63"));
        assert!(message("predicate=a&args.99999999999999999999999.id=1").contains("from 0 to 63"));
        assert!(message("predicate=%zz").contains("percent-encoding"));
        assert!(message("predicate=%ff").contains("UTF-8"));
        assert!(message("predicate=").contains("must not be empty"));
        assert!(message("predicate=p&args.0.type=").contains("must not be empty"));
    }
}
