//! Property tests (proptest) of the sidecar's request parsing and the key parser:
//! - the streaming fact counter agrees with an independent oracle over `serde_json::Value` on arbitrary
//!   JSON, counts generated batches exactly however they are formatted, and never panics on any bytes;
//! - classification never lets a disguised write path pass as a read;
//! - the key parser and the key ring accept exactly the issued key and nothing near it.
//!
//! Cases that failed once are kept below as plain tests (`regression_*`).

use hyper::Method;
use orgkeeper::auth::{AuthError, KeyRing};
use orgkeeper::domain::{Access, ApiKeyToken, PlanTier};
use orgkeeper::sidecar::classify::{Route, WriteKind, classify, count_facts};
use orgkeeper::store::{AuthSnapshot, EnvironmentLimits, LiveKey};
use proptest::prelude::*;
use serde_json::{Value, json};

const KINDS: [WriteKind; 7] = [
    WriteKind::Batch,
    WriteKind::Fact,
    WriteKind::BulkLoad,
    WriteKind::BulkDelete,
    WriteKind::Bulk,
    WriteKind::ClearData,
    WriteKind::Policy,
];

/// The oracle: what a write costs, computed from a parsed JSON tree (None: the body is refused).
fn oracle(kind: WriteKind, value: &Value) -> Option<u64> {
    fn is_fact(fact: &Value) -> bool {
        fact.as_object().is_some_and(|o| {
            o.get("predicate").is_some_and(Value::is_string) && o.get("args").is_some_and(Value::is_array)
        })
    }
    fn facts(value: &Value) -> Option<u64> {
        let list = value.as_array()?;
        list.iter().all(is_fact).then_some(list.len() as u64)
    }
    /// An object with only `allowed` keys; null values count as absent.
    fn parts<'a>(value: &'a Value, allowed: [&str; 2]) -> Option<Vec<&'a Value>> {
        let object = value.as_object()?;
        if object.keys().any(|k| !allowed.contains(&k.as_str())) {
            return None;
        }
        Some(object.values().filter(|v| !v.is_null()).collect())
    }
    match kind {
        WriteKind::Batch => value.as_array()?.iter().try_fold(0, |total, changeset| {
            let present = parts(changeset, ["inserts", "deletes"])?;
            if present.is_empty() {
                return None;
            }
            present.into_iter().try_fold(total, |n, list| Some(n + facts(list)?))
        }),
        WriteKind::Fact => is_fact(value).then_some(1),
        WriteKind::BulkLoad | WriteKind::BulkDelete => facts(value),
        WriteKind::Bulk => parts(value, ["delete", "tell"])?
            .into_iter()
            .try_fold(0, |n, list| Some(n + facts(list)?)),
        WriteKind::ClearData => Some(1),
        WriteKind::Policy => Some(0),
    }
}

/// JSON values biased towards the shapes the endpoints expect, so that near-misses are common.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "inserts",
        "deletes",
        "predicate",
        "args",
        "type",
        "id",
        "delete",
        "tell",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z_\"\\\\é]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn fact() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        ("[A-Za-z]{1,6}", "[ -~é☃]{0,10}").prop_map(|(t, i)| json!({"type": t, "id": i})),
        Just(json!({"type": null, "id": null})),
    ];
    ("[ -~é\\n]{1,12}", prop::collection::vec(value, 0..5))
        .prop_map(|(predicate, args)| json!({"predicate": predicate, "args": args}))
}

/// A valid batch and the number of facts in it.
fn batch() -> impl Strategy<Value = (Value, u64)> {
    let changeset = (any::<bool>(), prop::collection::vec(fact(), 0..8)).prop_map(|(insert, facts)| {
        let n = facts.len() as u64;
        (json!({ if insert { "inserts" } else { "deletes" }: facts }), n)
    });
    prop::collection::vec(changeset, 0..6).prop_map(|changesets| {
        let total = changesets.iter().map(|(_, n)| n).sum();
        (Value::Array(changesets.into_iter().map(|(c, _)| c).collect()), total)
    })
}

