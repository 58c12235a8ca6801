//! The Google Workspace account check against a local server answering as Google's OAuth 2.0 token endpoint
//! and Admin SDK Directory API do (fixtures in tests/fixtures/identity/google/): the signed service-account
//! assertion (verified with the key's public half), token reuse, active, suspended and unknown users, token
//! endpoint failures, 401/403/429/5xx, timeouts. Neither the private key nor an access token ever shows in a
//! verdict, an error or a log line.

mod identity_support;

use std::time::{Duration, Instant};

use identity_support::{FakeProvider, Logs, fixture, fixtures_dir};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orgkeeper::domain::Verdict;
use orgkeeper::identity::google::{SCOPE, ServiceAccountKey};
use orgkeeper::identity::http::{CacheTtl, base_url};
use orgkeeper::identity::{GoogleDirectory, GoogleSettings};
use serde::Deserialize;

const ADMIN: &str = "admin@example.com";
const ACCESS_TOKEN: &str = "ya29.c.TEST-ACCESS-TOKEN-do-not-leak-0123456789";
const USERS: &str = "/admin/directory/v1/users";

fn key_file_text(server: &FakeProvider) -> String {
    let text = std::fs::read_to_string(fixtures_dir().join("google/test-service-account.json")).unwrap();
    let mut key: serde_json::Value = serde_json::from_str(&text).unwrap();
    key["token_uri"] = format!("{}/token", server.url()).into();
    key.to_string()
}

fn google(server: &FakeProvider, timeout: Duration) -> GoogleDirectory {
    GoogleDirectory::new(GoogleSettings {
        directory_url: base_url(&server.url()).unwrap(),
        key: ServiceAccountKey::parse(&key_file_text(server), "test-service-account.json").unwrap(),
        admin_subject: ADMIN.to_owned(),
        timeout,
        ttl: CacheTtl {
            positive: Duration::from_secs(600),
            negative: Duration::from_millis(200),
        },
    })
    .unwrap()
}

fn message(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Refused { message } | Verdict::Unverified { message } => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

#[tokio::test]
async fn an_active_user_exists_and_the_token_is_reused_until_it_expires() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer(&format!("{USERS}/liz@example.com"), fixture("google/user"));
    server.answer(&format!("{USERS}/first.last+tag@example.com"), fixture("google/user"));
    let google = google(&server, Duration::from_secs(5));

    assert_eq!(google.check("liz@example.com").await, Verdict::Exists);
    assert_eq!(google.check("first.last+tag@example.com").await, Verdict::Exists);
    let tokens = server.requests_to("/token");
    assert_eq!(tokens.len(), 1, "one access token for both look-ups");

    // The assertion is what Google's service-account flow asks for, signed with the key file's key.
    let form: Vec<(String, String)> = serde_urlencoded_pairs(&tokens[0].body);
    assert_eq!(
        form[0],
        (
            "grant_type".into(),
            "urn:ietf:params:oauth:grant-type:jwt-bearer".into()
        )
    );
    assert_eq!(form[1].0, "assertion");
    let public = std::fs::read(fixtures_dir().join("google/test-service-account.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", server.url())]);
    let decoded = jsonwebtoken::decode::<Claims>(&form[1].1, &DecodingKey::from_rsa_pem(&public).unwrap(), &validation)
        .expect("an assertion signed with the service account's key");
    assert_eq!(
        decoded.header.kid.as_deref(),
        Some("5f1c0ffee0000000000000000000000000000001")
    );
    let claims = decoded.claims;
    assert_eq!(claims.iss, "orgkeeper-directory@orgkeeper-test.iam.gserviceaccount.com");
    assert_eq!(claims.sub, ADMIN);
    assert_eq!(claims.scope, SCOPE);
    assert_eq!(claims.aud, format!("{}/token", server.url()));
    assert_eq!(claims.exp - claims.iat, 3600);

    let lookups = server.requests_to(&format!("{USERS}/first.last+tag@example.com"));
    assert_eq!(
        lookups[0].headers["authorization"],
        format!("Bearer {ACCESS_TOKEN}").as_str()
    );
}

