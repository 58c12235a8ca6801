//! The sidecar as a client sees it, with keys and limits in a real store (SQLite and PostgreSQL): what is
//! forwarded and how faithfully, every refusal's status, message and headers, honest `Retry-After`,
//! revocations and limit changes applied live, and a store outage survived on the last known keys.

mod sidecar_support;
mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use orgkeeper::domain::{Access, LimitOverrides};
use orgkeeper::store::Store;
use orgkeeper::telemetry::Readiness;
use sidecar_support::*;

async fn reads_and_writes_reach_the_upstream_unchanged(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");

    let path = "/api/facts?predicate=has_role&args.0.type=User&args.0.id=alice%20b&args.2.type=Organization";
    let reply = http
        .send_with(
            Method::GET,
            path,
            Some(key),
            "",
            &[("x-request-id", "r-1"), ("accept", "application/json")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("x-upstream"),
        Some("yes"),
        "the upstream's headers come back"
    );
    assert_eq!(reply.json()["message"], "from upstream");
    assert!(
        reply
            .header("ratelimit-policy")
            .unwrap()
            .contains("\"requests\";q=1000000000;w=60")
    );
    let body = batch(3);
    let reply = http.send(Method::POST, "/api/batch", Some(key), &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let delete = fact(1);
    assert_eq!(
        http.send(Method::DELETE, "/api/facts", Some(key), &delete).await.status,
        StatusCode::OK
    );

    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!((&seen[0].method, seen[0].target.as_str()), (&Method::GET, path));
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {key}").as_str());
    assert_eq!(seen[0].headers["x-request-id"], "r-1");
    assert_eq!(
        seen[0].headers["host"],
        sidecar.addr.to_string().as_str(),
        "Host is the client's"
    );
    assert_eq!(
        (&seen[1].method, seen[1].target.as_str()),
        (&Method::POST, "/api/batch")
    );
    assert_eq!(seen[1].body, body.as_bytes(), "a write's body byte for byte");
    assert_eq!(seen[1].headers["content-length"], body.len().to_string().as_str());
    assert_eq!(
        (&seen[2].method, seen[2].body.as_ref()),
        (&Method::DELETE, delete.as_bytes())
    );

    // The upstream's own answers, errors included, pass through untouched; large ones stream.
    let reply = http
        .send_with(Method::GET, "/api/nothing", Some(key), "", &[("x-test-status", "404")])
        .await;
    assert_eq!(
        (reply.status, reply.message().as_str()),
        (StatusCode::NOT_FOUND, "from upstream")
    );
    let reply = http
        .send_with(Method::GET, "/api/facts", Some(key), "", &[("x-test-big", "8000000")])
        .await;
    assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, 8_000_000));
    // A read may carry a large body (policy queries); it is streamed, not limited like a write.
    let large = format!(r#"{{"context_facts": [{}]}}"#, vec![fact(0); 20_000].join(","));
    assert!(large.len() > 2_000_000);
    let reply = http.send(Method::POST, "/api/authorize", Some(key), &large).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.requests().last().unwrap().body, large.as_bytes());
}