/// A valid body for `kind`: what the clients send.
fn valid_body(kind: WriteKind) -> BoxedStrategy<Value> {
    match kind {
        WriteKind::Batch => batch().prop_map(|(v, _)| v).boxed(),
        WriteKind::Fact => fact().boxed(),
        WriteKind::Bulk => (prop::collection::vec(fact(), 0..4), prop::collection::vec(fact(), 0..4))
            .prop_map(|(d, t)| json!({"delete": d, "tell": t}))
            .boxed(),
        _ => prop::collection::vec(fact(), 0..6).prop_map(Value::Array).boxed(),
    }
}

/// Changes one node of `value`, chosen by `path` (each byte picks a child; a byte divisible by 4 stops
/// there), in the way `how` says: the near-misses a careless or hostile client sends.
fn mutate(value: &mut Value, path: &[u8], how: u8) {
    let stop = path.first().is_none_or(|b| b % 4 == 0);
    if !stop {
        let pick = path[0] as usize;
        let child = match value {
            Value::Array(items) if !items.is_empty() => {
                let n = items.len();
                items.get_mut(pick % n)
            }
            Value::Object(map) if !map.is_empty() => {
                let n = map.len();
                map.values_mut().nth(pick % n)
            }
            _ => None,
        };
        if let Some(child) = child {
            return mutate(child, &path[1..], how);
        }
    }
    *value = match (how % 8, std::mem::take(value)) {
        // An object written as the array of its values (serde's positional form), in either key order.
        (0, Value::Object(map)) => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
        (7, Value::Object(map)) => Value::Array(map.into_iter().rev().map(|(_, v)| v).collect()),
        (1, Value::Object(mut map)) => {
            if let Some(key) = map.keys().next().cloned() {
                map.remove(&key);
            }
            Value::Object(map)
        }
        (2, Value::Object(mut map)) => {
            if let Some(key) = map.keys().next().cloned() {
                let v = map.remove(&key).unwrap();
                map.insert(format!("{key}s"), v);
            }
            Value::Object(map)
        }
        (3, _) => Value::Null,
        (4, _) => json!(7),
        (5, other) => Value::Array(vec![other]),
        (_, other) => json!({"value": other}),
    };
}

/// A write path disguised the ways a lenient upstream might still route it.
fn disguised(path: &'static str) -> impl Strategy<Value = String> {
    let segment_disguise = |segment: &str, upper: bool, encode: Option<usize>, params: bool| {
        let mut text: String = if upper {
            segment.to_ascii_uppercase()
        } else {
            segment.to_owned()
        };
        if let Some(i) = encode.map(|i| i % text.len()) {
            let c = text.as_bytes()[i];
            text = format!("{}%{c:02X}{}", &text[..i], &text[i + 1..]);
        }
        if params {
            text.push_str(";v=1");
        }
        text
    };
    (
        any::<(bool, bool)>(),
        any::<(Option<usize>, Option<usize>)>(),
        any::<bool>(),
        prop::sample::select(vec!["/", "//", "/./", "/x/../"]),
        prop::sample::select(vec!["", "/", "?a=b", "#frag", "/?q=/api/authorize"]),
    )
        .prop_map(move |((up1, up2), (enc1, enc2), params, lead, tail)| {
            let (api, name) = path.trim_start_matches('/').split_once('/').unwrap();
            format!(
                "{lead}{}/{}{tail}",
                segment_disguise(api, up1, enc1, false),
                segment_disguise(name, up2, enc2, params)
            )
        })
}