fn serde_urlencoded_pairs(body: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn suspended_and_unknown_users_are_refused() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer(&format!("{USERS}/sam@example.com"), fixture("google/user-suspended"));
    server.answer(&format!("{USERS}/ghost@example.com"), fixture("google/not-found"));
    let google = google(&server, Duration::from_secs(5));

    let suspended = google.check("sam@example.com").await;
    assert!(matches!(suspended, Verdict::Refused { .. }), "{suspended:?}");
    assert!(message(&suspended).contains("is suspended (ADMIN)"), "{suspended:?}");
    let unknown = google.check("ghost@example.com").await;
    assert!(matches!(unknown, Verdict::Refused { .. }), "{unknown:?}");
    assert!(
        message(&unknown).contains("Google Workspace has no user ghost@example.com (404: Resource Not Found: userKey)"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_user_created_later_is_found_after_the_negative_ttl() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    let path = format!("{USERS}/liz@example.com");
    server.answer(&path, fixture("google/not-found"));
    let google = google(&server, Duration::from_secs(5));
    assert!(matches!(google.check("liz@example.com").await, Verdict::Refused { .. }));
    server.answer(&path, fixture("google/user"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(google.check("liz@example.com").await, Verdict::Exists);
}

#[tokio::test]
async fn token_endpoint_failures_are_reported_and_nothing_is_looked_up() {
    for (answer, expected) in [
        (
            "google/token-invalid-grant",
            "400 Bad Request: invalid_grant Invalid JWT Signature.",
        ),
        (
            "google/token-unauthorized-client",
            "401 Unauthorized: unauthorized_client Client is unauthorized",
        ),
    ] {
        let server = FakeProvider::start().await;
        server.answer("/token", fixture(answer));
        server.answer(&format!("{USERS}/liz@example.com"), fixture("google/user"));
        let google = google(&server, Duration::from_secs(5));
        let verdict = google.check("liz@example.com").await;
        assert!(matches!(verdict, Verdict::Unverified { .. }), "{verdict:?}");
        assert!(
            message(&verdict).contains("Google's token endpoint refused the service account"),
            "{verdict:?}"
        );
        assert!(message(&verdict).contains(expected), "{verdict:?}");
        assert!(server.requests_to(&format!("{USERS}/liz@example.com")).is_empty());
    }
}

#[tokio::test]
async fn directory_errors_follow_the_published_api() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer(&format!("{USERS}/a@example.com"), fixture("google/forbidden"));
    server.answer_in_turn(
        &format!("{USERS}/b@example.com"),
        vec![fixture("google/server-error"), fixture("google/user")],
    );
    let google = google(&server, Duration::from_secs(5));

    let forbidden = google.check("a@example.com").await;
    assert!(
        message(&forbidden).contains("403: Not Authorized to access this resource/api"),
        "{forbidden:?}"
    );
    assert!(message(&forbidden).contains("domain-wide delegation"), "{forbidden:?}");
    let failing = google.check("b@example.com").await;
    assert!(matches!(failing, Verdict::Unverified { .. }), "{failing:?}");
    assert!(message(&failing).contains("503 Service Unavailable"), "{failing:?}");
    assert_eq!(
        google.check("b@example.com").await,
        Verdict::Exists,
        "failures are not cached"
    );
}

#[tokio::test]
async fn a_rejected_access_token_is_replaced() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer_in_turn(
        &format!("{USERS}/liz@example.com"),
        vec![fixture("google/unauthorized"), fixture("google/user")],
    );
    let google = google(&server, Duration::from_secs(5));
    let rejected = google.check("liz@example.com").await;
    assert!(
        message(&rejected).contains("rejected the access token (401"),
        "{rejected:?}"
    );
    assert_eq!(google.check("liz@example.com").await, Verdict::Exists);
    assert_eq!(server.requests_to("/token").len(), 2, "a new token after the 401");
}

#[tokio::test]
async fn a_quota_error_holds_requests_for_retry_after() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer_in_turn(
        &format!("{USERS}/liz@example.com"),
        vec![fixture("google/rate-limited"), fixture("google/user")],
    );
    let google = google(&server, Duration::from_secs(5));
    let limited = google.check("liz@example.com").await;
    assert!(
        message(&limited).contains("quota reached (429: Quota exceeded"),
        "{limited:?}"
    );
    assert!(message(&google.check("liz@example.com").await).contains("next check at"));
    assert_eq!(server.requests_to(&format!("{USERS}/liz@example.com")).len(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(google.check("liz@example.com").await, Verdict::Exists);
}

#[tokio::test]
async fn slow_endpoints_time_out() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.delay("/token", Duration::from_secs(3));
    let google = google(&server, Duration::from_millis(300));
    let started = Instant::now();
    let verdict = google.check("liz@example.com").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(message(&verdict).contains("no answer within 0.3s"), "{verdict:?}");
}

#[tokio::test]
async fn key_and_tokens_never_show_in_verdicts_errors_or_logs() {
    let logs = Logs::default();
    let _guard = logs.install();
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    server.answer(&format!("{USERS}/liz@example.com"), fixture("google/unauthorized"));
    server.answer(&format!("{USERS}/sam@example.com"), fixture("google/user-suspended"));
    let google = google(&server, Duration::from_secs(5));
    let mut seen = Vec::new();
    seen.push(format!("{:?}", google.check("liz@example.com").await));
    seen.push(format!("{:?}", google.check("sam@example.com").await));

    // Broken key files: the errors name the file, never its content.
    let text = key_file_text(&server);
    let key: serde_json::Value = serde_json::from_str(&text).unwrap();
    let private_key = key["private_key"].as_str().unwrap().to_owned();
    let mut wrong_type = key.clone();
    wrong_type["type"] = "authorized_user".into();
    let mut bad_key = key.clone();
    bad_key["private_key"] = private_key.replace("MII", "XXX").into();
    for broken in [
        wrong_type.to_string(),
        bad_key.to_string(),
        text[..text.len() / 2].to_owned(),
    ] {
        match ServiceAccountKey::parse(&broken, "key.json") {
            Ok(_) => panic!("a broken key file was accepted"),
            Err(error) => seen.push(error.to_string()),
        }
    }
    seen.push(logs.text());
    let everything = seen.join("\n");
    assert!(everything.contains("key.json"));
    let key_body: String = private_key.lines().nth(1).unwrap().to_owned();
    for secret in [ACCESS_TOKEN, "ya29.", &key_body, "PRIVATE KEY"] {
        assert!(!everything.contains(secret), "{secret:?} leaked: {everything}");
    }
}