async fn requests_without_a_valid_key_get_401_and_never_reach_the_upstream(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");
    let secret = key.rsplit('_').next().unwrap();
    let env = tenancy.environment_id("staging");
    let wrong_secret = format!("{}_{}", key.rsplit_once('_').unwrap().0, "A".repeat(32));
    let unknown = format!("e_{env}_nosuchkey000_{}", "B".repeat(32));
    for (authorization, expected) in [
        (None, "missing API key"),
        (Some("Basic dXNlcjpwYXNz".to_owned()), "not a Bearer"),
        (Some("Bearer not-a-key".to_owned()), "invalid API key"),
        (Some(format!("Bearer {unknown}")), "invalid API key"),
        (Some(format!("Bearer {wrong_secret}")), "invalid API key"),
        (Some(format!("Bearer {}", "e_".repeat(10_000))), "invalid API key"),
    ] {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = http.send_with(Method::GET, "/api/facts", None, "", &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{expected}");
        assert!(reply.message().contains(expected), "{}", reply.message());
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(!String::from_utf8_lossy(&reply.body).contains(secret));
    }
    // A header beyond the 32 KiB a request head may have is refused before it is looked at.
    let huge = format!("Bearer {}", "e_".repeat(100_000));
    let reply = http
        .send_with(Method::GET, "/api/facts", None, "", &[("authorization", &huge)])
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(
        reply.message().contains("larger than 32768 bytes"),
        "{}",
        reply.message()
    );
    // Two Authorization headers: the sidecar and the upstream might read different ones.
    let bearer = format!("Bearer {key}");
    let reply = http
        .send_with(
            Method::GET,
            "/api/facts",
            None,
            "",
            &[("authorization", &bearer), ("authorization", "Bearer other")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.count(), 0);
    let text = metrics(&sidecar).await;
    assert_eq!(
        metric(
            &text,
            r#"orgkeeper_sidecar_rejections_total{environment="unknown",reason="unauthenticated"}"#
        ),
        7.0
    );
}

async fn read_only_keys_read_but_every_write_is_403(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env("staging", limits())],
        &[Key("ro", "staging", Access::ReadOnly)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("ro");
    assert_eq!(
        http.get("/api/facts?predicate=x", Some(key)).await.status,
        StatusCode::OK
    );
    assert_eq!(http.get("/api/policy", Some(key)).await.status, StatusCode::OK);
    assert_eq!(
        http.send(Method::POST, "/api/authorize", Some(key), "{}").await.status,
        StatusCode::OK
    );
    for (method, path) in [
        (Method::POST, "/api/batch"),
        (Method::POST, "/api/facts"),
        (Method::DELETE, "/api/facts"),
        (Method::POST, "/api/bulk_load"),
        (Method::POST, "/api/bulk_delete"),
        (Method::POST, "/api/bulk"),
        (Method::POST, "/api/clear_data"),
        (Method::POST, "/api/policy"),
        (Method::POST, "/API//Batch/"),
        (Method::PUT, "/api/%62atch"),
    ] {
        let reply = http.send(method.clone(), path, Some(key), &batch(1)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(reply.message().contains("read-only"), "{}", reply.message());
    }
    assert_eq!(upstream.count(), 3, "only the reads went through");
}

async fn too_many_facts_or_bytes_in_a_write_is_413(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[
            Env(
                "staging",
                LimitOverrides {
                    max_batch_facts: Some(20),
                    max_write_body_bytes: Some(4_000),
                    ..limits()
                },
            ),
            Env(
                "qa",
                LimitOverrides {
                    fact_writes_per_minute: Some(10),
                    max_batch_facts: Some(100),
                    ..limits()
                },
            ),
        ],
        &[
            Key("rw", "staging", Access::ReadWrite),
            Key("qa", "qa", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");
    assert_eq!(http.batch(key, 20).await.status, StatusCode::OK);
    let reply = http.batch(key, 21).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.message().contains("21 facts") && reply.message().contains("maxBatchFacts is 20"));
    // The same facts in the legacy bulk endpoints count the same.
    let facts: Vec<String> = (0..21).map(fact).collect();
    let reply = http
        .send(
            Method::POST,
            "/api/bulk_load",
            Some(key),
            &format!("[{}]", facts.join(",")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = format!(
        r#"{{"delete":[{}],"tell":[{}]}}"#,
        facts[..10].join(","),
        facts[10..].join(",")
    );
    assert_eq!(
        http.send(Method::POST, "/api/bulk", Some(key), &body).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Bytes: a body over maxWriteBodyBytes, even with few facts.
    let padded = format!(r#"[{{"inserts":[{{"predicate":"{}","args":[]}}]}}]"#, "p".repeat(4_000));
    let reply = http.send(Method::POST, "/api/batch", Some(key), &padded).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.message().contains("maxWriteBodyBytes (4000 bytes)"),
        "{}",
        reply.message()
    );
    // More facts than the whole per-minute budget can never pass: 413, not a 429 that would never end.
    let reply = http.batch(tenancy.key("qa"), 11).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.message().contains("whole factWritesPerMinute budget (10)"),
        "{}",
        reply.message()
    );
    assert_eq!(upstream.count(), 1);
}

async fn over_a_rate_limit_is_429_and_retry_after_is_honest(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[
            Env(
                "staging",
                LimitOverrides {
                    requests_per_minute: Some(60),
                    ..limits()
                },
            ),
            Env(
                "qa",
                LimitOverrides {
                    fact_writes_per_minute: Some(60),
                    max_batch_facts: Some(100),
                    ..limits()
                },
            ),
        ],
        &[
            Key("rw", "staging", Access::ReadWrite),
            Key("qa", "qa", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);

    // Requests: 60 a minute, one a second.
    let key = tenancy.key("rw");
    let mut last = None;
    for _ in 0..60 {
        let reply = http.get("/api/facts", Some(key)).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break; // time passing may have let one more in; the budget is what counts
        }
        last = Some(reply);
    }
    let last = last.unwrap();
    assert!(last.header("ratelimit").unwrap().starts_with("\"requests\";r="));
    let refused = loop {
        let reply = http.get("/api/facts", Some(key)).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break reply;
        }
    };
    assert!(
        refused.message().contains("requestsPerMinute (60) is used up"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(
            r#""requests";q=60;w=60, "fact-writes";q=1000000000;qu="facts";w=60, "concurrency";q=1000000;qu="concurrent-requests""#
        )
    );
    assert!(refused.header("ratelimit").unwrap().starts_with("\"requests\";r=0;t="));
    let wait = refused.retry_after();
    assert_eq!(wait, 1, "one request a second");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::OK);

    // Facts: 60 a minute; a 3-fact write after the budget is spent waits 3 seconds at most.
    let key = tenancy.key("qa");
    assert_eq!(http.batch(key, 60).await.status, StatusCode::OK);
    let refused = http.batch(key, 3).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.message().contains("3 facts"), "{}", refused.message());
    let wait = refused.retry_after();
    assert!((1..=3).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        http.batch(key, 3).await.status,
        StatusCode::OK,
        "sent after Retry-After, it passes"
    );
}

async fn requests_beyond_the_concurrency_limit_are_429(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env(
            "staging",
            LimitOverrides {
                max_concurrent_requests: Some(2),
                ..limits()
            },
        )],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw").to_owned();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (http, key) = (http.clone(), key.clone());
            tokio::spawn(async move {
                http.send_with(Method::GET, "/api/facts", Some(&key), "", &[("x-test-hold", "1")])
                    .await
            })
        })
        .collect();
    wait_for("two requests in flight", Duration::from_secs(20), || {
        upstream.count() == 2
    })
    .await;
    let refused = http.get("/api/facts", Some(&key)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused.message().contains("maxConcurrentRequests is 2"),
        "{}",
        refused.message()
    );
    assert_eq!(refused.retry_after(), 1);
    assert!(refused.header("ratelimit").unwrap().contains("\"concurrency\";r=0"));
    upstream.release();
    for request in held {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    let reply = http.get("/api/facts", Some(&key)).await;
    assert_eq!(reply.status, StatusCode::OK, "slots are released when responses end");
    assert!(reply.header("ratelimit").unwrap().contains("\"concurrency\";r=1"));
}

async fn a_revoked_key_is_refused_within_five_seconds(store: Store) {
    let mut tenancy = Tenancy::new(
        store,
        &[Env("staging", limits())],
        &[
            Key("rw", "staging", Access::ReadWrite),
            Key("other", "staging", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw").to_owned();
    assert_eq!(http.get("/api/facts", Some(&key)).await.status, StatusCode::OK);
    tenancy.revoke("rw").await;
    let revoked_at = Instant::now();
    loop {
        let reply = http.get("/api/facts", Some(&key)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http.get("/api/facts", Some(tenancy.key("other"))).await.status,
        StatusCode::OK,
        "other keys are untouched"
    );
}

async fn a_raised_limit_applies_without_a_restart(store: Store) {
    let tight = LimitOverrides {
        requests_per_minute: Some(2),
        ..limits()
    };
    let mut tenancy = Tenancy::new(
        store,
        &[Env("staging", tight)],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw").to_owned();
    while http.get("/api/facts", Some(&key)).await.status == StatusCode::OK {}
    tenancy
        .set_limits(
            "staging",
            LimitOverrides {
                requests_per_minute: Some(1_000),
                ..limits()
            },
        )
        .await;
    let changed_at = Instant::now();
    loop {
        let reply = http.get("/api/facts", Some(&key)).await;
        if reply.status == StatusCode::OK {
            assert!(
                reply
                    .header("ratelimit-policy")
                    .unwrap()
                    .contains("\"requests\";q=1000;")
            );
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(5),
            "the new limit did not apply within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_store_outage_keeps_known_keys_working(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");
    assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::OK);
    assert_eq!(metric(&metrics(&sidecar).await, "orgkeeper_sidecar_store_up"), 1.0);

    tenancy.store.close().await; // the store goes away: every query now fails
    wait_for(
        "the sidecar to notice the store is gone",
        Duration::from_secs(30),
        || matches!(sidecar.telemetry.health.get(), Readiness::Degraded(_)),
    )
    .await;
    let Readiness::Degraded(reason) = sidecar.telemetry.health.get() else {
        unreachable!()
    };
    assert!(
        reason.contains("the store is unreachable") && reason.contains("serving the 1 keys"),
        "{reason}"
    );
    assert_eq!(metric(&metrics(&sidecar).await, "orgkeeper_sidecar_store_up"), 0.0);
    assert_eq!(
        http.get("/api/facts", Some(key)).await.status,
        StatusCode::OK,
        "known keys keep working"
    );
    assert_eq!(http.batch(key, 2).await.status, StatusCode::OK);
    let unknown = format!(
        "e_{}_unknown00000_{}",
        tenancy.environment_id("staging"),
        "C".repeat(32)
    );
    assert_eq!(
        http.get("/api/facts", Some(&unknown)).await.status,
        StatusCode::UNAUTHORIZED,
        "unknown keys are still refused"
    );
}

async fn metrics_count_requests_and_rejections_per_environment(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[
            Env("staging", limits()),
            Env(
                "qa",
                LimitOverrides {
                    requests_per_minute: Some(1),
                    ..limits()
                },
            ),
        ],
        &[
            Key("rw", "staging", Access::ReadWrite),
            Key("qa", "qa", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let http = Http::new(&sidecar);
    http.get("/api/facts", Some(tenancy.key("rw"))).await;
    http.batch(tenancy.key("rw"), 5).await;
    http.send(Method::POST, "/api/batch", Some(tenancy.key("rw")), "[")
        .await;
    http.get("/api/facts", Some(tenancy.key("qa"))).await;
    http.get("/api/facts", Some(tenancy.key("qa"))).await;
    let text = metrics(&sidecar).await;
    let staging = r#"environment="team/acme/staging""#;
    let qa = r#"environment="team/acme/qa""#;
    for (series, value) in [
        (
            format!(r#"orgkeeper_sidecar_requests_total{{{staging},class="read"}}"#),
            1.0,
        ),
        (
            format!(r#"orgkeeper_sidecar_requests_total{{{staging},class="write"}}"#),
            1.0,
        ),
        (format!(r#"orgkeeper_sidecar_fact_writes_total{{{staging}}}"#), 5.0),
        (
            format!(r#"orgkeeper_sidecar_rejections_total{{{staging},reason="bad_request"}}"#),
            1.0,
        ),
        (format!(r#"orgkeeper_sidecar_requests_total{{{qa},class="read"}}"#), 1.0),
        (
            format!(r#"orgkeeper_sidecar_rejections_total{{{qa},reason="rate_limited_requests"}}"#),
            1.0,
        ),
        ("orgkeeper_sidecar_keys".to_owned(), 2.0),
        ("orgkeeper_sidecar_environments".to_owned(), 4.0),
    ] {
        assert_eq!(metric(&text, &series), value, "{series}\n{text}");
    }
}

on_both_backends!(
    reads_and_writes_reach_the_upstream_unchanged,
    requests_without_a_valid_key_get_401_and_never_reach_the_upstream,
    read_only_keys_read_but_every_write_is_403,
    too_many_facts_or_bytes_in_a_write_is_413,
    over_a_rate_limit_is_429_and_retry_after_is_honest,
    requests_beyond_the_concurrency_limit_are_429,
    a_revoked_key_is_refused_within_five_seconds,
    a_raised_limit_applies_without_a_restart,
    a_store_outage_keeps_known_keys_working,
    metrics_count_requests_and_rejections_per_environment,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_is_noticed_at_once_and_keys_older_than_the_bound_are_refused() {
    let postgres = OwnPostgres::start("sidecar-outage");
    let tenancy = Tenancy::new(
        Store::connect(&postgres.url).await.unwrap(),
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let staleness = Duration::from_secs(4);
    let mut options = Options::new(&upstream);
    options.settings.max_key_staleness = Some(staleness);
    let sidecar = start(&tenancy.store, options).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");
    assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::OK);

    postgres.stop();
    let stopped = std::time::Instant::now();
    // Refreshed every second, each poll bounded to half of that: noticed within about one interval, not
    // after the store pool's 10 s acquire timeout.
    wait_for("the sidecar to notice the outage", Duration::from_secs(3), || {
        matches!(sidecar.telemetry.health.get(), Readiness::Degraded(_))
    })
    .await;
    let noticed = stopped.elapsed();
    eprintln!("the outage was noticed after {noticed:?}");
    assert_eq!(metric(&metrics(&sidecar).await, "orgkeeper_sidecar_store_up"), 0.0);
    assert_eq!(
        http.get("/api/facts", Some(key)).await.status,
        StatusCode::OK,
        "within --max-key-staleness known keys keep working (noticed after {noticed:?})"
    );

    wait_for("the keys to go stale", staleness + Duration::from_secs(3), || {
        matches!(sidecar.telemetry.health.get(), Readiness::NotReady(_))
    })
    .await;
    let reply = http.get("/api/facts", Some(key)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.message().contains("--max-key-staleness (4 s)"),
        "{}",
        reply.message()
    );
    assert_eq!(reply.retry_after(), 1);
    let Readiness::NotReady(reason) = sidecar.telemetry.health.get() else {
        unreachable!()
    };
    assert!(reason.contains("has not reached its store"), "{reason}");
    let text = metrics(&sidecar).await;
    assert_eq!(metric(&text, "orgkeeper_sidecar_keys_stale"), 1.0);
    assert_eq!(
        metric(
            &text,
            r#"orgkeeper_sidecar_rejections_total{environment="team/acme/staging",reason="keys_stale"}"#
        ),
        1.0
    );
    let before = upstream.count();
    assert_eq!(http.batch(key, 1).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.count(), before, "nothing is forwarded on stale keys");
}

#[tokio::test]
async fn until_keys_are_loaded_every_request_is_503_and_readiness_says_why() {
    let store = support::sqlite().await;
    let upstream = Upstream::start().await;
    let sidecar = start(
        &store,
        Options {
            refresh: false,
            ..Options::new(&upstream)
        },
    )
    .await;
    let reply = Http::new(&sidecar)
        .get("/api/facts", Some(&format!("e_env_key_{}", "D".repeat(32))))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.message().contains("not loaded API keys"));
    assert_eq!(reply.retry_after(), 1);
    wait_for("readiness to be reported", Duration::from_secs(10), || {
        matches!(sidecar.telemetry.health.get(), Readiness::Starting(_))
    })
    .await;
    assert_eq!(upstream.count(), 0);
}

/// Each worker keeps its own share of the duration histogram and of the in-flight gauge; a scrape must
/// add every worker's, so that the figures are those of the whole sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_workers_the_latency_and_in_flight_metrics_count_every_workers_requests() {
    let tenancy = Tenancy::new(
        support::sqlite().await,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let mut options = Options::new(&upstream);
    options.settings.workers = 2;
    let sidecar = start(&tenancy.store, options).await;
    let key = tenancy.key("rw").to_owned();

    // Connections go to the workers in turn: two held at once are served by both.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (http, key) = (Http::new(&sidecar), key.clone());
            tokio::spawn(async move {
                http.send_with(Method::GET, "/api/facts", Some(&key), "", &[("x-test-hold", "1")])
                    .await
                    .status
            })
        })
        .collect();
    wait_for(
        "both held requests to reach the upstream",
        Duration::from_secs(10),
        || upstream.count() == 2,
    )
    .await;
    let text = metrics(&sidecar).await;
    assert_eq!(metric(&text, "orgkeeper_sidecar_in_flight_requests"), 2.0, "{text}");
    assert_eq!(
        metric(&text, "orgkeeper_sidecar_request_duration_seconds_count"),
        0.0,
        "{text}"
    );

    upstream.release();
    for request in held {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    for _ in 0..4 {
        assert_eq!(
            Http::new(&sidecar).get("/api/facts", Some(&key)).await.status,
            StatusCode::OK
        );
    }
    let text = metrics(&sidecar).await;
    assert_eq!(metric(&text, "orgkeeper_sidecar_in_flight_requests"), 0.0, "{text}");
    assert_eq!(
        metric(&text, "orgkeeper_sidecar_request_duration_seconds_count"),
        6.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"orgkeeper_sidecar_request_duration_seconds_bucket{le="+Inf"}"#),
        6.0,
        "{text}"
    );
    assert!(
        metric(&text, "orgkeeper_sidecar_request_duration_seconds_sum") > 0.0,
        "{text}"
    );
}
