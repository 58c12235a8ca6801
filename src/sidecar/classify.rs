//! Which requests are writes, and how many facts a write carries.
//!
//! Classification must never let a write pass as a read (a read-only key could then write), so the path is
//! normalised the way a lenient upstream might read it (percent-decoding, `.`/`..` segments, repeated or
//! trailing slashes, `;params`, letter case) before it is compared. Any method other than GET, HEAD and
//! OPTIONS on a write path is a write.
//!
//! Counting parses the body with serde visitors that validate the shape the clients send and count facts
//! without building a JSON tree. A wildcard delete counts as one fact here: how many stored facts it matches
//! is known only to the upstream. The fact store reports how many facts a write removed, and the sidecar
//! charges what goes beyond the deletes counted here afterwards (see `handler`), so a wildcard delete costs
//! the facts it removed. Hence [`count_changes`] also says how many of the counted facts are deletes.

use std::fmt;

use hyper::Method;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};

/// The write endpoints, by what their bodies look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// `POST /api/batch`: `[{"inserts": [fact...]}, {"deletes": [fact...]}, ...]`.
    Batch,
    /// `POST|DELETE /api/facts`: one fact.
    Fact,
    /// `POST /api/bulk_load`: `[fact...]`.
    BulkLoad,
    /// `POST /api/bulk_delete`: `[fact...]`.
    BulkDelete,
    /// `POST /api/bulk`: `{"delete": [fact...], "tell": [fact...]}`.
    Bulk,
    /// `POST /api/clear_data`: deletes every fact; costs one fact write.
    ClearData,
    /// `POST /api/policy`: replaces the policy; a write for access control, but no facts.
    Policy,
}

impl WriteKind {
    /// The endpoint, for messages.
    pub fn endpoint(self) -> &'static str {
        match self {
            WriteKind::Batch => "/api/batch",
            WriteKind::Fact => "/api/facts",
            WriteKind::BulkLoad => "/api/bulk_load",
            WriteKind::BulkDelete => "/api/bulk_delete",
            WriteKind::Bulk => "/api/bulk",
            WriteKind::ClearData => "/api/clear_data",
            WriteKind::Policy => "/api/policy",
        }
    }
}

/// What a request is, for access control and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Read,
    Write(WriteKind),
}

/// Classifies a request by method and path (the query string is ignored).
pub fn classify(method: &Method, path: &str) -> Route {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Route::Read;
    }
    match write_endpoint(path) {
        Some(kind) => Route::Write(kind),
        None => Route::Read,
    }
}

/// The write endpoint a path names once normalised, if any.
fn write_endpoint(path: &str) -> Option<WriteKind> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // Cheap exit for the common read paths: every write path contains "api" in some spelling, and a
    // percent-encoded one contains '%'.
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"api")) {
        return None;
    }
    let segments = normalised_segments(path);
    let [api, name] = segments.as_slice() else {
        return None;
    };
    if api != "api" {
        return None;
    }
    Some(match name.as_str() {
        "batch" => WriteKind::Batch,
        "facts" => WriteKind::Fact,
        "bulk_load" => WriteKind::BulkLoad,
        "bulk_delete" => WriteKind::BulkDelete,
        "bulk" => WriteKind::Bulk,
        "clear_data" => WriteKind::ClearData,
        "policy" => WriteKind::Policy,
        _ => return None,
    })
}

/// Path segments after percent-decoding (repeatedly, so double encoding cannot hide a name), dropping empty
/// and `.` segments and `;parameters`, resolving `..`, in lower case.
pub fn normalised_segments(path: &str) -> Vec<String> {
    let mut decoded = path.to_owned();
    for _ in 0..4 {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in decoded.split(['/', '\\']) {
        let segment = raw.split(';').next().unwrap_or_default().trim();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other.to_ascii_lowercase()),
        }
    }
    segments
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a write body cannot be counted. The message is for the caller and names the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the body of {endpoint} is not valid: {detail}")]
pub struct BodyError {
    pub endpoint: &'static str,
    pub detail: String,
}

