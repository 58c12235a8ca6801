//! The GitHub account check against a local server answering as GitHub's REST API does (fixtures in
//! tests/fixtures/identity/github/): existing and unknown users, case differences, organization
//! membership, ETag revalidation, rate limits (nothing is sent before the reset), 5xx, timeouts, bad
//! tokens, and an account that appears later. The token never shows in a verdict or a log line.

mod identity_support;

use std::time::{Duration, Instant};

use identity_support::{FakeProvider, Fixture, Logs, fixture};
use orgkeeper::domain::{Account, Verdict};
use orgkeeper::identity::http::{CacheTtl, Credential, base_url};
use orgkeeper::identity::{GithubDirectory, GithubSettings};
use secrecy::SecretString;

const TOKEN: &str = "ghp_TESTtokenThatMustNeverLeak0123456789";

fn github(server: &FakeProvider, organization: Option<&str>, ttl: CacheTtl, timeout: Duration) -> GithubDirectory {
    GithubDirectory::new(GithubSettings {
        api_url: base_url(&format!("{}/api/v3", server.url())).unwrap(),
        token: Some(Credential::Fixed(SecretString::from(TOKEN))),
        organization: organization.map(str::to_owned),
        timeout,
        ttl,
    })
    .unwrap()
}

const LONG: CacheTtl = CacheTtl {
    positive: Duration::from_secs(600),
    negative: Duration::from_secs(600),
};

const SHORT: CacheTtl = CacheTtl {
    positive: Duration::from_millis(200),
    negative: Duration::from_millis(200),
};

/// GitHub's answer for a user, with that user's login.
fn user(login: &str) -> Fixture {
    let mut answer = fixture("github/user");
    if let Some(body) = answer.body.as_mut() {
        body["login"] = login.into();
    }
    answer
}

fn message(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Refused { message } | Verdict::Unverified { message } => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn an_existing_user_exists_and_is_revalidated_with_its_etag() {
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/octocat", fixture("github/user"));
    let github = github(&server, None, SHORT, Duration::from_secs(5));

    assert_eq!(github.check("octocat").await, Verdict::Exists);
    assert_eq!(github.check("octocat").await, Verdict::Exists);
    let sent = server.requests_to("/api/v3/users/octocat");
    assert_eq!(sent.len(), 1, "the second check is answered from the cache");
    let first = &sent[0];
    assert_eq!(first.headers["authorization"], format!("Bearer {TOKEN}").as_str());
    assert_eq!(first.headers["accept"], "application/vnd.github+json");
    assert_eq!(first.headers["x-github-api-version"], "2022-11-28");
    assert!(first.headers["user-agent"].to_str().unwrap().starts_with("orgkeeper/"));
    assert!(!first.headers.contains_key("if-none-match"));

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(github.check("octocat").await, Verdict::Exists);
    let sent = server.requests_to("/api/v3/users/octocat");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].headers["if-none-match"],
        fixture("github/user").headers["etag"].as_str(),
        "an expired answer is re-checked conditionally"
    );
    assert_eq!(sent[1].answered, 304);
}

#[tokio::test]
async fn an_unknown_user_is_refused_with_githubs_answer() {
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/nobody-here", fixture("github/not-found"));
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let verdict = github.check("nobody-here").await;
    assert!(matches!(verdict, Verdict::Refused { .. }), "{verdict:?}");
    assert!(
        message(&verdict).contains("GitHub has no user nobody-here (404"),
        "{verdict:?}"
    );
    // Negative answers are cached too.
    github.check("nobody-here").await;
    assert_eq!(server.requests_to("/api/v3/users/nobody-here").len(), 1);
}

#[tokio::test]
async fn logins_match_whatever_their_case() {
    let server = FakeProvider::start().await;
    // GitHub answers with the login's own spelling ("MonaLisa") for any case asked.
    server.answer("/api/v3/users/monalisa", fixture("github/user-mixed-case"));
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let account = Account::github("MonaLisa").unwrap();
    assert_eq!(account.login(), "monalisa");
    assert_eq!(github.check(account.login()).await, Verdict::Exists);
}

