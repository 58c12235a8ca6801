//! Accuracy under load: many concurrent connections hammering one environment get exactly its budget of
//! requests and facts (one sidecar process), and other environments' traffic is unaffected.
//!
//! The exact tests stop the limiter's clock so that no budget refills during the hammering, which makes
//! "exactly the budget" a logical statement rather than a race against time. The real-clock test bounds
//! the refill by the time the test measured around the whole run.

mod sidecar_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use orgkeeper::domain::{Access, LimitOverrides};
use orgkeeper::sidecar::ManualClock;
use orgkeeper::store::Store;
use sidecar_support::*;

/// What one hammering client saw.
#[derive(Default)]
struct Tally {
    admitted: u64,
    refused: u64,
    facts: u64,
    /// Any other status: must stay 0.
    other: Vec<StatusCode>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.admitted += other.admitted;
        self.refused += other.refused;
        self.facts += other.facts;
        self.other.extend(other.other);
    }
}

/// `clients` concurrent clients, each on its own connections, each sending `requests` requests; request
/// `i` of a client is a write of `sizes[i % len]` facts (0 = a read).
async fn hammer(url: &str, key: &str, clients: usize, requests: usize, sizes: &'static [usize]) -> Tally {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, key) = (Http::to(url), key.to_owned());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for i in 0..requests {
                    let size = sizes[(c + i) % sizes.len()];
                    let reply = match size {
                        0 => http.get("/api/facts?predicate=has_role", Some(&key)).await,
                        1 => http.send(Method::POST, "/api/facts", Some(&key), &fact(i)).await,
                        n => http.batch(&key, n).await,
                    };
                    match reply.status {
                        StatusCode::OK => {
                            tally.admitted += 1;
                            tally.facts += size as u64;
                        }
                        StatusCode::TOO_MANY_REQUESTS => tally.refused += 1,
                        other => tally.other.push(other),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.add(task.await.unwrap());
    }
    total
}

/// Facts the upstream received from one key, counted from the bodies it got.
fn facts_received(upstream: &Upstream, key: &str) -> (u64, u64) {
    let bearer = format!("Bearer {key}");
    let mine: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.headers["authorization"] == bearer.as_str())
        .collect();
    let facts = mine
        .iter()
        .map(|r| match r.method {
            Method::GET => 0,
            _ => String::from_utf8_lossy(&r.body).matches("\"predicate\"").count() as u64,
        })
        .sum();
    (mine.len() as u64, facts)
}

async fn a_hammered_environment_gets_exactly_its_budget_and_no_other_is_affected(store: Store) {
    let requests_bound = LimitOverrides {
        requests_per_minute: Some(150),
        ..limits()
    };
    let facts_bound = LimitOverrides {
        fact_writes_per_minute: Some(400),
        ..limits()
    };
    let tenancy = Tenancy::new(
        store,
        &[
            Env("requests", requests_bound),
            Env("facts", facts_bound),
            Env("quiet", limits()),
        ],
        &[
            Key("requests", "requests", Access::ReadWrite),
            Key("facts", "facts", Access::ReadWrite),
            Key("quiet", "quiet", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let clock = ManualClock::default();
    let sidecar = start(
        &tenancy.store,
        Options {
            clock: Some(Arc::new(clock.clone())),
            ..Options::new(&upstream)
        },
    )
    .await;
    let url = sidecar.url.clone();
    let (requests_key, facts_key, quiet_key) = (tenancy.key("requests"), tenancy.key("facts"), tenancy.key("quiet"));

    // Both environments hammered at once, with reads and writes of several sizes, while a third one
    // sends a trickle of requests.
    let requests_run = hammer(&url, requests_key, 24, 30, &[0, 0, 3, 0, 1]);
    let facts_run = hammer(&url, facts_key, 24, 30, &[4, 1, 3, 0, 2]);
    let quiet_run = hammer(&url, quiet_key, 1, 40, &[0, 2]);
    let (requests_tally, facts_tally, quiet_tally) = tokio::join!(requests_run, facts_run, quiet_run);
    // A few 1-fact writes last: whatever remainder the mixed sizes left is taken, so the budget is spent.
    let http = Http::to(&url);
    let mut facts_tally = facts_tally;
    for i in 0..5 {
        if http
            .send(Method::POST, "/api/facts", Some(facts_key), &fact(i))
            .await
            .status
            == StatusCode::OK
        {
            facts_tally.admitted += 1;
            facts_tally.facts += 1;
        }
    }

    assert!(requests_tally.other.is_empty(), "{:?}", requests_tally.other);
    assert_eq!(requests_tally.admitted, 150, "exactly the request budget");
    assert_eq!(requests_tally.admitted + requests_tally.refused, 24 * 30);
    assert_eq!(
        facts_received(&upstream, requests_key).0,
        150,
        "and exactly that reached the upstream"
    );

    assert!(facts_tally.other.is_empty(), "{:?}", facts_tally.other);
    assert_eq!(facts_tally.facts, 400, "exactly the fact budget");
    let (_, received) = facts_received(&upstream, facts_key);
    assert_eq!(received, 400, "and exactly those facts reached the upstream");

    assert_eq!(quiet_tally.admitted, 40, "the quiet environment was never refused");

    // Time passes: a full minute brings each budget back whole.
    clock.advance(Duration::from_secs(60));
    let tally = hammer(&url, requests_key, 8, 30, &[0]).await;
    assert_eq!(tally.admitted, 150);
}

async fn with_a_running_clock_admissions_stay_within_the_budget_plus_its_refill(store: Store) {
    let tenancy = Tenancy::new(
        store,
        &[Env(
            "staging",
            LimitOverrides {
                requests_per_minute: Some(600), // one more every 100 ms
                ..limits()
            },
        )],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    let key = tenancy.key("rw").to_owned();
    let started = Instant::now();
    // Each client goes on until it has been refused 5 times, so the budget was certainly spent.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (http, key) = (Http::new(&sidecar), key.clone());
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (0u64, 0u64);
                while refused < 5 {
                    match http.get("/api/facts", Some(&key)).await.status {
                        StatusCode::OK => admitted += 1,
                        StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let refill = (elapsed.as_millis() / 100) as u64 + 1;
    assert!(admitted >= 600, "the whole budget is usable: {admitted}");
    assert!(
        admitted <= 600 + refill,
        "{admitted} admitted in {elapsed:?}: more than 600 plus {refill} refilled"
    );
    assert_eq!(upstream.count() as u64, admitted);
}

on_both_backends!(
    a_hammered_environment_gets_exactly_its_budget_and_no_other_is_affected,
    with_a_running_clock_admissions_stay_within_the_budget_plus_its_refill,
);
