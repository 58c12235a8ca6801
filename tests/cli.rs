//! `orgkeeper plan` and `apply` as a user runs them: real binary, real files, real stores (SQLite and
//! PostgreSQL). Bad input gets a specific error naming the file, line, object and field, and changes nothing.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

const ORG: &str = "apiVersion: orgkeeper.dev/v1alpha1
kind: Organization
metadata:
  name: acme
  namespace: team
spec:
  displayName: Acme
";

fn env(name: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: Environment
metadata:
  name: {name}
  namespace: team
spec:
  organizationRef:
    name: acme
"
    )
}

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
  role: Admin
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

/// A scratch project: a manifests folder, a store, a secrets folder.
struct Project {
    dir: TempDir,
    database_url: String,
}

impl Project {
    fn sqlite() -> Self {
        let dir = TempDir::new().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("store.db").display());
        Project::with_store(dir, database_url)
    }

    async fn postgres() -> Self {
        Project::with_store(TempDir::new().unwrap(), support::fresh_postgres_url().await)
    }

    fn with_store(dir: TempDir, database_url: String) -> Self {
        fs::create_dir(dir.path().join("manifests")).unwrap();
        Project { dir, database_url }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn secrets(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    fn write(&self, file: &str, documents: &[&str]) -> &Self {
        fs::write(self.manifests().join(file), documents.join("---\n")).unwrap();
        self
    }

    fn remove(&self, file: &str) {
        fs::remove_file(self.manifests().join(file)).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// Runs orgkeeper with extra environment variables.
    fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let output = self
            .command(args)
            .envs(envs.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert_ne!(
            output.status.code(),
            Some(101),
            "orgkeeper panicked: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// orgkeeper on this project's store and secrets folder.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orgkeeper"));
        command
            .args(args)
            .env("ORGKEEPER_DATABASE_URL", &self.database_url)
            .env("ORGKEEPER_SECRETS_DIR", self.secrets())
            .env("ORGKEEPER_LOG_LEVEL", "warn");
        command
    }

    fn plan(&self) -> Output {
        self.run(&["plan", "-f", self.manifests().to_str().unwrap()])
    }

    fn apply(&self) -> Output {
        self.run(&["apply", "-f", self.manifests().to_str().unwrap()])
    }

    fn register(&self, accounts: &[&str]) {
        let mut args = vec!["accounts", "add"];
        args.extend_from_slice(accounts);
        assert!(self.run(&args).status.success());
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = walk(&self.secrets());
        files.sort();
        files
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { walk(&path) } else { vec![path] }
        })
        .collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command failed with exit code 1, mentions every `needle`, and that the store is still empty.
fn assert_refused(project: &Project, output: Output, needles: &[&str]) {
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        stdout(&output)
    );
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    assert!(project.secret_files().is_empty(), "nothing is written");
}

// ----- the happy path, on both stores -----

async fn plan_apply_and_reapply(project: Project) {
    project.register(&["github:alice"]);
    project.write(
        "org.yaml",
        &[
            ORG,
            &env("staging"),
            &user("alice", "alice"),
            &key("backend", "staging"),
        ],
    );
    let plan = project.plan();
    assert_eq!(plan.status.code(), Some(2), "changes pending: {}", stderr(&plan));
    assert!(stdout(&plan).contains("+ api key team/backend in team/acme/staging (ReadWrite) -> Secret backend"));
    assert!(
        stdout(&plan).contains("Plan: 6 to add, 0 to change, 0 to remove."),
        "{}",
        stdout(&plan)
    );

    let apply = project.apply();
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(stdout(&apply).contains("1 key(s) written"));
    let files = project.secret_files();
    assert_eq!(files.len(), 1);
    let mode = fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner can read a key");
    let secret = fs::read_to_string(&files[0]).unwrap();
    assert!(secret.contains("OSO_AUTH") && secret.contains("OSO_URL") && secret.contains("immutable: true"));

    let again = project.apply();
    assert!(again.status.success());
    assert!(stdout(&again).contains("No changes"), "{}", stdout(&again));
    assert_eq!(
        fs::read_to_string(&files[0]).unwrap(),
        secret,
        "the Secret is never rewritten"
    );
    assert_eq!(project.plan().status.code(), Some(0));

    // Pruning: what the folder no longer declares is removed.
    project.write("org.yaml", &[ORG, &user("alice", "alice")]);
    let prune = project.apply();
    assert!(prune.status.success(), "{}", stderr(&prune));
    let out = stdout(&prune);
    assert!(out.contains("- api key team/backend"), "{out}");
    assert!(out.contains("- environment team/acme/staging"), "{out}");
}

