//! `orgkeeper plan/apply` with the account directory, as a user runs them: accounts declared in a ConfigMap
//! of the manifests folder, GitHub checked against a local server answering as GitHub does, and the order
//! of the chain (declared, then the provider, then the local registry only for providers not checked).

mod identity_support;

use std::fs;
use std::process::{Command, Output};

use identity_support::{FakeProvider, fixture};
use tempfile::TempDir;

const TOKEN: &str = "ghp_CLItokenThatMustNeverLeak9876543210";

const ORG: &str = "apiVersion: orgkeeper.dev/v1alpha1
kind: Organization
metadata:
  name: acme
  namespace: team
spec:
  displayName: Acme
";

fn user(name: &str, github: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: User
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
  github: {github}
  role: Member
"
    )
}

fn account_list(lines: &str) -> String {
    let indented: String = lines.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: people
  namespace: orgkeeper-system
  labels:
    orgkeeper.dev/accounts: \"true\"
data:
  accounts: |
{indented}"
    )
}

struct Project {
    dir: TempDir,
}

impl Project {
    fn new(documents: &[String]) -> Self {
        let dir = TempDir::new().unwrap();
        fs::create_dir(dir.path().join("manifests")).unwrap();
        fs::write(dir.path().join("manifests/org.yaml"), documents.join("---\n")).unwrap();
        fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Project { dir }
    }

    fn write(&self, file: &str, text: &str) {
        fs::write(self.dir.path().join("manifests").join(file), text).unwrap();
    }

    /// Runs orgkeeper off the async runtime, so the fake provider keeps answering meanwhile.
    async fn run(&self, args: &[&str]) -> Output {
        let dir = self.dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
                .args(&args)
                .env(
                    "ORGKEEPER_DATABASE_URL",
                    format!("sqlite://{}", dir.join("store.db").display()),
                )
                .env("ORGKEEPER_SECRETS_DIR", dir.join("secrets"))
                .env("ORGKEEPER_MANIFESTS", dir.join("manifests"))
                .env("ORGKEEPER_LOG_LEVEL", "trace")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_ne!(output.status.code(), Some(101), "orgkeeper panicked: {}", text(&output));
        output
    }

    async fn github(&self, command: &str, server: &FakeProvider) -> Output {
        let token = self.dir.path().join("token");
        self.run(&[
            command,
            "--check-github",
            "--github-api-url",
            &server.url(),
            "--github-token-file",
            token.to_str().unwrap(),
        ])
        .await
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn accounts_declared_in_the_manifests_let_users_join() {
    let project = Project::new(&[ORG.into(), user("alice", "Alice"), user("bob", "bob")]);
    let without = project.run(&["plan"]).await;
    assert_eq!(without.status.code(), Some(1), "{}", text(&without));
    assert!(
        text(&without).contains("User team/alice: UnknownAccount"),
        "{}",
        text(&without)
    );

    project.write(
        "accounts.yaml",
        &account_list("# the team\ngithub:alice\ngithub:BOB  # lead\n"),
    );
    let planned = project.run(&["plan"]).await;
    assert_eq!(planned.status.code(), Some(2), "changes to apply: {}", text(&planned));
    assert!(!text(&planned).contains("UnknownAccount"), "{}", text(&planned));
    let applied = project.run(&["apply"]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(
        project.run(&["plan"]).await.status.code(),
        Some(0),
        "applying twice changes nothing"
    );
}

#[tokio::test]
async fn a_line_that_is_not_an_account_is_an_error_naming_where_it_is() {
    let project = Project::new(&[ORG.into(), user("alice", "alice")]);
    project.write("accounts.yaml", &account_list("github:alice\nalice@example.com\n"));
    let output = project.run(&["apply"]).await;
    assert_eq!(output.status.code(), Some(1));
    let said = text(&output);
    assert!(
        said.contains("accounts.yaml:1: ConfigMap orgkeeper-system/people: data.accounts: line 2:"),
        "{said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
}

#[tokio::test]
async fn github_decides_github_accounts_and_declared_lists_come_first() {
    let server = FakeProvider::start().await;
    server.answer("/users/octocat", fixture("github/user"));
    server.answer("/users/nobody", fixture("github/not-found"));
    let project = Project::new(&[
        ORG.into(),
        user("octo", "OctoCat"),
        user("nobody", "nobody"),
        user("robot", "release-bot"),
    ]);
    project.write("accounts.yaml", &account_list("github:release-bot\n"));
    // A registry row does not override GitHub's answer once GitHub is checked.
    assert!(
        project
            .run(&["accounts", "add", "github:nobody"])
            .await
            .status
            .success()
    );

    let output = project.github("plan", &server).await;
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("User team/nobody: UnknownAccount"), "{said}");
    assert!(said.contains("GitHub has no user nobody (404 Not Found"), "{said}");
    assert!(!said.contains("User team/octo: UnknownAccount"), "{said}");
    assert!(!said.contains("User team/robot"), "declared: {said}");
    assert!(
        server.requests_to("/users/release-bot").is_empty(),
        "a declared account is not looked up"
    );
    assert_eq!(
        server.requests_to("/users/octocat")[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert!(!said.contains(TOKEN), "the token leaked into the output");

    // Without the GitHub check the registry row counts again.
    let offline = project.run(&["plan"]).await;
    assert!(
        !text(&offline).contains("User team/nobody: UnknownAccount"),
        "{}",
        text(&offline)
    );
}

fn google_user(name: &str, email: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: User
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
  google: {email}
  role: Member
"
    )
}

#[tokio::test]
async fn google_workspace_decides_google_accounts() {
    let server = FakeProvider::start().await;
    server.answer("/token", fixture("google/token"));
    let users = "/admin/directory/v1/users";
    server.answer(&format!("{users}/liz@example.com"), fixture("google/user"));
    server.answer(&format!("{users}/sam@example.com"), fixture("google/user-suspended"));
    let project = Project::new(&[
        ORG.into(),
        google_user("liz", "Liz@Example.com"),
        google_user("sam", "sam@example.com"),
    ]);
    let key_text =
        std::fs::read_to_string(identity_support::fixtures_dir().join("google/test-service-account.json")).unwrap();
    let mut key: serde_json::Value = serde_json::from_str(&key_text).unwrap();
    key["token_uri"] = format!("{}/token", server.url()).into();
    let key_file = project.dir.path().join("key.json");
    fs::write(&key_file, key.to_string()).unwrap();
    let private_key = key["private_key"].as_str().unwrap().lines().nth(1).unwrap().to_owned();

    let output = project
        .run(&[
            "plan",
            "--google-credentials-file",
            key_file.to_str().unwrap(),
            "--google-admin-subject",
            "admin@example.com",
            "--google-directory-url",
            &server.url(),
        ])
        .await;
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("User team/sam: UnknownAccount"), "{said}");
    assert!(said.contains("is suspended (ADMIN)"), "{said}");
    assert!(!said.contains("User team/liz: UnknownAccount"), "{said}");
    assert_eq!(server.requests_to("/token").len(), 1);
    for secret in ["ya29.", private_key.as_str()] {
        assert!(!said.contains(secret), "{secret:?} leaked: {said}");
    }
}
