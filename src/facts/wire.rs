//! Request and response bodies of the fact endpoints, as the official clients send and expect them.
//!
//! Bodies are parsed into a JSON tree first and then checked by hand, so that every refusal names the
//! exact place that is wrong (`body[0].inserts[1].args[2].id: expected a string or null, found a number`)
//! instead of a generic deserialisation error. Parsing never panics, whatever the bytes (see the proptest
//! in `tests/facts_wire.rs`); serde_json's recursion limit bounds nesting.

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::domain::facts::{
    Fact, FactChange, FactError, FactFilter, Value, ValuePattern, check_arg_count, check_predicate,
};

/// A body that is not what the endpoint takes. The message is safe to return to the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn err(path: &str, what: impl std::fmt::Display) -> WireError {
    WireError(format!("{path}: {what}"))
}

/// How a JSON value is called in messages.
fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn parse_json(body: &[u8]) -> Result<Json, WireError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(WireError("the request body is empty: send a JSON document".into()));
    }
    serde_json::from_slice(body).map_err(|e| WireError(format!("malformed JSON: {e}")))
}

fn list<'a>(value: &'a Json, path: &str, what: &str) -> Result<&'a Vec<Json>, WireError> {
    value
        .as_array()
        .ok_or_else(|| err(path, format!("expected {what}, found {}", kind(value))))
}

fn object<'a>(value: &'a Json, path: &str, what: &str) -> Result<&'a Map<String, Json>, WireError> {
    value
        .as_object()
        .ok_or_else(|| err(path, format!("expected {what}, found {}", kind(value))))
}

/// Refuses keys other than `allowed`, so a typo (`"insert"`) is an error rather than silently ignored.
fn only_keys(map: &Map<String, Json>, path: &str, allowed: &[&str], what: &str) -> Result<(), WireError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(err(
            path,
            format!(
                "unknown field {} ({what} has {})",
                quote(unknown),
                allowed
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
        None => Ok(()),
    }
}

/// A caller-supplied string for a message: JSON-quoted and cut short.
fn quote(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    let ellipsis = if short.len() < text.len() { "..." } else { "" };
    format!("{}{ellipsis}", Json::String(short))
}

fn domain(path: &str, error: FactError) -> WireError {
    err(path, error)
}

/// `null`, absent, or a string.
fn optional_string(map: &Map<String, Json>, key: &str, path: &str) -> Result<Option<String>, WireError> {
    match map.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(
            &format!("{path}.{key}"),
            format!("expected a string or null, found {}", kind(other)),
        )),
    }
}

fn value_pattern(value: &Json, path: &str) -> Result<ValuePattern, WireError> {
    let map = object(value, path, "a value like {\"type\": \"User\", \"id\": \"alice\"}")?;
    only_keys(map, path, &["type", "id"], "a value")?;
    let type_ = optional_string(map, "type", path)?;
    let id = optional_string(map, "id", path)?;
    ValuePattern::new(type_, id).map_err(|e| domain(path, e))
}