async fn bad_input_changes_nothing(project: Project) {
    project.write("org.yaml", &[ORG, &user("mallory", "mallory")]);
    let output = project.apply();
    assert_refused(
        &project,
        output,
        &["org.yaml:9: User team/mallory: UnknownAccount", "github:mallory"],
    );
    assert_eq!(project.plan().status.code(), Some(1));
    // Once the account exists, the same folder applies.
    project.register(&["github:mallory"]);
    assert!(project.apply().status.success());
}

on_both_backends_project!(plan_apply_and_reapply, bad_input_changes_nothing);

macro_rules! on_both_backends_project {
    ($($test:ident),*) => {
        $(
            mod $test {
                #[tokio::test]
                async fn sqlite() {
                    super::$test(super::Project::sqlite()).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$test(super::Project::postgres().await).await
                }
            }
        )*
    };
}
use on_both_backends_project;

// ----- each kind of bad input -----

#[test]
fn yaml_syntax_errors_name_the_file_and_line() {
    let project = Project::sqlite();
    project.write("broken.yaml", &[ORG, "kind: [unclosed\n"]);
    let output = project.plan();
    assert_refused(&project, output, &["broken.yaml:10: YAML syntax error"]);
}

#[test]
fn schema_violations_name_the_file_object_and_field() {
    let project = Project::sqlite();
    let bad_email = "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata:\n  name: bob\n  namespace: team\nspec:\n  organizationRef:\n    name: acme\n  google: not-an-email\n";
    let both = "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata:\n  name: eve\n  namespace: team\nspec:\n  organizationRef:\n    name: acme\n  github: eve\n  google: eve@example.com\n";
    project.write("org.yaml", &[ORG, bad_email, both]);
    let output = project.apply();
    assert_refused(
        &project,
        output,
        &[
            "org.yaml:9: User team/bob: spec.google:",
            "org.yaml:19: User team/eve:",
            "exactly one of github or google",
        ],
    );
}

#[test]
fn unknown_fields_and_kinds_are_refused_but_other_apis_are_skipped() {
    let project = Project::sqlite();
    let typo = ORG.replace("displayName", "displayname");
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
    project.write("org.yaml", &[&typo, config_map]);
    let output = project.plan();
    assert_refused(
        &project,
        output,
        &["Organization team/acme: spec.displayname: unknown field"],
    );
}

#[test]
fn duplicates_are_refused_with_both_places() {
    let project = Project::sqlite();
    project.write("a.yaml", &[ORG]).write("b.yaml", &[ORG]);
    let output = project.apply();
    assert_refused(&project, output, &["Organization team/acme: Duplicate"]);
}

#[test]
fn a_missing_organization_or_environment_is_refused() {
    let project = Project::sqlite();
    project.write(
        "org.yaml",
        &[
            &key("lost", "staging"),
            &env("orphan").replace("name: acme", "name: globex"),
            ORG,
        ],
    );
    let output = project.apply();
    assert_refused(
        &project,
        output,
        &[
            "ApiKey team/lost: EnvironmentNotFound",
            "Environment team/orphan: OrganizationNotFound",
            "\"globex\"",
        ],
    );
}

#[test]
fn a_129th_key_is_refused() {
    let project = Project::sqlite();
    let keys: Vec<String> = (0..129).map(|i| key(&format!("key-{i:03}"), "production")).collect();
    let mut documents: Vec<&str> = vec![ORG];
    documents.extend(keys.iter().map(String::as_str));
    project.write("org.yaml", &documents);
    let output = project.apply();
    assert_refused(
        &project,
        output,
        &["ApiKey team/key-128: KeyLimitReached", "128 live keys"],
    );
}

#[test]
fn a_default_environment_cannot_be_deleted() {
    let project = Project::sqlite();
    let doomed = format!("{}  deletionPolicy: Delete\n", env("production"));
    project.write("org.yaml", &[ORG, &doomed]);
    let output = project.apply();
    assert_refused(
        &project,
        output,
        &["Environment team/production:", "can never be deleted"],
    );
}

