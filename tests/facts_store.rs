//! The fact store's SQL, on SQLite and PostgreSQL alike: facts of any arity round-trip, batches apply in
//! order and all or nothing, replays change nothing, wildcards delete what they match and nothing else,
//! environments never see each other's facts, and deleting an environment deletes its facts.

mod facts_support;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use facts_support::*;
use orgkeeper::domain::facts::{Fact, FactChange};
use orgkeeper::store::{Backend, FactStoreError, Store};

async fn read(store: &Store, env: &str, filter: &orgkeeper::domain::facts::FactFilter) -> BTreeSet<Fact> {
    store.query_facts(env, filter).await.unwrap().into_iter().collect()
}

fn set(facts: &[Fact]) -> BTreeSet<Fact> {
    facts.iter().cloned().collect()
}

async fn facts_of_any_arity_round_trip(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging");
    let wide: Vec<(String, String)> = (0..7).map(|i| (format!("T{i}"), format!("id{i}"))).collect();
    let wide_refs: Vec<(&str, &str)> = wide.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let facts = vec![
        fact("enabled", &[]),
        fact("is_public", &[("Repository", "anvil")]),
        fact("has_count", &[("Repository", "anvil"), ("Integer", "42")]),
        role("alice", "admin", "acme"),
        fact("wide", &wide_refs),
        // Quotes, percent signs, non-ASCII and an empty id survive both backends.
        fact("odd", &[("User", "o'brien \"q\" %_ é 🦀"), ("String", "")]),
    ];
    let outcome = store
        .write_facts(env, &[FactChange::Insert(facts.clone())])
        .await
        .unwrap();
    assert_eq!(outcome.inserted, 6);
    for f in &facts {
        assert_eq!(
            read(&store, env, &exactly(f)).await,
            set(std::slice::from_ref(f)),
            "{f:?}"
        );
        assert_eq!(
            read(&store, env, &all(&f.predicate)).await,
            set(std::slice::from_ref(f))
        );
    }
    // A read by a position past the fourth argument.
    let by_sixth = query("wide", &[(6, p(Some("T6"), Some("id6")))]);
    assert_eq!(read(&store, env, &by_sixth).await.len(), 1);
    assert!(
        read(&store, env, &query("wide", &[(6, p(None, Some("nope")))]))
            .await
            .is_empty()
    );
    assert_eq!(store.count_facts(env).await.unwrap(), 6);
}

async fn reads_match_wildcards_at_any_position_and_any_arity(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging");
    let two = fact("has_role", &[("User", "alice"), ("Organization", "acme")]);
    let facts = vec![
        role("alice", "admin", "acme"),
        role("alice", "member", "beta"),
        role("bob", "member", "acme"),
        two.clone(),
    ];
    store
        .write_facts(env, &[FactChange::Insert(facts.clone())])
        .await
        .unwrap();
    let alice = p(Some("User"), Some("alice"));
    assert_eq!(
        read(&store, env, &query("has_role", &[(0, alice.clone())])).await,
        set(&[
            role("alice", "admin", "acme"),
            role("alice", "member", "beta"),
            two.clone()
        ])
    );
    assert_eq!(
        read(
            &store,
            env,
            &query(
                "has_role",
                &[(0, p(Some("User"), None)), (2, p(Some("Organization"), Some("acme")))]
            )
        )
        .await,
        set(&[role("alice", "admin", "acme"), role("bob", "member", "acme")]),
        "a position past a fact's arity excludes it"
    );
    assert_eq!(
        read(&store, env, &query("has_role", &[(1, p(None, Some("member")))])).await,
        set(&[role("alice", "member", "beta"), role("bob", "member", "acme")])
    );
    assert_eq!(read(&store, env, &all("has_role")).await.len(), 4);
    assert!(read(&store, env, &all("has_relation")).await.is_empty());
    // Results come back oldest first.
    let ordered = store.query_facts(env, &all("has_role")).await.unwrap();
    assert_eq!(ordered, facts);
}