/// What a write's body costs before it is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Facts inserted or deleted, a wildcard delete counting as one.
    pub facts: u64,
    /// How many of those may be deletes (`/api/facts` counts its one fact here whatever the method): the
    /// part of a reported removal already paid for.
    pub deletes: u64,
}

/// Counts the facts a write inserts or deletes, checking the body has the shape the endpoint expects.
pub fn count_facts(kind: WriteKind, body: &[u8]) -> Result<u64, BodyError> {
    count_changes(kind, body).map(|c| c.facts)
}

/// [`count_facts`], with how many of the facts are deletes.
pub fn count_changes(kind: WriteKind, body: &[u8]) -> Result<Changes, BodyError> {
    let error = |e: serde_json::Error| BodyError {
        endpoint: kind.endpoint(),
        detail: e.to_string(),
    };
    let all = |facts| Changes { facts, deletes: facts };
    match kind {
        WriteKind::Batch => serde_json::from_slice::<Batch>(body).map(|b| b.0).map_err(error),
        WriteKind::Fact => serde_json::from_slice::<MapOnly<FactShape>>(body)
            .map(|_| all(1))
            .map_err(error),
        WriteKind::BulkLoad => serde_json::from_slice::<Facts>(body)
            .map(|f| Changes { facts: f.0, deletes: 0 })
            .map_err(error),
        WriteKind::BulkDelete => serde_json::from_slice::<Facts>(body).map(|f| all(f.0)).map_err(error),
        WriteKind::Bulk => serde_json::from_slice::<MapOnly<Bulk>>(body)
            .map(|MapOnly(b)| {
                let deletes = b.delete.map_or(0, |f| f.0);
                Changes {
                    facts: deletes + b.tell.map_or(0, |f| f.0),
                    deletes,
                }
            })
            .map_err(error),
        WriteKind::ClearData => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                serde_json::from_slice::<IgnoredAny>(body).map_err(error)?;
            }
            Ok(all(1))
        }
        WriteKind::Policy => serde_json::from_slice::<IgnoredAny>(body)
            .map(|_| Changes::default())
            .map_err(error),
    }
}

/// Deserializes `T` from a JSON object only: serde's derived structs also accept an array of the field
/// values in order, a shape no client sends and an upstream would read differently.
struct MapOnly<T>(T);

/// What a `MapOnly` type is, for error messages.
trait Expecting {
    const WHAT: &'static str;
}

impl<'de, T: Deserialize<'de> + Expecting> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Expecting> Visitor<'de> for Only<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::WHAT)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<MapOnly<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        deserializer.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// A fact as the clients send it: `{"predicate": "...", "args": [...]}`. Only the shape is checked (the
/// upstream validates values); other keys are left for the upstream to judge.
#[derive(Deserialize)]
struct FactShape<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    predicate: std::borrow::Cow<'a, str>,
    #[allow(dead_code)]
    args: Vec<IgnoredAny>,
}

impl Expecting for FactShape<'_> {
    const WHAT: &'static str = "a fact: {\"predicate\": string, \"args\": [{\"type\": ..., \"id\": ...}, ...]}";
}

/// A JSON array of facts, counted as it is read.
struct Facts(u64);

impl<'de> Deserialize<'de> for Facts {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> Visitor<'de> for Counter {
            type Value = Facts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of facts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Facts, A::Error> {
                let mut n = 0;
                while seq.next_element::<MapOnly<FactShape>>()?.is_some() {
                    n += 1;
                }
                Ok(Facts(n))
            }
        }
        deserializer.deserialize_seq(Counter)
    }
}

/// One changeset of a batch. Duplicate keys are refused by serde, so a body cannot count one array and
/// have the upstream apply another.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Changeset {
    inserts: Option<Facts>,
    deletes: Option<Facts>,
}

impl Expecting for Changeset {
    const WHAT: &'static str = "a changeset: {\"inserts\": [fact...]} or {\"deletes\": [fact...]}";
}