#[test]
fn removing_a_default_environments_resource_resets_it() {
    let project = Project::sqlite();
    let configured = format!(
        "{}  displayName: Prod\n  limits:\n    maxBatchFacts: 5\n",
        env("production")
    );
    project.write("org.yaml", &[ORG]).write("prod.yaml", &[&configured]);
    assert!(project.apply().status.success());
    project.remove("prod.yaml");
    let output = project.apply();
    assert!(output.status.success());
    let out = stdout(&output);
    assert!(
        out.contains("reset to defaults") && out.contains("limits.maxBatchFacts: 5 -> inherited"),
        "{out}"
    );
}

/// Applies ApiKey team/backend with `contents` already at its key file's path.
fn apply_with_a_file_in_the_way(contents: &str) -> (Project, PathBuf, Output) {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG, &key("backend", "production")]);
    let path = project.secrets().join("team").join("backend.yaml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, contents).unwrap();
    let output = project.apply();
    (project, path, output)
}

#[test]
fn a_foreign_file_in_the_way_is_never_overwritten() {
    let (_project, path, output) = apply_with_a_file_in_the_way("mine: true\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("SecretConflict"), "{}", stderr(&output));
    assert_eq!(fs::read_to_string(&path).unwrap(), "mine: true\n");
}

#[test]
fn a_lost_secret_is_reported_not_reissued() {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG, &key("backend", "production")]);
    assert!(project.apply().status.success());
    fs::remove_file(&project.secret_files()[0]).unwrap();
    let output = project.apply();
    assert!(output.status.success());
    assert!(stderr(&output).contains("SecretMissing"), "{}", stderr(&output));
    assert!(project.secret_files().is_empty(), "not re-issued silently");
}

#[test]
fn an_orphaned_secret_from_an_interrupted_apply_is_replaced() {
    // Simulates a crash after the Secret file was written but before the store committed: the file's key
    // never became live, so the next apply may replace it.
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG, &key("backend", "production")]);
    let scratch = Project::sqlite();
    scratch.write("org.yaml", &[ORG, &key("backend", "production")]);
    assert!(scratch.apply().status.success());
    let orphan = fs::read_to_string(&scratch.secret_files()[0]).unwrap();
    let path = project.secrets().join("team").join("backend.yaml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &orphan).unwrap();
    let output = project.apply();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_ne!(
        fs::read_to_string(&path).unwrap(),
        orphan,
        "a fresh key replaced the orphan"
    );
}

#[test]
fn plan_prints_json_for_pipelines() {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG]);
    let output = project.run(&["plan", "-f", project.manifests().to_str().unwrap(), "-o", "json"]);
    assert_eq!(output.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["changes"][0]["action"], "createOrganization");
    assert_eq!(doc["summary"]["add"], 3);
}