fn ring_with(token: &ApiKeyToken) -> KeyRing {
    let mut snapshot = AuthSnapshot::default();
    snapshot.keys.insert(
        token.key_id().to_owned(),
        LiveKey {
            key_id: token.key_id().into(),
            environment_id: token.env_id().into(),
            access: Access::ReadWrite,
            hash: token.hash(),
            expires_at: None,
            last_use: Default::default(),
            environment: None,
        },
    );
    snapshot.environments.insert(
        token.env_id().to_owned(),
        std::sync::Arc::new(EnvironmentLimits {
            environment_id: token.env_id().into(),
            organization_id: "org".into(),
            label: "team/acme/production".into(),
            limits: PlanTier::Developer.default_limits(),
        }),
    );
    KeyRing::from_snapshot(snapshot)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn counting_agrees_with_the_oracle_on_any_json(value in json_value(), kind in prop::sample::select(KINDS.to_vec())) {
        let body = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(count_facts(kind, &body).ok(), oracle(kind, &value), "{}", value);
    }

    #[test]
    fn counting_agrees_with_the_oracle_on_near_misses(
        (kind, mut value) in prop::sample::select(KINDS.to_vec()).prop_flat_map(|k| (Just(k), valid_body(k))),
        path in prop::collection::vec(any::<u8>(), 0..6),
        how in any::<u8>(),
    ) {
        mutate(&mut value, &path, how);
        let body = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(count_facts(kind, &body).ok(), oracle(kind, &value), "{}", value);
    }

    #[test]
    fn a_batch_costs_its_facts_however_it_is_formatted((value, n) in batch(), pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
        prop_assert_eq!(count_facts(WriteKind::Batch, body.as_bytes()), Ok(n));
        // The same facts through the legacy endpoints cost the same.
        let facts: Vec<Value> = value.as_array().unwrap().iter()
            .flat_map(|c| c.as_object().unwrap().values().flat_map(|l| l.as_array().unwrap().clone()))
            .collect();
        let list = serde_json::to_vec(&facts).unwrap();
        prop_assert_eq!(count_facts(WriteKind::BulkLoad, &list), Ok(n));
        let bulk = serde_json::to_vec(&json!({"delete": facts, "tell": []})).unwrap();
        prop_assert_eq!(count_facts(WriteKind::Bulk, &bulk), Ok(n));
    }

    #[test]
    fn no_bytes_make_counting_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), kind in prop::sample::select(KINDS.to_vec())) {
        let _ = count_facts(kind, &bytes);
    }

    #[test]
    fn a_truncated_batch_is_always_refused((value, _) in batch(), cut in any::<prop::sample::Index>()) {
        let body = serde_json::to_vec(&value).unwrap();
        let cut = cut.index(body.len());
        // Every proper prefix of a JSON array is incomplete.
        prop_assert!(count_facts(WriteKind::Batch, &body[..cut]).is_err());
    }

    #[test]
    fn disguised_write_paths_are_always_writes(
        (path, kind) in prop::sample::select(vec![
            ("/api/batch", WriteKind::Batch),
            ("/api/facts", WriteKind::Fact),
            ("/api/bulk_load", WriteKind::BulkLoad),
            ("/api/bulk_delete", WriteKind::BulkDelete),
            ("/api/bulk", WriteKind::Bulk),
            ("/api/clear_data", WriteKind::ClearData),
            ("/api/policy", WriteKind::Policy),
        ]).prop_flat_map(|(p, k)| (disguised(p), Just(k))),
        method in prop::sample::select(vec![Method::POST, Method::PUT, Method::DELETE, Method::PATCH]),
    ) {
        prop_assert_eq!(classify(&method, &path), Route::Write(kind), "{} {}", method, path);
        prop_assert_eq!(classify(&Method::GET, &path), Route::Read);
    }

    #[test]
    fn classifying_any_path_never_panics(path in "\\PC{0,64}", percent in "(%[0-9A-Fa-f]{0,2}|/|\\.|api|batch){0,12}") {
        let _ = classify(&Method::POST, &path);
        let _ = classify(&Method::POST, &percent);
    }

    #[test]
    fn only_the_issued_key_authenticates(position in any::<prop::sample::Index>(), replacement in "[ -~]") {
        let token = ApiKeyToken::generate("env1");
        let ring = ring_with(&token);
        let key = token.expose();
        let exact = ring.authenticate(Some(&format!("Bearer {key}"))).is_ok();
        prop_assert!(exact);
        let i = position.index(key.len());
        let mutated = format!("{}{}{}", &key[..i], replacement, &key[i + 1..]);
        if mutated != key {
            let outcome = ring.authenticate(Some(&format!("Bearer {mutated}")));
            prop_assert_eq!(outcome.map(|_| ()), Err(AuthError::Invalid), "{}", i);
        }
        // Cut anywhere, or with anything appended, it is not a key either.
        let cut = ring.authenticate(Some(&format!("Bearer {}", &key[..i]))).is_err();
        prop_assert!(cut);
        // A trailing space is trimmed like any header whitespace; anything else makes it another key.
        let longer = ring.authenticate(Some(&format!("Bearer {key}{replacement}"))).is_err();
        prop_assert!(longer || replacement == " ");
    }

    #[test]
    fn no_header_value_makes_authentication_panic(header in "\\PC{0,200}") {
        let ring = ring_with(&ApiKeyToken::generate("env1"));
        let refused = ring.authenticate(Some(&header)).is_err();
        prop_assert!(refused);
        let _ = ApiKeyToken::parse(&header);
    }
}

