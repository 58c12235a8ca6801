//! The pull-request side of the roles, as a CI job runs it: `orgkeeper plan -f HEAD --as ACCOUNT --base BASE`
//! on folders (no database) or against a store, and `orgkeeper codeowners`, on the real binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

const ORGANIZATION: &str = "apiVersion: orgkeeper.dev/v1alpha1
kind: Organization
metadata:
  name: acme
  namespace: team
spec:
  displayName: Acme
";

fn user(name: &str, account: &str, role: &str) -> String {
    let (provider, login) = account.split_once(':').unwrap();
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: User
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
  {provider}: {login}
  role: {role}
"
    )
}

fn environment(name: &str, production: bool) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: Environment
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
  production: {production}
"
    )
}

fn key(name: &str, environment: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: ApiKey
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
  environment: {environment}
"
    )
}

/// A repository checkout: `base/` (the target branch) and `head/` (the pull request), both in `tenancy/` files.
struct Repo {
    dir: TempDir,
}

impl Repo {
    /// acme with Admin ada, Member mel, Admin gina (Google only), a non-production `staging` and keys.
    fn new() -> Self {
        let repo = Repo {
            dir: TempDir::new().unwrap(),
        };
        for side in ["base", "head"] {
            fs::create_dir(repo.dir.path().join(side)).unwrap();
            repo.write(side, "organization.yaml", &[ORGANIZATION]);
            repo.write(
                side,
                "users.yaml",
                &[
                    &user("ada", "github:ada", "Admin"),
                    &user("mel", "github:mel", "Member"),
                    &user("gina", "google:gina@acme.example", "Admin"),
                ],
            );
            repo.write(side, "staging.yaml", &[&environment("staging", false)]);
            repo.write(side, "keys-staging.yaml", &[&key("ci", "staging")]);
            repo.write(side, "keys-production.yaml", &[&key("backend", "production")]);
        }
        repo
    }

    fn path(&self, side: &str) -> PathBuf {
        self.dir.path().join(side)
    }

    fn write(&self, side: &str, file: &str, documents: &[&str]) {
        fs::write(self.path(side).join(file), documents.join("---\n")).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(args)
            // A store that cannot be opened: --base must never need one.
            .env("ORGKEEPER_DATABASE_URL", "sqlite:///nonexistent-orgkeeper-dir/store.db")
            .env("ORGKEEPER_LOG_LEVEL", "warn")
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert_ne!(output.status.code(), Some(101), "panicked: {}", stderr(&output));
        output
    }