#[test]
fn garbage_never_panics() {
    let project = Project::sqlite();
    for (i, text) in [
        "\u{0}\u{1}\u{2}",
        "- - - -",
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata: 5\n",
        "{{{{",
        "kind: ApiKey\napiVersion: orgkeeper.dev/v1alpha1\nspec: []\n",
    ]
    .iter()
    .enumerate()
    {
        project.write(&format!("g{i}.yaml"), &[text]);
    }
    let output = project.plan();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

// ----- hardening: key files, typos, duplicate keys, crashes, hostile files -----

/// An Organization `name` in namespace `shared` with one ApiKey `k`.
fn shared_org_with_key(name: &str) -> Vec<String> {
    vec![
        format!(
            "apiVersion: orgkeeper.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: {name}\n  namespace: shared\nspec:\n  displayName: {name}\n"
        ),
        format!(
            "apiVersion: orgkeeper.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: k\n  namespace: shared\nspec:\n  organizationRef:\n    name: {name}\n  environment: production\n"
        ),
    ]
}

impl Project {
    /// A second manifests folder in the same project (same store, same secrets folder).
    fn folder(&self, name: &str, documents: &[String]) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("org.yaml"), documents.join("---\n")).unwrap();
        dir
    }

    fn on(&self, command: &str, dir: &Path, extra: &[&str]) -> Output {
        let mut args = vec![command, "-f", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

#[test]
fn one_organization_never_takes_another_organizations_key_file() {
    let project = Project::sqlite();
    let first = project.folder("x", &shared_org_with_key("x"));
    let second = project.folder("y", &shared_org_with_key("y"));
    assert!(project.on("apply", &first, &[]).status.success());
    let file = project.secrets().join("shared").join("k.yaml");
    let key_of_x = fs::read_to_string(&file).unwrap();

    let output = project.on("apply", &second, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    for needle in [
        "ApiKey shared/k: SecretConflict",
        "organization shared/x",
        "organization shared/y",
        file.to_str().unwrap(),
    ] {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        key_of_x,
        "x's only copy of its key is intact"
    );
    assert_eq!(project.on("plan", &first, &[]).status.code(), Some(0));

    // Had another organization's key replaced it, plan must not call x's folder in sync.
    let elsewhere = Project::sqlite();
    let y = elsewhere.folder("y", &shared_org_with_key("y"));
    assert!(elsewhere.on("apply", &y, &[]).status.success());
    fs::copy(elsewhere.secrets().join("shared").join("k.yaml"), &file).unwrap();
    let plan = project.on("plan", &first, &[]);
    assert_eq!(plan.status.code(), Some(1), "{}", stdout(&plan));
    assert!(!stdout(&plan).contains("No changes"));
    assert!(stderr(&plan).contains("organization shared/y"), "{}", stderr(&plan));
}

#[test]
fn an_api_version_or_kind_close_to_orgkeepers_is_an_error_not_another_kind() {
    for (typo, needle) in [
        ("apiVersion: orgkeper.dev/v1alpha1", "looks like a typo"),
        ("apiVersion: Orgkeeper.dev/v1alpha1", "looks like a typo"),
        ("kind: Apikey", "did you mean ApiKey?"),
    ] {
        let project = Project::sqlite();
        let field = typo.split(':').next().unwrap();
        let original = key("backend", "production");
        let typoed: String = original
            .lines()
            .map(|line| if line.starts_with(field) { typo } else { line })
            .collect::<Vec<_>>()
            .join("\n");
        project.write("org.yaml", &[ORG, &typoed]);
        let output = project.plan();
        assert_refused(&project, output, &["org.yaml:9: ", needle]);
    }
}

#[test]
fn revoking_keys_is_announced_first_and_many_need_a_flag() {
    let project = Project::sqlite();
    let names = ["a", "b", "c", "d"];
    let keys: Vec<String> = names.iter().map(|n| key(n, "production")).collect();
    let mut documents = vec![ORG];
    documents.extend(keys.iter().map(String::as_str));
    project.write("org.yaml", &documents);
    assert!(project.apply().status.success());

    project.write("org.yaml", &[ORG]);
    let plan = project.plan();
    let out = stdout(&plan);
    assert!(
        out.starts_with("!! This plan revokes 4 live API key(s)"),
        "the warning comes first:\n{out}"
    );
    assert!(out.contains("!!   team/a in team/acme/production"), "{out}");

    let refused = project.apply();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--allow-revocations 4"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(project.plan().status.code(), Some(2), "nothing was changed");

    let allowed = project.run(&[
        "apply",
        "-f",
        project.manifests().to_str().unwrap(),
        "--allow-revocations",
        "4",
    ]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(stdout(&allowed).contains("!! This plan revoked 4 live API key(s)"));
}

#[test]
fn a_mapping_key_given_twice_is_refused_with_its_line() {
    let project = Project::sqlite();
    let twice = format!("{}  revoked: true\n  revoked: false\n", key("backend", "production"));
    project.write("org.yaml", &[ORG, &twice]);
    let output = project.plan();
    assert_refused(
        &project,
        output,
        &["org.yaml:15: YAML syntax error: spec: duplicate key \"revoked\""],
    );
}

#[test]
fn a_crash_while_writing_a_key_file_leaves_nothing_that_wedges_the_next_apply() {
    for failpoint in ["apply-partial-key-file", "apply-before-commit"] {
        let project = Project::sqlite();
        project.write("org.yaml", &[ORG, &key("backend", "production")]);
        let crashed = project.run_with(
            &["apply", "-f", project.manifests().to_str().unwrap()],
            &[("ORGKEEPER_FAILPOINT", failpoint)],
        );
        assert!(!crashed.status.success(), "{failpoint}: the process was aborted");
        let path = project.secrets().join("team").join("backend.yaml");
        if failpoint == "apply-partial-key-file" {
            assert!(!path.exists(), "no partial file under the final name");
        }

        let output = project.apply();
        assert!(output.status.success(), "{failpoint}: {}", stderr(&output));
        assert_eq!(project.secret_files(), vec![path.clone()], "the temporary file is gone");
        let secret = fs::read_to_string(&path).unwrap();
        assert!(
            secret.contains("OSO_AUTH") && secret.contains("immutable: true"),
            "{secret}"
        );
        assert_eq!(project.plan().status.code(), Some(0), "{failpoint}");
    }
}

#[test]
fn an_empty_key_file_holds_no_key_and_is_replaced() {
    let (_project, path, output) = apply_with_a_file_in_the_way("");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(fs::read_to_string(&path).unwrap().contains("OSO_AUTH"));
}

#[test]
fn only_regular_files_are_read_and_what_is_skipped_is_said() {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG]);
    let manifests = project.manifests();
    std::os::unix::fs::symlink("/dev/zero", manifests.join("zero.yaml")).unwrap();
    let fifo = manifests.join("pipe.yaml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let elsewhere = project.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, manifests.join("linked")).unwrap();

    let output = project.plan();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("zero.yaml: skipped: not a regular file"), "{err}");
    assert!(err.contains("pipe.yaml: skipped: not a regular file"), "{err}");
    assert!(
        err.contains("linked: skipped: a symbolic link to a folder is not followed"),
        "{err}"
    );
}

#[test]
fn input_size_is_bounded_per_file_and_in_total() {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG]).write("more.yaml", &[&env("staging")]);
    let dir = project.manifests();
    let small = project.run(&["plan", "-f", dir.to_str().unwrap(), "--max-file-bytes", "100"]);
    assert_refused(
        &project,
        small,
        &["org.yaml: larger than 100 bytes", "--max-file-bytes"],
    );
    let total = project.run(&["plan", "-f", dir.to_str().unwrap(), "--max-total-bytes", "200"]);
    assert_refused(&project, total, &["larger than 200 bytes", "--max-total-bytes"]);
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    // 200 KB of nesting took 46 s to parse before it was refused; now it is refused after one pass.
    let project = Project::sqlite();
    project.write("deep.yaml", &[&format!("a: {}", "[".repeat(200_000))]);
    let output = project.plan();
    assert_refused(&project, output, &["deep.yaml:1: YAML syntax error: more than 128"]);
}