async fn batches_apply_in_order(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging");
    let carol = role("carol", "viewer", "acme");
    let batch = vec![
        FactChange::Insert(vec![role("alice", "member", "acme"), role("bob", "admin", "acme")]),
        FactChange::Delete(vec![pattern(
            "has_role",
            vec![p(Some("User"), Some("bob")), p(None, None), p(None, None)],
        )]),
        FactChange::Insert(vec![carol.clone()]),
        FactChange::Delete(vec![exactly(&carol)]),
        FactChange::Insert(vec![carol.clone(), carol.clone()]),
    ];
    let outcome = store.write_facts(env, &batch).await.unwrap();
    assert_eq!(outcome.deleted, 2);
    let expected = set(&[role("alice", "member", "acme"), carol.clone()]);
    assert_eq!(read(&store, env, &all("has_role")).await, expected);

    // A replay (the client resending after a timeout) lands in the same state.
    store.write_facts(env, &batch).await.unwrap();
    store.write_facts(env, &batch).await.unwrap();
    assert_eq!(read(&store, env, &all("has_role")).await, expected);
    let again = store
        .write_facts(env, &[FactChange::Insert(vec![carol.clone()])])
        .await
        .unwrap();
    assert_eq!(again.inserted, 0, "a fact that exists is not inserted twice");
    assert_eq!(store.count_facts(env).await.unwrap(), 2);
}

