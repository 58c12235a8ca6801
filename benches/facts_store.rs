//! Fact store benchmark: loads a million facts shaped like an Oso tenant (roles on organizations and
//! repositories, repository parents, team memberships, public flags) into one environment, then measures
//! the read shapes the clients send, on SQLite (a file) and, when ORGKEEPER_TEST_POSTGRES_URL is set,
//! PostgreSQL. Prints numbers; asserts nothing about time.
//!
//!   cargo bench --bench facts_store                          # 1,000,000 facts
//!   ORGKEEPER_BENCH_FACTS=100000 cargo bench --bench facts_store
//!   ORGKEEPER_BENCH_BACKENDS=postgres cargo bench --bench facts_store

#[path = "../tests/facts_support/mod.rs"]
mod facts_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use facts_support::*;
use orgkeeper::auth::KeyRing;
use orgkeeper::domain::facts::{Fact, FactChange, FactFilter};
use orgkeeper::facts::{FactsApp, FactsConfig, FactsMetrics, router};
use orgkeeper::store::{Backend, Store};
use orgkeeper::telemetry::Telemetry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

const USERS: usize = 100_000;
const ORGS: usize = 10_000;
const REPOS: usize = 50_000;
const TEAMS: usize = 5_000;
const ROLES: [&str; 4] = ["member", "admin", "owner", "viewer"];
const BATCH: usize = 1_000;

/// The generated tenant: `n` facts in fixed proportions.
fn generate(n: usize, rng: &mut StdRng) -> Vec<Fact> {
    let mut facts = Vec::with_capacity(n);
    let pick = |rng: &mut StdRng, kind: usize| -> Fact {
        let u = format!("user-{}", rng.random_range(0..USERS));
        let o = format!("org-{}", rng.random_range(0..ORGS));
        let r = format!("repo-{}", rng.random_range(0..REPOS));
        let t = format!("team-{}", rng.random_range(0..TEAMS));
        let role_name = ROLES[rng.random_range(0..ROLES.len())];
        match kind {
            0..60 => role(&u, role_name, &o),
            60..85 => fact("has_role", &[("User", &u), ("String", role_name), ("Repository", &r)]),
            85..90 => fact(
                "has_relation",
                &[("Repository", &r), ("String", "parent"), ("Organization", &o)],
            ),
            90..98 => fact("member_of", &[("User", &u), ("Team", &t)]),
            _ => fact("is_public", &[("Repository", &r), ("Boolean", "true")]),
        }
    };
    let mut i = 0;
    while facts.len() < n {
        facts.push(pick(rng, i % 100));
        i += 1;
    }
    facts
}

struct Stats {
    runs: usize,
    rows: usize,
    times: Vec<Duration>,
}