#[test]
fn thousands_of_errors_are_all_reported() {
    let project = Project::sqlite();
    let users: Vec<String> = (0..5000)
        .map(|i| user(&format!("u{i}"), &format!("nobody{i}")))
        .collect();
    let mut documents = vec![ORG];
    documents.extend(users.iter().map(String::as_str));
    project.write("org.yaml", &documents);
    let output = project.plan();
    assert_refused(
        &project,
        output,
        &[
            "5000 problem(s); nothing was changed",
            "User team/u4999: UnknownAccount",
        ],
    );
}

#[test]
fn a_secrets_folder_others_can_read_is_warned_about() {
    let project = Project::sqlite();
    project.write("org.yaml", &[ORG, &key("backend", "production")]);
    fs::create_dir(project.secrets()).unwrap();
    fs::set_permissions(project.secrets(), fs::Permissions::from_mode(0o755)).unwrap();
    let output = project.apply();
    assert!(output.status.success());
    assert!(
        stderr(&output).contains("is open to its group or others (mode 0755)"),
        "{}",
        stderr(&output)
    );
    let mode = fs::metadata(&project.secret_files()[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_loses_the_race_says_another_apply_is_running() {
    use orgkeeper::domain::{KeyState, KnownAccounts, plan};
    use orgkeeper::store::Store;

    let project = Project::sqlite();
    project.write("org.yaml", &[ORG, &key("backend", "production")]);
    // This test is the other apply: it writes the same organization and holds the store's write lock
    // while the command plans against the empty store and waits for the lock.
    let store = Store::connect(&project.database_url).await.unwrap();
    let declarations = orgkeeper::manifests::load_dir(&project.manifests())
        .unwrap()
        .declarations()
        .unwrap();
    let winning = plan(&declarations, &Default::default(), &KnownAccounts::default());
    let mut winner = store.begin().await.unwrap();
    winner.apply(&winning.changes, KeyState::Live).await.unwrap();
    let command = project
        .command(&["apply", "-f", project.manifests().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    winner.commit().await.unwrap();
    let output = tokio::task::spawn_blocking(move || command.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another apply is running against this store; nothing was changed"),
        "{err}"
    );
    assert!(!err.contains("database is locked") && !err.contains("UNIQUE"), "{err}");
    assert!(project.secret_files().is_empty(), "the loser's key file is removed");
    store.close().await;
}
