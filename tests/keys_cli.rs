//! `orgkeeper keys revoke`, `expire` and `history` as a user runs them on a SQLite store: clear errors and
//! a non-zero exit for bad input with nothing changed, and the audit trail as JSON.

mod keys_support;
mod sidecar_support;
mod support;

use std::process::{Command, Output};

use keys_support::record;
use orgkeeper::domain::{Access, KeyState};
use orgkeeper::store::Store;
use sidecar_support::*;

fn keys(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .arg("keys")
        .args(args)
        .env("ORGKEEPER_DATABASE_URL", url)
        .env_remove("ORGKEEPER_ACTOR")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_expire_and_history_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orgkeeper.db").display());
    let store = Store::connect(&url).await.unwrap();
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[Key("backend", "staging", Access::ReadWrite)],
    )
    .await;
    let key_id = record(&store, "backend").await.key_id;
    let revision = store.revision().await.unwrap();

    let unknown = keys(&url, &["revoke", "nosuchkey000", "--reason", "typo"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no key with id \"nosuchkey000\""),
        "{}",
        stderr(&unknown)
    );
    let no_reason = keys(&url, &["revoke", &key_id]);
    assert!(!no_reason.status.success());
    assert!(stderr(&no_reason).contains("--reason"), "{}", stderr(&no_reason));
    let blank_reason = keys(&url, &["revoke", &key_id, "--reason", "  "]);
    assert!(!blank_reason.status.success());
    let past = keys(&url, &["expire", &key_id, "--at", "2020-01-01T00:00:00Z"]);
    assert!(!past.status.success());
    assert!(stderr(&past).contains("is in the past"), "{}", stderr(&past));
    let garbage = keys(&url, &["expire", &key_id, "--at", "next friday"]);
    assert!(
        stderr(&garbage).contains("not an RFC 3339 time"),
        "{}",
        stderr(&garbage)
    );
    assert_eq!(store.revision().await.unwrap(), revision, "bad input changed nothing");
    assert_eq!(record(&store, "backend").await.state, KeyState::Live);

    let expire = keys(
        &url,
        &["expire", &key_id, "--at", "2099-01-01T00:00:00Z", "--actor", "carol"],
    );
    assert!(expire.status.success(), "{}", stderr(&expire));
    let revoke = keys(
        &url,
        &["revoke", &key_id, "--reason", "leaked in a CI log", "--actor", "bob"],
    );
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let said = String::from_utf8_lossy(&revoke.stdout);
    assert!(said.contains("revoked by bob"), "{said}");
    let again = keys(&url, &["revoke", &key_id, "--reason", "again"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already revoked"));

    let history = keys(&url, &["history", &key_id, "-o", "json"]);
    assert!(history.status.success(), "{}", stderr(&history));
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let events: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    let issuer = orgkeeper::store::local_actor();
    assert_eq!(
        events,
        [
            ("issued", issuer.as_str()),
            ("expiry-set", "carol"),
            ("revoked-by-id", "bob")
        ]
    );
    assert_eq!(history[2]["reason"], "leaked in a CI log");
    assert_eq!(history[0]["apiKey"], "backend");
    let text = String::from_utf8_lossy(&keys(&url, &["history"]).stdout).into_owned();
    assert!(text.starts_with("TIME"), "{text}");
    assert!(!text.contains(tenancy.key("backend")), "the key never appears");

    let listed = keys(&url, &["list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["state"], "revoked");
    assert_eq!(listed[0]["revokedBy"], "bob");
    assert_eq!(listed[0]["expires"], "2099-01-01T00:00:00Z");
    let missing = keys(&url, &["history", "nosuchkey000"]);
    assert_eq!(missing.status.code(), Some(1));
}