/// A batch: an array of changesets, each with inserts or deletes.
struct Batch(Changes);

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> Visitor<'de> for Counter {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of changesets ([{\"inserts\": [...]}, {\"deletes\": [...]}])")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
                let mut n = Changes::default();
                while let Some(MapOnly(changeset)) = seq.next_element::<MapOnly<Changeset>>()? {
                    if changeset.inserts.is_none() && changeset.deletes.is_none() {
                        return Err(de::Error::custom("a changeset needs \"inserts\" or \"deletes\""));
                    }
                    let deletes = changeset.deletes.map_or(0, |f| f.0);
                    n.facts += changeset.inserts.map_or(0, |f| f.0) + deletes;
                    n.deletes += deletes;
                }
                Ok(Batch(n))
            }
        }
        deserializer.deserialize_seq(Counter)
    }
}

/// The legacy bulk body: `{"delete": [fact...], "tell": [fact...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    delete: Option<Facts>,
    tell: Option<Facts>,
}

impl Expecting for Bulk {
    const WHAT: &'static str = "{\"delete\": [fact...], \"tell\": [fact...]}";
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACT: &str =
        r#"{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}]}"#;
    const WILDCARD: &str =
        r#"{"predicate": "has_role", "args": [{"type": "User", "id": "bob"}, {"type": null, "id": null}]}"#;

    #[test]
    fn writes_are_the_documented_endpoints_and_everything_else_is_a_read() {
        let post = Method::POST;
        assert_eq!(classify(&post, "/api/batch"), Route::Write(WriteKind::Batch));
        assert_eq!(classify(&post, "/api/facts"), Route::Write(WriteKind::Fact));
        assert_eq!(classify(&Method::DELETE, "/api/facts"), Route::Write(WriteKind::Fact));
        assert_eq!(classify(&post, "/api/bulk_load"), Route::Write(WriteKind::BulkLoad));
        assert_eq!(classify(&post, "/api/bulk_delete"), Route::Write(WriteKind::BulkDelete));
        assert_eq!(classify(&post, "/api/bulk"), Route::Write(WriteKind::Bulk));
        assert_eq!(classify(&post, "/api/clear_data"), Route::Write(WriteKind::ClearData));
        assert_eq!(classify(&post, "/api/policy"), Route::Write(WriteKind::Policy));
        for (method, path) in [
            (Method::GET, "/api/facts?predicate=has_role"),
            (Method::GET, "/api/policy"),
            (Method::GET, "/api/batch"),
            (Method::POST, "/api/authorize"),
            (Method::POST, "/api/list"),
            (Method::POST, "/api/evaluate_query"),
            (Method::GET, "/api/healthcheck"),
            (Method::POST, "/api/batches"),
            (Method::POST, "/v1/api/batch"),
        ] {
            assert_eq!(classify(&method, path), Route::Read, "{method} {path}");
        }
    }

    #[test]
    fn disguised_write_paths_are_still_writes() {
        for path in [
            "/api/batch/",
            "//api//batch",
            "/API/Batch",
            "/api/%62atch",
            "/api/%2562atch",
            "/api/./batch",
            "/x/../api/batch",
            "/api/batch;v=1",
            "/api%2Fbatch",
            "/api/batch?x=/api/authorize",
            "\\api\\batch",
        ] {
            assert_eq!(classify(&Method::POST, path), Route::Write(WriteKind::Batch), "{path}");
        }
    }

