//! `orgkeeper apply` rotating keys in its secrets folder, as a user runs it (real binary, real files, a
//! SQLite store): a new trigger rewrites the key file (written and synced before the old key's overlap
//! starts), both keys work during the overlap, overlap 0s revokes at once, a crash at either rotation step
//! is finished by the next apply, and bad rotation or expiry input is refused with nothing changed.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Secret;
use orgkeeper::auth::KeyRing;
use orgkeeper::store::Store;
use tempfile::TempDir;

const ORG: &str = "apiVersion: orgkeeper.dev/v1alpha1
kind: Organization
metadata:
  name: acme
  namespace: team
spec:
  displayName: Acme
";

fn key(spec: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1
kind: ApiKey
metadata:
  name: backend
  namespace: team
spec:
  organizationRef:
    name: acme
  environment: production
{spec}"
    )
}

fn rotation(trigger: &str, every: Option<&str>, overlap: &str) -> String {
    let every = every.map(|e| format!("    every: {e}\n")).unwrap_or_default();
    format!("  rotation:\n    trigger: \"{trigger}\"\n{every}    overlap: {overlap}\n")
}

struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        fs::create_dir(dir.path().join("manifests")).unwrap();
        Project { dir }
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("store.db").display())
    }

    fn declare(&self, spec: &str) {
        fs::write(
            self.dir.path().join("manifests/org.yaml"),
            format!("{ORG}---\n{}", key(spec)),
        )
        .unwrap();
    }

    fn run(&self, command: &str, failpoint: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orgkeeper"));
        cmd.args([command, "-f", self.dir.path().join("manifests").to_str().unwrap()])
            .env("ORGKEEPER_DATABASE_URL", self.database_url())
            .env("ORGKEEPER_SECRETS_DIR", self.dir.path().join("secrets"))
            .env("ORGKEEPER_LOG_LEVEL", "warn")
            .env_remove("ORGKEEPER_FAILPOINT");
        if let Some(failpoint) = failpoint {
            cmd.env("ORGKEEPER_FAILPOINT", failpoint);
        }
        let output = cmd.output().unwrap();
        assert_ne!(output.status.code(), Some(101), "panicked: {}", stderr(&output));
        output
    }

    fn apply(&self) -> Output {
        let output = self.run("apply", None);
        assert!(output.status.success(), "{}\n{}", stdout(&output), stderr(&output));
        output
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("secrets/team/backend.yaml")
    }

    /// The key the file holds now, and the whole file.
    fn held(&self) -> (String, String) {
        let text = fs::read_to_string(self.key_file()).unwrap();
        let secret: Secret = serde_norway::from_str(&text).unwrap();
        let key = String::from_utf8(secret.data.unwrap()["OSO_AUTH"].0.clone()).unwrap();
        (key, text)
    }

    async fn ring(&self) -> KeyRing {
        let store = Store::connect(&self.database_url()).await.unwrap();
        let ring = KeyRing::default();
        ring.refresh(&store).await.unwrap();
        store.close().await;
        ring
    }
}

fn accepts(ring: &KeyRing, key: &str) -> bool {
    ring.authenticate(Some(&format!("Bearer {key}"))).is_ok()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_new_trigger_rewrites_the_key_file_and_both_keys_work_for_the_overlap() {
    let project = Project::new();
    project.declare(&rotation("1", None, "1h"));
    project.apply();
    let (old, first_file) = project.held();
    assert!(
        !first_file.contains("immutable: true"),
        "a rotating key's Secret can be updated by kubectl apply"
    );

    project.declare(&rotation("2", None, "1h"));
    let plan = project.run("plan", None);
    assert!(stdout(&plan).contains("rotate key"), "{}", stdout(&plan));
    let applied = project.apply();
    assert!(stdout(&applied).contains("1 key(s) rotated"), "{}", stdout(&applied));
    let (new, _) = project.held();
    assert_ne!(new, old);
    let ring = project.ring().await;
    assert!(
        accepts(&ring, &old) && accepts(&ring, &new),
        "both work during the overlap"
    );
    assert_eq!(project.run("plan", None).status.code(), Some(0), "nothing left to do");
    let leftovers: Vec<_> = fs::read_dir(project.key_file().parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    // The compromised-key case: overlap 0s revokes the old key at once.
    project.declare(&rotation("3", None, "0s"));
    project.apply();
    let (newest, _) = project.held();
    let ring = project.ring().await;
    assert!(!accepts(&ring, &new) && accepts(&ring, &newest));
    assert!(accepts(&ring, &old), "the first key keeps its own overlap");
}

#[tokio::test]
async fn a_crash_at_each_rotation_step_is_finished_by_the_next_apply() {
    for failpoint in ["apply-rotation-before-files", "apply-rotation-after-files"] {
        let project = Project::new();
        project.declare(&rotation("1", None, "1h"));
        project.apply();
        let (old, _) = project.held();
        project.declare(&rotation("2", None, "1h"));
        let crashed = project.run("apply", Some(failpoint));
        assert!(!crashed.status.success(), "{failpoint}: aborted");

        // The file holds one key, a live one, and the old key still works.
        let (inside, _) = project.held();
        let ring = project.ring().await;
        assert!(accepts(&ring, &inside) && accepts(&ring, &old), "{failpoint}");
        assert_eq!(inside == old, failpoint == "apply-rotation-before-files", "{failpoint}");

        project.apply();
        let (finished, _) = project.held();
        assert_ne!(finished, old, "{failpoint}");
        if failpoint == "apply-rotation-after-files" {
            assert_eq!(finished, inside, "the key written before the crash is kept");
        }
        let ring = project.ring().await;
        assert!(accepts(&ring, &finished) && accepts(&ring, &old), "{failpoint}");
        assert_eq!(
            project.run("plan", None).status.code(),
            Some(0),
            "{failpoint}: converged"
        );
    }
}

#[tokio::test]
async fn bad_rotation_and_expiry_input_is_refused_and_changes_nothing() {
    let project = Project::new();
    project.declare(&rotation("1", None, "1h"));
    project.apply();
    let (before, file) = project.held();
    for (spec, expected) in [
        (
            rotation("2", Some("1h"), "2h"),
            "must not be longer than rotation.every",
        ),
        ("  rotation:\n    every: 30days\n".to_owned(), "spec.rotation.every"),
        ("  expireAfter: 1d\n".to_owned(), "spec.expireAfter"),
        (
            "  expiresAt: \"2027-02-30T00:00:00Z\"\n".to_owned(),
            "not an RFC 3339 time",
        ),
        ("  expiresAt: \"2020-01-01T00:00:00Z\"\n".to_owned(), "in the past"),
    ] {
        project.declare(&spec);
        let output = project.run("apply", None);
        assert_eq!(output.status.code(), Some(1), "{spec}: {}", stdout(&output));
        let said = format!("{}{}", stdout(&output), stderr(&output));
        assert!(said.contains(expected), "{spec}: expected {expected:?} in\n{said}");
        assert_eq!(
            fs::read_to_string(project.key_file()).unwrap(),
            file,
            "{spec}: the key file is untouched"
        );
        assert!(accepts(&project.ring().await, &before), "{spec}");
    }
}
