//! End-to-end tests of the account directory in `orgkeeper controller` against a real kube-apiserver: accounts
//! declared in a ConfigMap, and GitHub checked against a local server answering as GitHub's REST API does
//! (fixtures in tests/fixtures/identity/github/), both bring Users to Ready; an unknown login stays
//! `UnknownAccount` with GitHub's answer; a rate limit is reported with its reset time and waited out; the
//! token never shows in statuses or events.
//!
//! Needs `ORGKEEPER_TEST_KUBECONFIG` (see tests/e2e/harness.rs).

mod identity_support;
mod support;

#[path = "e2e/harness.rs"]
mod harness;

use harness::*;
use identity_support::{FakeProvider, Fixture, fixture};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use orgkeeper::crd::User;

const TOKEN: &str = "ghp_E2EtokenThatMustNeverLeak1122334455";

fn account_list(namespace: &str, lines: &[&str]) -> String {
    let indented: String = lines.iter().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: accounts\n  namespace: {namespace}\n  labels:\n    orgkeeper.dev/accounts: \"true\"\ndata:\n  accounts: |\n{indented}"
    )
}

fn github_user(login: &str) -> Fixture {
    let mut answer = fixture("github/user");
    if let Some(body) = answer.body.as_mut() {
        body["login"] = login.into();
    }
    answer
}

fn ready_message(user: &User) -> String {
    user.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_accounts_bring_users_to_ready() {
    let ns = TestNamespace::create("declared");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(
        &ns,
        &store,
        Options::default().with("--declared-accounts-namespace", &ns.name),
    );
    ns.apply_ok(&account_list(&ns.name, &["# the team", "github:alice-declared"]));
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        user("alice", "acme", "Alice-Declared"),
        user("mallory", "acme", "mallory-undeclared"),
    ]));

    let client = ns.cluster.client().await;
    let users: Api<User> = ns.api(&client);
    let alice = wait_reason(&users, "alice", "Reconciled").await;
    assert_eq!(
        alice.status.as_ref().unwrap().account.as_deref(),
        Some("github:alice-declared")
    );
    let mallory = wait_reason(&users, "mallory", "UnknownAccount").await;
    assert!(ready_message(&mallory).contains("github:mallory-undeclared is not an existing account"));

    // Declaring the account in Git (the ConfigMap) is all it takes.
    ns.apply_ok(&account_list(
        &ns.name,
        &["github:alice-declared", "github:mallory-undeclared"],
    ));
    wait_reason(&users, "mallory", "Reconciled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_decides_who_exists_and_its_rate_limit_is_waited_out() {
    let server = FakeProvider::start().await;
    server.answer("/users/octocat", github_user("octocat"));
    server.answer("/users/ghost-login", fixture("github/not-found"));
    // Rate limited for 4 s, then GitHub answers again.
    server.answer_in_turn(
        "/users/late-login",
        vec![
            fixture("github/rate-limited").with_header("x-ratelimit-reset", "now+4"),
            github_user("late-login"),
        ],
    );
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();

    let ns = TestNamespace::create("github");
    let store = TestStore::new().await;
    let controller = ControllerProcess::start(
        &ns,
        &store,
        Options::default()
            .with("--check-github", "true")
            .with("--github-api-url", &server.url())
            .with("--github-token-file", token_file.to_str().unwrap())
            .with("--account-negative-cache-ttl", "1s")
            .with("--account-cache-ttl", "2s")
            // A Ready User is looked at again at its resync: that is when a deleted account is noticed.
            .with("--resync-interval", "5s"),
    );
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        user("octo", "acme", "OctoCat"),
        user("ghost", "acme", "ghost-login"),
    ]));
    let client = ns.cluster.client().await;
    let users: Api<User> = ns.api(&client);
    wait_reason(&users, "octo", "Reconciled").await;
    let ghost = wait_reason(&users, "ghost", "UnknownAccount").await;
    assert!(
        ready_message(&ghost).contains("GitHub has no user ghost-login (404 Not Found"),
        "{}",
        ready_message(&ghost)
    );

    // The rate limit: said in status, with the time of the next check, and nothing sent before it.
    ns.apply_ok(&user("late", "acme", "late-login"));
    let late = wait_reason(&users, "late", "AccountUnverified").await;
    assert!(
        ready_message(&late).contains("GitHub rate limit reached (403"),
        "{}",
        ready_message(&late)
    );
    assert!(
        ready_message(&late).contains("next check at"),
        "{}",
        ready_message(&late)
    );
    wait_reason(&users, "late", "Reconciled").await;
    let rate_limited = server.requests().iter().filter(|r| r.answered == 403).count();
    assert_eq!(rate_limited, 1, "one rate-limited answer, then silence until the reset");

    // The unknown login comes into existence on GitHub.
    server.answer("/users/ghost-login", github_user("ghost-login"));
    wait_reason(&users, "ghost", "Reconciled").await;

    // The account is deleted on GitHub: the User says so, and stays in the organization.
    server.answer("/users/octocat", fixture("github/not-found"));
    let gone = wait_reason(&users, "octo", "UnknownAccount").await;
    assert!(
        ready_message(&gone).contains("no longer an existing account: GitHub has no user octocat"),
        "{}",
        ready_message(&gone)
    );
    let stored = store
        .open()
        .await
        .load_organizations(&[orgkeeper::domain::OrgKey::new(&ns.name, "acme")])
        .await
        .unwrap();
    let members = &stored.values().next().unwrap().users;
    assert!(
        members.iter().any(|u| u.account.login() == "octocat"),
        "nothing is removed"
    );

    // The token went to GitHub and nowhere else.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {TOKEN}").as_str())
    );
    let statuses = serde_json::to_string(&users.list(&Default::default()).await.unwrap().items).unwrap();
    let events: Api<Event> = ns.api(&client);
    let events = serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    for text in [statuses, events] {
        assert!(
            !text.contains(TOKEN) && !text.contains("ghp_"),
            "the token leaked: {text}"
        );
    }
    let log = controller.log_text();
    assert!(!log.contains(TOKEN), "the token leaked into the controller's log");
}
