//! Fuzzing the fact API's request parsing (proptest): whatever the bytes or the query string, parsing
//! returns a value or a message and never panics; well-formed requests survive a round trip through the
//! wire format. Inputs that once broke (or nearly broke) the parsers are kept below as plain tests.

use std::collections::BTreeMap;

use orgkeeper::domain::facts::{Arity, FactChange, FactFilter, ValuePattern};
use orgkeeper::facts::query::parse_facts_query;
use orgkeeper::facts::wire::{parse_batch, parse_bulk, parse_bulk_delete, parse_bulk_load, parse_delete, parse_tell};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

/// Runs every body parser; each must answer without panicking, and refusals must say something.
fn parse_everything(body: &[u8]) {
    fn check<T>(result: Result<T, orgkeeper::facts::wire::WireError>) {
        if let Err(e) = result {
            assert!(!e.0.is_empty());
        }
    }
    check(parse_batch(body));
    check(parse_tell(body));
    check(parse_delete(body));
    check(parse_bulk_load(body));
    check(parse_bulk_delete(body));
    check(parse_bulk(body));
}

fn pattern_json(p: &ValuePattern) -> Json {
    json!({"type": p.type_, "id": p.id})
}

fn changes_json(changes: &[FactChange]) -> Json {
    Json::Array(
        changes
            .iter()
            .map(|change| match change {
                FactChange::Insert(facts) => json!({"inserts": facts.iter().map(|f| json!({
                    "predicate": f.predicate,
                    "args": f.args.iter().map(|a| json!({"type": a.type_, "id": a.id})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()}),
                FactChange::Delete(filters) => json!({"deletes": filters.iter().map(|f| json!({
                    "predicate": f.predicate,
                    "args": f.args.iter().map(pattern_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()}),
            })
            .collect(),
    )
}

/// Strings the clients could send, including the awkward ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
        4 => "\\PC{1,16}",
        1 => Just(String::new()),
        1 => Just("%".to_owned()),
        1 => Just("a&b=c+d".to_owned()),
    ]
}

fn value_json(wildcards: bool) -> impl Strategy<Value = Json> {
    let part = move || {
        if wildcards {
            prop_oneof![3 => text().prop_map(Json::String), 1 => Just(Json::Null)].boxed()
        } else {
            text().prop_map(Json::String).boxed()
        }
    };
    (part(), part()).prop_map(|(t, i)| json!({"type": t, "id": i}))
}

fn fact_json(wildcards: bool) -> impl Strategy<Value = Json> {
    (text(), prop::collection::vec(value_json(wildcards), 0..7))
        .prop_map(|(predicate, args)| json!({"predicate": predicate, "args": args}))
}

fn batch_json() -> impl Strategy<Value = Json> {
    let changeset = prop_oneof![
        prop::collection::vec(fact_json(false), 0..4).prop_map(|f| json!({"inserts": f})),
        prop::collection::vec(fact_json(true), 0..4).prop_map(|f| json!({"deletes": f})),
    ];
    prop::collection::vec(changeset, 0..5).prop_map(Json::Array)
}

/// Any JSON at all, a few levels deep.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        text().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("inserts".to_owned()),
                    Just("deletes".to_owned()),
                    Just("predicate".to_owned()),
                    Just("args".to_owned()),
                    Just("type".to_owned()),
                    Just("id".to_owned()),
                    Just("tell".to_owned()),
                    Just("delete".to_owned()),
                    text(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn query_string(filter: &FactFilter) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let mut parts = vec![format!("predicate={}", encode(&filter.predicate))];
    for (i, p) in filter.args.iter().enumerate() {
        if let Some(t) = &p.type_ {
            parts.push(format!("args.{i}.type={}", encode(t)));
        }
        if let Some(id) = &p.id {
            parts.push(format!("args.{i}.id={}", encode(id)));
        }
    }
    parts.join("&")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        parse_everything(value.to_string().as_bytes());
    }

    #[test]
    fn well_formed_batches_round_trip(value in batch_json()) {
        // Generated batches may still be refused (an empty predicate or type); accepted ones round-trip.
        let parsed = parse_batch(value.to_string().as_bytes());
        prop_assume!(parsed.is_ok(), "refused: {:?}", parsed);
        if let Ok(changes) = parsed {
            let again = parse_batch(changes_json(&changes).to_string().as_bytes()).unwrap();
            prop_assert_eq!(again, changes);
        }
    }

    #[test]
    fn arbitrary_query_strings_never_panic(query in "\\PC{0,64}", raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_facts_query(Some(&query));
        let _ = parse_facts_query(Some(&String::from_utf8_lossy(&raw)));
    }

    #[test]
    fn queries_round_trip(
        predicate in "[a-z_]{1,10}",
        constraints in prop::collection::btree_map(0usize..64, (proptest::option::of(text()), proptest::option::of(text())), 0..5),
    ) {
        let constraints: BTreeMap<usize, ValuePattern> = constraints
            .into_iter()
            .map(|(i, (t, id))| (i, ValuePattern { type_: t, id }))
            .collect();
        let filter = FactFilter::query(predicate, constraints);
        if let Ok(parsed) = parse_facts_query(Some(&query_string(&filter))) {
            // Positions given only as wildcards do not reach the wire; compare what does.
            let len = filter.args.iter().rposition(|p| p.type_.is_some() || p.id.is_some()).map_or(0, |i| i + 1);
            prop_assert_eq!(parsed.arity, Arity::AtLeast(len));
            prop_assert_eq!(&parsed.args[..], &filter.args[..len]);
        }
    }
}

// Regression cases: inputs that proptest or review found interesting, kept as plain tests.

#[test]
fn deep_nesting_is_a_400_not_a_stack_overflow() {
    for body in ["[".repeat(1_000_000), "{\"a\":".repeat(200_000)] {
        assert!(
            parse_batch(body.as_bytes())
                .unwrap_err()
                .0
                .starts_with("malformed JSON")
        );
    }
    let nested_args = format!(
        r#"[{{"inserts": [{{"predicate": "p", "args": [{}]}}]}}]"#,
        "[".repeat(5000)
    );
    assert!(parse_batch(nested_args.as_bytes()).is_err());
}

#[test]
fn odd_but_valid_json_is_handled() {
    // Duplicate keys: serde_json keeps the last one.
    let changes = parse_batch(br#"[{"inserts": [{"predicate": "a", "predicate": "b", "args": []}]}]"#).unwrap();
    assert!(matches!(&changes[0], FactChange::Insert(f) if f[0].predicate == "b"));
    // A BOM or trailing garbage is malformed JSON.
    assert!(parse_batch(b"\xef\xbb\xbf[]").is_err());
    assert!(parse_batch(b"[] []").is_err());
    // Numbers that do not fit anything are just the wrong type.
    let huge = br#"[{"inserts": [{"predicate": "p", "args": [{"type": "Integer", "id": 1e400}]}]}]"#;
    assert!(parse_batch(huge).is_err());
    // Missing type/id in a delete are wildcards (the Node client omits undefined keys).
    let FactChange::Delete(d) = &parse_batch(br#"[{"deletes": [{"predicate": "p", "args": [{}]}]}]"#).unwrap()[0]
    else {
        panic!("a delete")
    };
    assert_eq!(d[0].args[0], ValuePattern::any());
    // Escaped NUL is refused with a reason, lone surrogates are malformed JSON.
    assert!(
        parse_tell(br#"{"predicate": "p\u0000", "args": []}"#)
            .unwrap_err()
            .0
            .contains("NUL")
    );
    assert!(parse_tell(br#"{"predicate": "\ud800", "args": []}"#).is_err());
    // Too many arguments.
    let args = vec![json!({"type": "T", "id": "x"}); 65];
    let body = json!({"predicate": "p", "args": args}).to_string();
    assert!(parse_tell(body.as_bytes()).unwrap_err().0.contains("limit is 64"));
}

#[test]
fn odd_query_strings_are_handled() {
    let ok = |q: &str| parse_facts_query(Some(q)).unwrap();
    let err = |q: &str| parse_facts_query(Some(q)).unwrap_err().0;
    assert_eq!(ok("predicate=p&&&").predicate, "p");
    assert_eq!(ok("args.00.id=x&predicate=p").args[0].id.as_deref(), Some("x"));
    assert!(err("predicate=p&args.+1.id=x").contains("unknown query parameter"));
    assert!(err("predicate=p&args.-1.id=x").contains("unknown query parameter"));
    assert!(err("predicate=p&args..id=x").contains("unknown query parameter"));
    assert!(err("predicate=p&args.0.id.x=y").contains("unknown query parameter"));
    let padded = format!("predicate=p&args.{}1.id=a&args.1.id=b", "0".repeat(10_000));
    assert_eq!(err(&padded), "query parameter \"args.1.id\" is given twice");
    assert!(err("predicate=%").contains("percent-encoding"));
    assert!(err("predicate=%4").contains("percent-encoding"));
    assert!(err("predicate=%C3").contains("UTF-8"));
    assert_eq!(ok("predicate=a%3Db%26c").predicate, "a=b&c");
    assert_eq!(
        ok("predicate=p&args.0.id").args[0].id.as_deref(),
        Some(""),
        "a key without = is empty"
    );
    let long_key = format!("predicate=p&{}=1", "k".repeat(10_000));
    assert!(err(&long_key).len() < 200, "messages quote at most a short prefix");
}