async fn wildcard_deletes_remove_what_they_match_and_nothing_else(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging");
    let two = fact("has_role", &[("User", "alice"), ("Organization", "acme")]);
    let wide = |last: &str| fact("wide", &[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4"), ("E", last)]);
    let facts = vec![
        role("alice", "admin", "acme"),
        role("alice", "member", "beta"),
        fact("has_role", &[("User", "alice"), ("String", "member"), ("Team", "red")]),
        role("bob", "admin", "acme"),
        two.clone(),
        wide("x"),
        wide("y"),
    ];
    store.write_facts(env, &[FactChange::Insert(facts)]).await.unwrap();
    // Type without id; null type and id; arity must match (the 2-argument fact stays).
    let deleted = store
        .write_facts(
            env,
            &[FactChange::Delete(vec![pattern(
                "has_role",
                vec![
                    p(Some("User"), Some("alice")),
                    p(None, None),
                    p(Some("Organization"), None),
                ],
            )])],
        )
        .await
        .unwrap()
        .deleted;
    assert_eq!(deleted, 2);
    assert_eq!(
        read(&store, env, &all("has_role")).await,
        set(&[
            fact("has_role", &[("User", "alice"), ("String", "member"), ("Team", "red")]),
            role("bob", "admin", "acme"),
            two.clone()
        ])
    );
    // An id without a type matches that id of any type.
    store
        .write_facts(
            env,
            &[FactChange::Delete(vec![pattern(
                "has_role",
                vec![p(None, None), p(None, Some("admin")), p(None, None)],
            )])],
        )
        .await
        .unwrap();
    assert!(
        !read(&store, env, &all("has_role"))
            .await
            .contains(&role("bob", "admin", "acme"))
    );
    // Past the fourth argument the match is made in Rust.
    store
        .write_facts(
            env,
            &[FactChange::Delete(vec![pattern(
                "wide",
                vec![
                    p(None, None),
                    p(None, None),
                    p(None, None),
                    p(None, None),
                    p(Some("E"), Some("x")),
                ],
            )])],
        )
        .await
        .unwrap();
    assert_eq!(read(&store, env, &all("wide")).await, set(&[wide("y")]));
    // Deleting what is not there is no error.
    let none = store
        .write_facts(env, &[FactChange::Delete(vec![exactly(&role("zed", "x", "y"))])])
        .await
        .unwrap();
    assert_eq!(none.deleted, 0);
}

/// Makes every insert of predicate `boom` fail inside the database, to see a batch fail half-way.
async fn install_failing_trigger(store: &Store) {
    let statements: &[&str] = match store.backend() {
        Backend::Sqlite => &[
            "CREATE TRIGGER boom BEFORE INSERT ON facts WHEN NEW.predicate = 'boom' \
                              BEGIN SELECT RAISE(ABORT, 'boom'); END",
        ],
        Backend::Postgres => &[
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN \
             IF NEW.predicate = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER boom BEFORE INSERT ON facts FOR EACH ROW EXECUTE FUNCTION boom()",
        ],
    };
    for sql in statements {
        sqlx::query::<sqlx::Any>(sqlx::AssertSqlSafe(*sql))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

async fn a_batch_that_fails_half_way_changes_nothing(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging");
    let kept = role("alice", "admin", "acme");
    store
        .write_facts(env, &[FactChange::Insert(vec![kept.clone()])])
        .await
        .unwrap();
    install_failing_trigger(&store).await;
    let result = store
        .write_facts(
            env,
            &[
                FactChange::Delete(vec![exactly(&kept)]),
                FactChange::Insert(vec![role("bob", "admin", "acme")]),
                FactChange::Insert(vec![fact("boom", &[("X", "1")])]),
            ],
        )
        .await;
    assert!(matches!(result, Err(FactStoreError::Store(_))), "{result:?}");
    assert_eq!(
        read(&store, env, &all("has_role")).await,
        set(&[kept]),
        "all or nothing"
    );
}

async fn environments_never_see_each_others_facts(store: Store) {
    let t = tenancy(&store).await;
    let (staging, qa) = (t.env("staging"), t.env("qa"));
    store
        .write_facts(staging, &[FactChange::Insert(vec![role("alice", "admin", "acme")])])
        .await
        .unwrap();
    store
        .write_facts(
            qa,
            &[FactChange::Insert(vec![
                role("alice", "admin", "acme"),
                role("bob", "x", "y"),
            ])],
        )
        .await
        .unwrap();
    assert_eq!(read(&store, staging, &all("has_role")).await.len(), 1);
    // A wildcard delete in qa leaves staging alone.
    store
        .write_facts(
            qa,
            &[FactChange::Delete(vec![pattern("has_role", vec![p(None, None); 3])])],
        )
        .await
        .unwrap();
    assert_eq!(store.count_facts(qa).await.unwrap(), 0);
    assert_eq!(store.count_facts(staging).await.unwrap(), 1);
    store
        .write_facts(qa, &[FactChange::Insert(vec![role("carol", "x", "y")])])
        .await
        .unwrap();
    assert_eq!(store.clear_facts(qa).await.unwrap(), 1);
    assert_eq!(store.count_facts(staging).await.unwrap(), 1);
}

async fn deleting_an_environment_deletes_its_facts(store: Store) {
    let t = tenancy(&store).await;
    let (staging, qa) = (t.env("staging").to_owned(), t.env("qa").to_owned());
    let facts: Vec<Fact> = (0..50).map(|i| role(&format!("u{i}"), "member", "acme")).collect();
    store
        .write_facts(&staging, &[FactChange::Insert(facts.clone())])
        .await
        .unwrap();
    store.write_facts(&qa, &[FactChange::Insert(facts)]).await.unwrap();
    reconcile(&store, &declarations(false)).await;
    let left: i64 = sqlx::query_scalar::<sqlx::Any, i64>("SELECT COUNT(*) FROM facts WHERE environment_id = $1")
        .bind(staging.clone())
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "ON DELETE CASCADE removed staging's facts");
    assert_eq!(store.count_facts(&qa).await.unwrap(), 50);
    // A write racing the deletion (a key the data plane has not yet forgotten) is refused cleanly.
    let late = store
        .write_facts(&staging, &[FactChange::Insert(vec![role("late", "x", "y")])])
        .await;
    assert!(matches!(late, Err(FactStoreError::EnvironmentGone)), "{late:?}");
}

async fn concurrent_overlapping_batches_all_land(store: Store) {
    let t = tenancy(&store).await;
    let env = t.env("staging").to_owned();
    // Writers start each round together, so that their transactions overlap (on PostgreSQL they used to
    // deadlock on the shared facts' unique index, and sometimes ran out of retries).
    const SHARED: usize = 1_000;
    const ROUNDS: usize = 3;
    const WRITERS: usize = 8;
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let env = env.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                start.wait().await;
                // Every writer inserts the same facts, in its own order, plus its own.
                let mut facts: Vec<Fact> = (0..SHARED)
                    .map(|i| role(&format!("shared{i}"), "member", "acme"))
                    .collect();
                facts.rotate_left((writer * ROUNDS + round) * SHARED / (WRITERS * ROUNDS));
                facts.push(role(&format!("w{writer}r{round}"), "member", "acme"));
                store.write_facts(&env, &[FactChange::Insert(facts)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store.count_facts(&env).await.unwrap() as usize,
        SHARED + WRITERS * ROUNDS
    );
}

on_both_backends!(
    facts_of_any_arity_round_trip,
    reads_match_wildcards_at_any_position_and_any_arity,
    batches_apply_in_order,
    wildcard_deletes_remove_what_they_match_and_nothing_else,
    a_batch_that_fails_half_way_changes_nothing,
    environments_never_see_each_others_facts,
    deleting_an_environment_deletes_its_facts,
    concurrent_overlapping_batches_all_land,
);