impl Stats {
    fn line(&self, backend: &str, shape: &str) {
        let mut sorted = self.times.clone();
        sorted.sort();
        let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
        let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
        println!(
            "| {backend:<8} | {shape:<52} | {:>5} | {:>8.1} | {:>8.3} | {:>8.3} | {:>8.3} |",
            self.runs,
            self.rows as f64 / self.runs as f64,
            ms(mean),
            ms(pct(0.5)),
            ms(pct(0.99)),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure<F, Fut>(runs: usize, mut run: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut stats = Stats {
        runs,
        rows: 0,
        times: Vec::with_capacity(runs),
    };
    for i in 0..runs {
        let start = Instant::now();
        stats.rows += run(i).await;
        stats.times.push(start.elapsed());
    }
    stats
}

async fn explain(store: &Store, env: &str, filter: &FactFilter) -> String {
    // The same WHERE clause the store builds for this shape, asked of the planner.
    let mut sql = String::from("SELECT id FROM facts WHERE environment_id = $1 AND predicate = $2");
    let mut binds = vec![env.to_owned(), filter.predicate.clone()];
    for (i, p) in filter.args.iter().enumerate().take(4) {
        if let Some(t) = &p.type_ {
            binds.push(t.clone());
            sql.push_str(&format!(" AND a{i}_type = ${}", binds.len()));
        }
        if let Some(id) = &p.id {
            binds.push(id.clone());
            sql.push_str(&format!(" AND a{i}_id = ${}", binds.len()));
        }
    }
    let prefix = match store.backend() {
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
        Backend::Postgres => "EXPLAIN ",
    };
    let mut query = sqlx::query::<sqlx::Any>(sqlx::AssertSqlSafe(format!("{prefix}{sql} ORDER BY id")));
    for b in binds {
        query = query.bind(b);
    }
    let rows = query.fetch_all(store.pool()).await.unwrap();
    use sqlx::Row;
    rows.iter()
        .map(|row| {
            let column = if store.backend() == Backend::Sqlite { 3 } else { 0 };
            row.try_get::<String, _>(column).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

async fn bench(backend: &str, store: Store, n: usize) {
    let tenancy = tenancy(&store).await;
    let env = tenancy.env("staging").to_owned();
    let mut rng = StdRng::seed_from_u64(42);
    let facts = generate(n, &mut rng);

    let start = Instant::now();
    let mut inserted = 0;
    for chunk in facts.chunks(BATCH) {
        inserted += store
            .write_facts(&env, &[FactChange::Insert(chunk.to_vec())])
            .await
            .unwrap()
            .inserted;
    }
    let load = start.elapsed();
    if backend == "sqlite" {
        sqlx::query::<sqlx::Any>("PRAGMA optimize")
            .execute(store.pool())
            .await
            .unwrap();
    } else {
        sqlx::query::<sqlx::Any>("ANALYZE facts")
            .execute(store.pool())
            .await
            .unwrap();
    }
    println!(
        "\n{backend}: loaded {inserted} distinct facts ({n} generated) in {:.1} s = {:.0} facts/s, batches of {BATCH}\n",
        load.as_secs_f64(),
        inserted as f64 / load.as_secs_f64()
    );
    println!(
        "| backend  | shape                                                | runs  | rows/q   | mean ms  | p50 ms   | p99 ms   |"
    );
    println!(
        "|----------|------------------------------------------------------|-------|----------|----------|----------|----------|"
    );

    let sample = |i: usize| &facts[(i * 7919) % facts.len()];
    let roles: Vec<&Fact> = facts
        .iter()
        .filter(|f| f.predicate == "has_role" && f.args[2].type_ == "Organization")
        .take(10_000)
        .collect();
    let role_at = |i: usize| roles[(i * 7919) % roles.len()];

    type Shape<'a> = Box<dyn Fn(usize) -> FactFilter + 'a>;
    let shapes: Vec<(&str, usize, Shape)> = vec![
        (
            "exact fact (all 3 args given)",
            500,
            Box::new(|i| {
                let f = role_at(i);
                query(
                    "has_role",
                    &[
                        (0, (&f.args[0]).into()),
                        (1, (&f.args[1]).into()),
                        (2, (&f.args[2]).into()),
                    ],
                )
            }),
        ),
        (
            "a user's roles: has_role(User:u, _, _)",
            500,
            Box::new(|i| query("has_role", &[(0, (&role_at(i).args[0]).into())])),
        ),
        (
            "an org's members: has_role(_, _, Organization:o)",
            500,
            Box::new(|i| query("has_role", &[(2, (&role_at(i).args[2]).into())])),
        ),
        (
            "admins of an org: has_role(User:_, \"admin\", Org:o)",
            500,
            Box::new(|i| {
                query(
                    "has_role",
                    &[
                        (0, p(Some("User"), None)),
                        (1, p(Some("String"), Some("admin"))),
                        (2, (&role_at(i).args[2]).into()),
                    ],
                )
            }),
        ),
        (
            "a repo's parent: has_relation(Repository:r, _, _)",
            500,
            Box::new(|i| {
                let repo = format!("repo-{}", (i * 7919) % REPOS);
                query("has_relation", &[(0, p(Some("Repository"), Some(&repo)))])
            }),
        ),
        (
            "a team's members: member_of(_, Team:t)",
            500,
            Box::new(|i| {
                query(
                    "member_of",
                    &[(1, p(Some("Team"), Some(&format!("team-{}", i % TEAMS))))],
                )
            }),
        ),
        (
            "miss: has_role(User:nobody, _, _)",
            500,
            Box::new(|_| query("has_role", &[(0, p(Some("User"), Some("nobody")))])),
        ),
        (
            "whole predicate: is_public (2% of facts)",
            5,
            Box::new(|_| all("is_public")),
        ),
    ];
    for (name, runs, shape) in &shapes {
        let stats = measure(*runs, |i| {
            let filter = shape(i);
            let store = store.clone();
            let env = env.clone();
            async move { store.query_facts(&env, &filter).await.unwrap().len() }
        })
        .await;
        stats.line(backend, name);
    }

    // The same reads through the HTTP router: query parsing, key check, JSON encoding.
    let keys = KeyRing::default();
    keys.refresh(&store).await.unwrap();
    let telemetry = Telemetry::new("bench");
    let metrics = FactsMetrics::new(&mut telemetry.registry.lock().unwrap());
    let api = router(FactsApp::new(store.clone(), keys, FactsConfig::default(), metrics));
    let bearer = tenancy.bearer("rw");
    type Path = fn(usize) -> String;
    let paths: [(&str, Path); 2] = [
        ("HTTP GET a user's roles", |i| {
            format!(
                "/api/facts?predicate=has_role&args.0.type=User&args.0.id=user-{}",
                (i * 7919) % USERS
            )
        }),
        ("HTTP GET an org's members", |i| {
            format!(
                "/api/facts?predicate=has_role&args.2.type=Organization&args.2.id=org-{}",
                (i * 7919) % ORGS
            )
        }),
    ];
    for (name, path) in paths {
        let stats = measure(500, |i| {
            let request = Request::get(path(i))
                .header(header::AUTHORIZATION, &bearer)
                .body(Body::empty())
                .unwrap();
            let api = api.clone();
            async move {
                let response = api.oneshot(request).await.unwrap();
                assert!(response.status().is_success());
                let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap();
                body.windows(12).filter(|w| w == b"\"predicate\":").count()
            }
        })
        .await;
        stats.line(backend, name);
    }

    // Writes on the loaded store: a mixed batch of 1,000 (500 new facts, 500 concrete deletes).
    let stats = measure(20, |i| {
        let inserts: Vec<Fact> = (0..500)
            .map(|j| role(&format!("new-{i}-{j}"), "member", "org-1"))
            .collect();
        let deletes: Vec<FactFilter> = (0..500).map(|j| exactly(sample(i * 500 + j))).collect();
        let store = store.clone();
        let env = env.clone();
        async move {
            let outcome = store
                .write_facts(&env, &[FactChange::Insert(inserts), FactChange::Delete(deletes)])
                .await
                .unwrap();
            (outcome.inserted + outcome.deleted) as usize
        }
    })
    .await;
    stats.line(backend, "batch: 500 inserts + 500 deletes (rows changed)");
    let stats = measure(20, |i| {
        let filter = pattern(
            "has_role",
            vec![
                p(Some("User"), Some(&format!("user-{}", i * 31))),
                p(None, None),
                p(None, None),
            ],
        );
        let store = store.clone();
        let env = env.clone();
        async move {
            store
                .write_facts(&env, &[FactChange::Delete(vec![filter])])
                .await
                .unwrap()
                .deleted as usize
        }
    })
    .await;
    stats.line(backend, "wildcard delete: has_role(User:u, _, _)");

    println!("\n{backend} query plans:");
    for (name, filter) in [
        (
            "a user's roles",
            query("has_role", &[(0, p(Some("User"), Some("user-1")))]),
        ),
        (
            "an org's members",
            query("has_role", &[(2, p(Some("Organization"), Some("org-1")))]),
        ),
        (
            "a team's members",
            query("member_of", &[(1, p(Some("Team"), Some("team-1")))]),
        ),
    ] {
        println!("  {name}: {}", explain(&store, &env, &filter).await);
    }
    store.close().await;
}

fn main() {
    let n: usize = std::env::var("ORGKEEPER_BENCH_FACTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let backends = std::env::var("ORGKEEPER_BENCH_BACKENDS").unwrap_or_else(|_| {
        if std::env::var("ORGKEEPER_TEST_POSTGRES_URL").is_ok() {
            "sqlite,postgres".into()
        } else {
            "sqlite".into()
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for backend in backends.split(',') {
            match backend.trim() {
                "sqlite" => {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                    bench("sqlite", Store::connect(&url).await.unwrap(), n).await;
                }
                "postgres" => bench("postgres", support::postgres().await, n).await,
                other => eprintln!("unknown backend {other:?} (use sqlite, postgres)"),
            }
        }
    });
}