#[tokio::test]
async fn an_organization_login_is_not_a_person() {
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/github", fixture("github/organization"));
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let verdict = github.check("github").await;
    assert!(
        message(&verdict).contains("is a GitHub organization, not a user"),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn only_members_of_the_organization_may_join() {
    let server = FakeProvider::start().await;
    for login in ["octocat", "outsider", "hidden"] {
        server.answer(&format!("/api/v3/users/{login}"), user(login));
    }
    server.answer("/api/v3/orgs/acme/members/octocat", fixture("github/member"));
    server.answer("/api/v3/orgs/acme/members/outsider", fixture("github/not-member"));
    server.answer("/api/v3/orgs/acme/members/hidden", fixture("github/membership-hidden"));
    let github = github(&server, Some("acme"), LONG, Duration::from_secs(5));

    assert_eq!(github.check("octocat").await, Verdict::Exists);
    let outsider = github.check("outsider").await;
    assert!(matches!(outsider, Verdict::Refused { .. }), "{outsider:?}");
    assert!(
        message(&outsider).contains("not a member of the organization acme"),
        "{outsider:?}"
    );
    // 302: the token cannot see private members; that says nothing about the person.
    let hidden = github.check("hidden").await;
    assert!(matches!(hidden, Verdict::Unverified { .. }), "{hidden:?}");
    assert!(message(&hidden).contains("read:org"), "{hidden:?}");
    assert_eq!(
        server.requests_to("/api/v3/orgs/acme/members/hidden")[0].answered,
        302,
        "the redirect is an answer, not followed"
    );
}

#[tokio::test]
async fn a_rate_limit_holds_every_request_until_the_reset_time() {
    let server = FakeProvider::start().await;
    // x-ratelimit-remaining: 0 and a reset 3 s away; after the reset GitHub answers again.
    server.answer_in_turn(
        "/api/v3/users/octocat",
        vec![fixture("github/rate-limited"), fixture("github/user")],
    );
    server.answer("/api/v3/users/other", user("other"));
    let github = github(&server, None, LONG, Duration::from_secs(5));

    let started = Instant::now();
    let limited = github.check("octocat").await;
    assert!(matches!(limited, Verdict::Unverified { .. }), "{limited:?}");
    let text = message(&limited);
    assert!(text.contains("GitHub rate limit reached (403"), "{text}");
    assert!(text.contains("API rate limit exceeded"), "GitHub's own words: {text}");
    assert!(text.contains("next check at "), "{text}");

    // Until the reset nothing is sent, for this login or any other.
    let mut held = 0;
    while started.elapsed() < Duration::from_secs(2) {
        for login in ["octocat", "other"] {
            let verdict = github.check(login).await;
            assert!(message(&verdict).contains("next check at"), "{verdict:?}");
            held += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held > 10);
    assert_eq!(server.requests().len(), 1, "no request before the reset time");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(github.check("octocat").await, Verdict::Exists);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_secondary_rate_limit_waits_for_retry_after() {
    let server = FakeProvider::start().await;
    server.answer_in_turn(
        "/api/v3/users/octocat",
        vec![fixture("github/secondary-rate-limit"), fixture("github/user")],
    );
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let limited = github.check("octocat").await;
    assert!(message(&limited).contains("secondary rate limit"), "{limited:?}");
    assert!(message(&github.check("octocat").await).contains("next check at"));
    assert_eq!(server.requests().len(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(github.check("octocat").await, Verdict::Exists);
}

#[tokio::test]
async fn server_errors_are_unverified_and_asked_again() {
    let server = FakeProvider::start().await;
    server.answer_in_turn(
        "/api/v3/users/octocat",
        vec![fixture("github/server-error"), fixture("github/user")],
    );
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let failing = github.check("octocat").await;
    assert!(matches!(failing, Verdict::Unverified { .. }), "{failing:?}");
    assert!(message(&failing).contains("502 Bad Gateway"), "{failing:?}");
    assert_eq!(
        github.check("octocat").await,
        Verdict::Exists,
        "failures are not cached"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/octocat", fixture("github/user"));
    server.delay("/api/v3/users/octocat", Duration::from_secs(3));
    let github = github(&server, None, LONG, Duration::from_millis(300));
    let started = Instant::now();
    let verdict = github.check("octocat").await;
    assert!(started.elapsed() < Duration::from_secs(2), "gave up at the timeout");
    assert!(matches!(verdict, Verdict::Unverified { .. }), "{verdict:?}");
    assert!(message(&verdict).contains("no answer within 0.3s"), "{verdict:?}");
}

#[tokio::test]
async fn an_account_that_appears_later_is_found_after_the_negative_ttl() {
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/newcomer", fixture("github/not-found"));
    let github = github(&server, None, SHORT, Duration::from_secs(5));
    assert!(matches!(github.check("newcomer").await, Verdict::Refused { .. }));
    server.answer("/api/v3/users/newcomer", user("newcomer"));
    assert!(
        matches!(github.check("newcomer").await, Verdict::Refused { .. }),
        "still the cached answer"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(github.check("newcomer").await, Verdict::Exists);
}

#[tokio::test]
async fn the_token_never_shows_in_verdicts_or_logs() {
    let logs = Logs::default();
    let _guard = logs.install();
    let server = FakeProvider::start().await;
    server.answer("/api/v3/users/octocat", fixture("github/bad-credentials"));
    server.answer("/api/v3/users/limited", fixture("github/rate-limited"));
    let github = github(&server, None, LONG, Duration::from_secs(5));
    let rejected = github.check("octocat").await;
    assert!(
        message(&rejected).contains("GitHub rejected the token (401"),
        "{rejected:?}"
    );
    assert!(message(&rejected).contains("Bad credentials"));
    let limited = github.check("limited").await;
    let everything = format!("{rejected:?} {limited:?} {}", logs.text());
    assert!(
        server.requests()[0].headers["authorization"]
            .to_str()
            .unwrap()
            .contains(TOKEN)
    );
    assert!(!everything.contains(TOKEN), "the token leaked: {everything}");
    assert!(!everything.contains("ghp_"), "part of the token leaked");
}

#[tokio::test]
async fn a_rotated_token_file_is_used_without_a_restart() {
    let server = FakeProvider::start().await;
    server.answer("/users/octocat", user("octocat"));
    server.answer("/users/monalisa", user("monalisa"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "ghp_first\n").unwrap();
    let github = GithubDirectory::new(GithubSettings {
        api_url: base_url(&server.url()).unwrap(),
        token: Some(Credential::file(file.clone()).unwrap()),
        organization: None,
        timeout: Duration::from_secs(5),
        ttl: LONG,
    })
    .unwrap();
    assert_eq!(github.check("octocat").await, Verdict::Exists);
    // The kubelet updates a mounted Secret's files in place.
    std::fs::write(&file, "ghp_second\n").unwrap();
    assert_eq!(github.check("monalisa").await, Verdict::Exists);
    let sent: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, ["Bearer ghp_first", "Bearer ghp_second"]);

    std::fs::write(&file, "").unwrap();
    assert!(Credential::file(file).unwrap_err().contains("is empty"));
}