#[test]
fn regression_positional_arrays_are_not_facts() {
    // serde's derived structs accept `[field1, field2]`; the counter must not.
    assert!(count_facts(WriteKind::Fact, br#"["has_role", []]"#).is_err());
    assert!(count_facts(WriteKind::Batch, br#"[[[{"predicate": "p", "args": []}]]]"#).is_err());
    assert!(count_facts(WriteKind::Bulk, b"[[], []]").is_err());
}

#[test]
fn regression_duplicate_keys_cannot_hide_facts() {
    let body = br#"[{"inserts": [], "inserts": [{"predicate": "p", "args": []}]}]"#;
    assert!(count_facts(WriteKind::Batch, body).is_err());
    assert!(count_facts(WriteKind::Bulk, br#"{"tell": [], "tell": []}"#).is_err());
}

#[test]
fn regression_null_lists_and_escaped_predicates() {
    assert_eq!(
        count_facts(
            WriteKind::Batch,
            br#"[{"inserts": null, "deletes": [{"predicate": "a\"b\u00e9", "args": []}]}]"#
        ),
        Ok(1)
    );
    assert!(count_facts(WriteKind::Batch, br#"[{"inserts": null}]"#).is_err());
    assert_eq!(
        count_facts(WriteKind::Bulk, br#"{"delete": null, "tell": null}"#),
        Ok(0)
    );
}

#[test]
fn regression_encoded_and_dotted_write_paths() {
    for path in [
        "/api/%2562atch",
        "/%61pi/batch",
        "/api/batch%2F",
        "/x/../api/./batch;jsessionid=1",
        "/api/ batch",
    ] {
        assert_eq!(classify(&Method::POST, path), Route::Write(WriteKind::Batch), "{path}");
    }
    assert_eq!(classify(&Method::POST, "/api/batch/extra"), Route::Read);
}

#[test]
fn regression_oversized_and_odd_bearers() {
    let ring = ring_with(&ApiKeyToken::generate("env1"));
    for header in [
        format!("Bearer {}", "e_".repeat(100_000)),
        "Bearer ".into(),
        "Bearer  ".into(),
        "bearer".into(),
        format!("Bearer e_env1_{}_{}", "k".repeat(33), "A".repeat(32)),
        format!("Bearer e_env1_key_{}\u{0}", "A".repeat(32)),
    ] {
        assert!(ring.authenticate(Some(&header)).is_err(), "{:.60}", header);
    }
}