    fn plan_as(&self, account: &str) -> Output {
        self.run(&["plan", "-f", "head", "--base", "base", "--as", account])
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

#[test]
fn a_members_production_key_is_refused_naming_the_rule_and_an_admins_is_allowed() {
    let repo = Repo::new();
    repo.write(
        "head",
        "keys-production.yaml",
        &[&key("backend", "production"), &key("backend-2", "production")],
    );
    let member = repo.plan_as("github:mel");
    assert_eq!(code(&member), 3, "{}{}", stdout(&member), stderr(&member));
    assert!(stdout(&member).contains("+ api key team/backend-2 in team/acme/production"));
    let refused = stderr(&member);
    assert!(
        refused.contains("refused: head/keys-production.yaml:11: + api key team/backend-2"),
        "{refused}"
    );
    assert!(
        refused.contains("manage-production: github:mel is a Member of organization team/acme before this change"),
        "{refused}"
    );
    assert!(refused.contains("1 change(s) github:mel may not make"), "{refused}");

    let admin = repo.plan_as("github:ada");
    assert_eq!(code(&admin), 2, "{}", stderr(&admin));
    assert!(stdout(&admin).contains("github:ada may make every change."));
}

#[test]
fn a_member_manages_non_production_environments_and_keys() {
    let repo = Repo::new();
    repo.write(
        "head",
        "staging.yaml",
        &[&environment("staging", false), &environment("preview", false)],
    );
    repo.write("head", "keys-staging.yaml", &[&key("preview-ci", "preview")]);
    let output = repo.plan_as("github:mel");
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    let plan = stdout(&output);
    assert!(plan.contains("+ environment team/acme/preview"), "{plan}");
    assert!(plan.contains("+ api key team/preview-ci"), "{plan}");
    assert!(plan.contains("- api key team/ci"), "{plan}");
}

#[test]
fn a_member_who_promotes_themselves_is_judged_by_the_role_before() {
    let repo = Repo::new();
    repo.write(
        "head",
        "users.yaml",
        &[
            &user("ada", "github:ada", "Admin"),
            &user("mel", "github:mel", "Admin"),
            &user("gina", "google:gina@acme.example", "Admin"),
        ],
    );
    repo.write("head", "staging.yaml", &[&environment("staging", true)]);
    let output = repo.plan_as("github:mel");
    assert_eq!(code(&output), 3);
    let refused = stderr(&output);
    assert!(
        refused.contains("role Member -> Admin\n    manage-users: github:mel is a Member"),
        "{refused}"
    );
    assert!(
        refused.contains("refused: head/staging.yaml:1: ~ environment team/acme/staging"),
        "{refused}"
    );
    assert!(refused.contains("2 change(s) github:mel may not make"), "{refused}");
}

#[test]
fn no_changes_exit_zero_and_strangers_may_change_nothing() {
    let repo = Repo::new();
    assert_eq!(code(&repo.plan_as("github:mel")), 0);
    repo.write(
        "head",
        "staging.yaml",
        &[&environment("staging", false), &environment("qa", false)],
    );
    let stranger = repo.plan_as("github:mallory");
    assert_eq!(code(&stranger), 3);
    assert!(
        stderr(&stranger).contains("member: github:mallory is not a User of organization team/acme"),
        "{}",
        stderr(&stranger)
    );
    let google_admin = repo.plan_as("google:Gina@acme.example");
    assert_eq!(code(&google_admin), 2, "{}", stderr(&google_admin));
}

#[test]
fn json_output_lists_each_refusal_with_its_rule_and_file() {
    let repo = Repo::new();
    repo.write("head", "users.yaml", &[&user("ada", "github:ada", "Admin")]);
    let output = repo.run(&[
        "plan",
        "-f",
        "head",
        "--base",
        "base",
        "--as",
        "github:mel",
        "-o",
        "json",
    ]);
    assert_eq!(code(&output), 3);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["as"], "github:mel");
    assert!(doc["store"].is_null(), "--base opens no store");
    let refusals = doc["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    for refusal in refusals {
        assert_eq!(refusal["rule"], "manage-users");
        assert_eq!(refusal["change"]["action"], "removeUser");
        assert_eq!(refusal["object"]["kind"], "User");
        assert!(
            refusal["location"].is_null(),
            "the removed User's file is gone from head"
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let repo = Repo::new();
    for (account, expected) in [
        ("mel", "\"mel\" is not an account: use github:USERNAME or google:EMAIL"),
        ("gitlab:mel", "unknown account provider \"gitlab\""),
        ("github:-mel", "not a valid GitHub username"),
    ] {
        let output = repo.plan_as(account);
        assert_eq!(code(&output), 1, "{account}");
        assert!(stderr(&output).contains(expected), "{account}: {}", stderr(&output));
        assert!(stdout(&output).is_empty());
    }
    repo.write(
        "base",
        "broken.yaml",
        &["kind: User\napiVersion: orgkeeper.dev/v1alpha1\nspec: ["],
    );
    let output = repo.plan_as("github:ada");
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("base/broken.yaml:4: YAML syntax error"),
        "{}",
        stderr(&output)
    );
    let missing = repo.run(&["plan", "-f", "head", "--base", "no-such-dir", "--as", "github:ada"]);
    assert_eq!(code(&missing), 1);
    assert!(stderr(&missing).contains("no-such-dir"), "{}", stderr(&missing));
}

#[test]
fn against_the_store_the_role_is_the_stored_one() {
    let repo = Repo::new();
    let database = format!("sqlite://{}", repo.dir.path().join("store.db").display());
    let with_store = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(args)
            .env("ORGKEEPER_DATABASE_URL", &database)
            .env("ORGKEEPER_SECRETS_DIR", repo.dir.path().join("secrets"))
            .env("ORGKEEPER_LOG_LEVEL", "warn")
            .current_dir(repo.dir.path())
            .output()
            .unwrap()
    };
    let registered = with_store(&[
        "accounts",
        "add",
        "github:ada",
        "github:mel",
        "google:gina@acme.example",
    ]);
    assert!(registered.status.success(), "{}", stderr(&registered));
    let applied = with_store(&["apply", "-f", "base"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    repo.write(
        "head",
        "users.yaml",
        &[
            &user("ada", "github:ada", "Member"),
            &user("mel", "github:mel", "Admin"),
            &user("gina", "google:gina@acme.example", "Admin"),
        ],
    );
    let member = with_store(&["plan", "-f", "head", "--as", "github:mel"]);
    assert_eq!(code(&member), 3, "{}", stderr(&member));
    assert_eq!(
        stderr(&member).matches("manage-users:").count(),
        2,
        "{}",
        stderr(&member)
    );
    // The Admin in the store may hand over the role, even though head demotes her.
    let admin = with_store(&["plan", "-f", "head", "--as", "github:ada"]);
    assert_eq!(code(&admin), 2, "{}", stderr(&admin));
}

fn codeowners(repo: &Repo, args: &[&str]) -> Output {
    let mut all = vec!["codeowners"];
    all.extend_from_slice(args);
    repo.run(&all)
}

#[test]
fn codeowners_asks_admins_for_admin_only_files_line_by_line() {
    let repo = Repo::new();
    repo.write(
        "head",
        "staging.yaml",
        &[&environment("staging", false), &environment("eu", true)],
    );
    fs::create_dir(repo.path("head").join("apps")).unwrap();
    repo.write("head", "apps/my app.yaml", &[&key("app", "staging")]);
    let output = codeowners(&repo, &["-f", "head"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "# Generated by `orgkeeper codeowners -f head`; do not edit.",
            "# Enable \"Require review from Code Owners\" on the branch for this to bind.",
            "# New files under the folder need an Admin until they are listed below.",
            "/head/ @ada",
            "/head/apps/my\\ app.yaml",
            "/head/keys-production.yaml @ada",
            "/head/keys-staging.yaml",
            "/head/organization.yaml @ada",
            "/head/staging.yaml @ada",
            "/head/users.yaml @ada",
        ]
    );
}

#[test]
fn codeowners_needs_an_admin_with_a_github_login_or_a_fallback() {
    let repo = Repo::new();
    repo.write(
        "head",
        "users.yaml",
        &[&user("gina", "google:gina@acme.example", "Admin")],
    );
    let refused = codeowners(&repo, &["-f", "head"]);
    assert_eq!(code(&refused), 1);
    assert!(
        stderr(&refused).contains("organization team/acme has no Admin with a GitHub login"),
        "{}",
        stderr(&refused)
    );
    assert!(stdout(&refused).is_empty());
    let fallback = codeowners(&repo, &["-f", "head", "--fallback-owner", "@acme/platform"]);
    assert_eq!(code(&fallback), 0, "{}", stderr(&fallback));
    assert!(stdout(&fallback).contains("/head/users.yaml @acme/platform\n"));
    let bad = codeowners(&repo, &["-f", "head", "--fallback-owner", "platform"]);
    assert_eq!(code(&bad), 1);
    assert!(stderr(&bad).contains("is not a GitHub owner"), "{}", stderr(&bad));
    let elsewhere = Repo::new();
    let outside = codeowners(&repo, &["-f", elsewhere.path("head").to_str().unwrap()]);
    assert_eq!(code(&outside), 1);
    assert!(
        stderr(&outside).contains("run orgkeeper codeowners from the repository root"),
        "{}",
        stderr(&outside)
    );
}

#[test]
fn the_examples_folder_yields_a_codeowners_file() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["codeowners", "-f", "examples/acme"])
        .current_dir(examples)
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("/examples/acme/users.yaml @alice-acme\n"));
}

#[test]
fn a_malformed_user_name_template_stops_the_controller_with_the_reason() {
    let repo = Repo::new();
    for (flag, template, expected) in [
        (
            "--kubernetes-user-github",
            "oidc:{user}",
            "must contain {login} exactly once",
        ),
        ("--kubernetes-user-google", "{email}}", "has a brace outside {email}"),
        (
            "--kubernetes-user-github",
            "system:{login}",
            "Kubernetes reserves for its own components",
        ),
    ] {
        let output = repo.run(&["controller", flag, template, "--kubeconfig", "/nonexistent-kubeconfig"]);
        assert_eq!(code(&output), 1, "{template}");
        assert!(stderr(&output).contains(expected), "{template}: {}", stderr(&output));
    }
}