    #[test]
    fn a_batch_costs_the_facts_in_all_its_changesets() {
        let body =
            format!(r#"[{{"inserts": [{FACT}, {FACT}]}}, {{"deletes": [{WILDCARD}]}}, {{"inserts": [{FACT}]}}]"#);
        assert_eq!(count_facts(WriteKind::Batch, body.as_bytes()), Ok(4));
        assert_eq!(count_facts(WriteKind::Batch, b"[]"), Ok(0));
        let both = format!(r#"[{{"inserts": [{FACT}], "deletes": [{FACT}, {FACT}]}}]"#);
        assert_eq!(count_facts(WriteKind::Batch, both.as_bytes()), Ok(3));
    }

    #[test]
    fn the_deletes_among_the_counted_facts_are_counted_apart() {
        let changes = |kind, body: String| count_changes(kind, body.as_bytes()).unwrap();
        let batch = format!(r#"[{{"inserts": [{FACT}, {FACT}]}}, {{"deletes": [{WILDCARD}, {FACT}]}}]"#);
        assert_eq!(changes(WriteKind::Batch, batch), Changes { facts: 4, deletes: 2 });
        let bulk = format!(r#"{{"delete": [{WILDCARD}], "tell": [{FACT}, {FACT}]}}"#);
        assert_eq!(changes(WriteKind::Bulk, bulk), Changes { facts: 3, deletes: 1 });
        let list = format!("[{FACT}, {WILDCARD}]");
        assert_eq!(changes(WriteKind::BulkLoad, list.clone()).deletes, 0);
        assert_eq!(changes(WriteKind::BulkDelete, list).deletes, 2);
        assert_eq!(changes(WriteKind::Fact, FACT.into()).deletes, 1);
    }

    #[test]
    fn legacy_writes_cost_their_facts() {
        assert_eq!(count_facts(WriteKind::Fact, FACT.as_bytes()), Ok(1));
        let list = format!("[{FACT}, {WILDCARD}]");
        assert_eq!(count_facts(WriteKind::BulkLoad, list.as_bytes()), Ok(2));
        assert_eq!(count_facts(WriteKind::BulkDelete, list.as_bytes()), Ok(2));
        let bulk = format!(r#"{{"delete": [{WILDCARD}], "tell": [{FACT}, {FACT}]}}"#);
        assert_eq!(count_facts(WriteKind::Bulk, bulk.as_bytes()), Ok(3));
        assert_eq!(count_facts(WriteKind::ClearData, b""), Ok(1));
        assert_eq!(count_facts(WriteKind::ClearData, b"{}"), Ok(1));
        assert_eq!(
            count_facts(WriteKind::Policy, br#"{"filename": "", "src": "actor User {}"}"#),
            Ok(0)
        );
    }

    #[test]
    fn malformed_and_misshapen_bodies_are_refused_with_the_endpoint_named() {
        for (kind, body) in [
            (WriteKind::Batch, "[{\"inserts\": ["),
            (WriteKind::Batch, "{\"inserts\": []}"),
            (WriteKind::Batch, "[{}]"),
            (WriteKind::Batch, "[{\"insert\": []}]"),
            (WriteKind::Batch, "[{\"inserts\": [1]}]"),
            (WriteKind::Batch, "[{\"inserts\": [{\"predicate\": 1, \"args\": []}]}]"),
            (WriteKind::Batch, "[{\"inserts\": [{\"args\": []}]}]"),
            (WriteKind::Batch, "[{\"inserts\": [], \"inserts\": []}]"),
            (WriteKind::Batch, "[] trailing"),
            (WriteKind::Batch, ""),
            (WriteKind::Fact, "[]"),
            (WriteKind::BulkLoad, "{}"),
            (WriteKind::Bulk, "{\"tell\": [], \"other\": 1}"),
            (WriteKind::ClearData, "{"),
            (WriteKind::Policy, "not json"),
            (WriteKind::Fact, "[\"has_role\", []]"),
            (WriteKind::Batch, "[[[{\"predicate\": \"p\", \"args\": []}]]]"),
            (WriteKind::Bulk, "[[], []]"),
        ] {
            let error = count_facts(kind, body.as_bytes()).unwrap_err();
            assert_eq!(error.endpoint, kind.endpoint());
            assert!(error.to_string().starts_with("the body of /api/"), "{error}");
        }
    }

    #[test]
    fn deep_nesting_neither_crashes_nor_changes_the_count() {
        let deep_value = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let in_args = format!(r#"[{{"inserts": [{{"predicate": "p", "args": [{deep_value}]}}]}}]"#);
        assert_eq!(
            count_facts(WriteKind::Batch, in_args.as_bytes()),
            Ok(1),
            "values are the upstream's to judge"
        );
        assert!(count_facts(WriteKind::Batch, deep_value.as_bytes()).is_err());
        assert!(count_facts(WriteKind::Bulk, deep_value.as_bytes()).is_err());
    }
}