/// A fact object with its arguments as patterns; `concrete` refuses wildcards.
fn fact_parts(value: &Json, path: &str) -> Result<(String, Vec<ValuePattern>), WireError> {
    let map = object(
        value,
        path,
        "a fact like {\"predicate\": \"has_role\", \"args\": [...]}",
    )?;
    only_keys(map, path, &["predicate", "args"], "a fact")?;
    let predicate = match map.get("predicate") {
        Some(Json::String(p)) => p.clone(),
        Some(other) => {
            return Err(err(
                &format!("{path}.predicate"),
                format!("expected a string, found {}", kind(other)),
            ));
        }
        None => return Err(err(path, "missing field \"predicate\"")),
    };
    check_predicate(&predicate).map_err(|e| domain(&format!("{path}.predicate"), e))?;
    let args_path = format!("{path}.args");
    let args = map.get("args").ok_or_else(|| err(path, "missing field \"args\""))?;
    let args = list(args, &args_path, "a list of values")?;
    check_arg_count(args.len()).map_err(|e| domain(&args_path, e))?;
    let args = args
        .iter()
        .enumerate()
        .map(|(i, arg)| value_pattern(arg, &format!("{args_path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((predicate, args))
}

fn fact(value: &Json, path: &str) -> Result<Fact, WireError> {
    let (predicate, args) = fact_parts(value, path)?;
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, arg)| Value::from_pattern(arg).map_err(|e| domain(&format!("{path}.args[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fact { predicate, args })
}

fn pattern(value: &Json, path: &str) -> Result<FactFilter, WireError> {
    let (predicate, args) = fact_parts(value, path)?;
    Ok(FactFilter::pattern(predicate, args))
}

fn facts(value: &Json, path: &str) -> Result<Vec<Fact>, WireError> {
    list(value, path, "a list of facts")?
        .iter()
        .enumerate()
        .map(|(i, f)| fact(f, &format!("{path}[{i}]")))
        .collect()
}

fn patterns(value: &Json, path: &str) -> Result<Vec<FactFilter>, WireError> {
    list(value, path, "a list of facts")?
        .iter()
        .enumerate()
        .map(|(i, f)| pattern(f, &format!("{path}[{i}]")))
        .collect()
}

fn changeset(value: &Json, path: &str) -> Result<FactChange, WireError> {
    let map = object(
        value,
        path,
        "a changeset like {\"inserts\": [...]} or {\"deletes\": [...]}",
    )?;
    only_keys(map, path, &["inserts", "deletes"], "a changeset")?;
    match (map.get("inserts"), map.get("deletes")) {
        (Some(inserts), None) => Ok(FactChange::Insert(facts(inserts, &format!("{path}.inserts"))?)),
        (None, Some(deletes)) => Ok(FactChange::Delete(patterns(deletes, &format!("{path}.deletes"))?)),
        _ => Err(err(path, "a changeset has exactly one of \"inserts\" or \"deletes\"")),
    }
}

/// `POST /api/batch`: `[{"inserts": [fact...]}, {"deletes": [pattern...]}, ...]`, applied in order.
pub fn parse_batch(body: &[u8]) -> Result<Vec<FactChange>, WireError> {
    let json = parse_json(body)?;
    list(&json, "body", "a list of changesets like [{\"inserts\": [...]}]")?
        .iter()
        .enumerate()
        .map(|(i, c)| changeset(c, &format!("body[{i}]")))
        .collect()
}

/// `POST /api/facts` (v1 tell): one concrete fact.
pub fn parse_tell(body: &[u8]) -> Result<Fact, WireError> {
    fact(&parse_json(body)?, "body")
}

/// `DELETE /api/facts` (v1 delete): one fact; wildcards (null type and/or id) are accepted.
pub fn parse_delete(body: &[u8]) -> Result<FactFilter, WireError> {
    pattern(&parse_json(body)?, "body")
}

/// `POST /api/bulk_load` (v1 bulk_tell): a list of concrete facts.
pub fn parse_bulk_load(body: &[u8]) -> Result<Vec<Fact>, WireError> {
    facts(&parse_json(body)?, "body")
}

/// `POST /api/bulk_delete` (v1 bulk_delete): a list of facts, wildcards accepted.
pub fn parse_bulk_delete(body: &[u8]) -> Result<Vec<FactFilter>, WireError> {
    patterns(&parse_json(body)?, "body")
}

/// `POST /api/bulk` (v1 bulk): `{"delete": [pattern...], "tell": [fact...]}`; deletes go first.
pub fn parse_bulk(body: &[u8]) -> Result<Vec<FactChange>, WireError> {
    let json = parse_json(body)?;
    let map = object(&json, "body", "an object like {\"delete\": [...], \"tell\": [...]}")?;
    only_keys(map, "body", &["delete", "tell"], "a bulk request")?;
    let delete = map
        .get("delete")
        .ok_or_else(|| err("body", "missing field \"delete\""))?;
    let tell = map.get("tell").ok_or_else(|| err("body", "missing field \"tell\""))?;
    Ok(vec![
        FactChange::Delete(patterns(delete, "body.delete")?),
        FactChange::Insert(facts(tell, "body.tell")?),
    ])
}

/// A fact as the clients read it back: `{"predicate": ..., "args": [{"type": ..., "id": ...}]}`.
#[derive(Serialize)]
pub struct WireFact<'a> {
    predicate: &'a str,
    args: Vec<WireValue<'a>>,
}

#[derive(Serialize)]
struct WireValue<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    id: &'a str,
}

impl<'a> From<&'a Fact> for WireFact<'a> {
    fn from(fact: &'a Fact) -> Self {
        WireFact {
            predicate: &fact.predicate,
            args: fact
                .args
                .iter()
                .map(|a| WireValue {
                    type_: &a.type_,
                    id: &a.id,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::json;

    const CAPTURED_BATCH: &str = r#"[{"inserts": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}, {"predicate": "has_relation", "args": [{"type": "Repository", "id": "anvil"}, {"type": "String", "id": "parent"}, {"type": "Organization", "id": "acme"}]}]}, {"deletes": [{"predicate": "has_role", "args": [{"type": "User", "id": "bob"}, {"type": null, "id": null}, {"type": null, "id": null}]}]}, {"inserts": [{"predicate": "has_role", "args": [{"type": "User", "id": "carol"}, {"type": "String", "id": "viewer"}, {"type": "Organization", "id": "acme"}]}]}]"#;

    #[test]
    fn the_captured_batch_parses_in_order() {
        let changes = parse_batch(CAPTURED_BATCH.as_bytes()).unwrap();
        assert_eq!(changes.len(), 3);
        assert!(matches!(&changes[0], FactChange::Insert(f) if f.len() == 2));
        let FactChange::Delete(deletes) = &changes[1] else {
            panic!("second changeset is a delete")
        };
        assert_eq!(deletes[0].args[0].id.as_deref(), Some("bob"));
        assert!(deletes[0].args[1].type_.is_none());
        assert!(matches!(&changes[2], FactChange::Insert(f) if f[0].args[0].id == "carol"));
    }

    #[test]
    fn facts_render_like_the_captures() {
        let fact = parse_tell(br#"{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}]}"#).unwrap();
        assert_eq!(
            String::from_utf8(json::to_vec(&WireFact::from(&fact))).unwrap(),
            r#"{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}]}"#
        );
    }

    fn message(result: Result<Vec<FactChange>, WireError>) -> String {
        result.unwrap_err().0
    }

    #[test]
    fn bad_bodies_are_refused_with_the_place_that_is_wrong() {
        assert!(message(parse_batch(b"")).contains("empty"));
        assert!(message(parse_batch(b"[{")).starts_with("malformed JSON"));
        assert_eq!(
            message(parse_batch(br#"{"inserts": []}"#)),
            "body: expected a list of changesets like [{\"inserts\": [...]}], found an object"
        );
        assert_eq!(
            message(parse_batch(br#"[{"insert": []}]"#)),
            "body[0]: unknown field \"insert\" (a changeset has \"inserts\" and \"deletes\")"
        );
        assert_eq!(
            message(parse_batch(br#"[{"inserts": [], "deletes": []}]"#)),
            "body[0]: a changeset has exactly one of \"inserts\" or \"deletes\""
        );
        assert_eq!(
            message(parse_batch(
                br#"[{"inserts": [{"predicate": "p", "args": [{"type": "Integer", "id": 42}]}]}]"#
            )),
            "body[0].inserts[0].args[0].id: expected a string or null, found a number"
        );
        assert!(
            message(parse_batch(
                br#"[{"inserts": [{"predicate": "p", "args": [{"type": "User", "id": null}]}]}]"#
            ))
            .starts_with("body[0].inserts[0].args[0]: inserted facts must be concrete")
        );
        assert_eq!(
            message(parse_batch(br#"[{"deletes": [{"predicate": "", "args": []}]}]"#)),
            "body[0].deletes[0].predicate: the predicate must not be empty"
        );
        assert_eq!(
            message(parse_batch(br#"[{"deletes": [{"args": []}]}]"#)),
            "body[0].deletes[0]: missing field \"predicate\""
        );
        assert_eq!(
            message(parse_bulk(br#"{"delete": []}"#)),
            "body: missing field \"tell\""
        );
        assert!(parse_tell(br#"{"predicate": "p", "args": {}}"#).is_err());
        assert!(parse_delete(br#"{"predicate": "p", "args": [{"type": null, "id": null}], "x": 1}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert!(message(parse_batch(deep.as_bytes())).starts_with("malformed JSON"));
    }

    #[test]
    fn the_v1_bodies_map_to_changes() {
        let bulk = parse_bulk(br#"{"delete": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": null, "id": null}, {"type": "Organization", "id": null}]}], "tell": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "owner"}, {"type": "Organization", "id": "acme"}]}]}"#).unwrap();
        assert!(matches!(&bulk[0], FactChange::Delete(d) if d.len() == 1));
        assert!(matches!(&bulk[1], FactChange::Insert(f) if f.len() == 1));
        assert_eq!(parse_bulk_load(b"[]").unwrap(), vec![]);
        assert_eq!(parse_bulk_delete(b" [ ] ").unwrap(), vec![]);
        assert!(parse_delete(br#"{"predicate": "p", "args": [{"type": "T"}]}"#).is_ok());
    }
}
