//! Where `orgkeeper apply` writes issued keys: one Kubernetes Secret manifest per key, at
//! `<dir>/<namespace>/<secret>.yaml`, readable only by its owner (0600 in a 0700 folder), never overwritten.
//!
//! A file is written (and synced) before the transaction that makes its key live commits, so a crash
//! can leave a file whose key never became live, never a live key without its file. Such an orphan is
//! recognised by its labels on the next apply and replaced; any other file in the way is a conflict.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;

use crate::crd::secret::{KeySecretSpec, key_id_for, key_secret};
use crate::domain::{Change, KeyState, Kind, ObjectRef, OrgKey, Plan, Problem, Reason, StoredOrganization};
use crate::store::IssuedKey;

pub struct SecretsDir {
    root: PathBuf,
}

/// What the secrets folder says about a plan.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Files in the way of a key to issue that orgkeeper did not write for that key.
    pub conflicts: Vec<Problem>,
    /// Files left by an interrupted apply: written for the key, whose key never became live.
    pub orphans: Vec<PathBuf>,
    /// Live keys whose file is gone. They are not re-issued silently.
    pub missing: Vec<Problem>,
}

/// The extra labels and annotations an ApiKey asks for on its Secret, by (namespace, ApiKey name).
pub type Templates = BTreeMap<(String, String), (BTreeMap<String, String>, BTreeMap<String, String>)>;

impl SecretsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SecretsDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_for(&self, namespace: &str, secret_name: &str) -> PathBuf {
        // Names are DNS labels/subdomains (the schema says so); refuse anything that could leave the folder.
        let safe = |s: &str| !s.is_empty() && !s.contains('/') && !s.starts_with('.');
        assert!(
            safe(namespace) && safe(secret_name),
            "unsafe secret path {namespace}/{secret_name}"
        );
        self.root.join(namespace).join(format!("{secret_name}.yaml"))
    }

    /// Checks every key the plan issues against the files in the folder, and every live key for its file.
    pub fn inspect(
        &self,
        plan: &Plan,
        stored: &BTreeMap<OrgKey, StoredOrganization>,
        declared_keys: &BTreeSet<(String, String)>,
    ) -> Inspection {
        let mut inspection = Inspection::default();
        for change in &plan.changes {
            let Change::IssueKey {
                organization,
                api_key,
                secret_name,
                ..
            } = change
            else {
                continue;
            };
            let path = self.path_for(&organization.namespace, secret_name);
            let object = ObjectRef::new(Kind::ApiKey, &organization.namespace, api_key);
            match read_secret(&path) {
                FileState::Absent => {}
                FileState::Secret(secret) if key_id_for(&secret, api_key).is_some() => inspection.orphans.push(path),
                state => {
                    let why = match state {
                        FileState::Unreadable(e) => format!("is not a Secret manifest ({e})"),
                        _ => "was not written by orgkeeper for this ApiKey".to_owned(),
                    };
                    inspection.conflicts.push(Problem {
                        object,
                        reason: Reason::SecretConflict,
                        message: format!(
                            "{} exists and {why}; it is never overwritten: move it away or choose another spec.secret.name",
                            path.display()
                        ),
                    })
                }
            }
        }
        let revoking: BTreeSet<&str> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::RevokeKey { key_id, .. } | Change::RemoveKey { key_id, .. } => Some(key_id.as_str()),
                _ => None,
            })
            .collect();
        for org in stored.values() {
            for key in org
                .api_keys
                .iter()
                .filter(|k| k.state == KeyState::Live && !revoking.contains(k.key_id.as_str()))
            {
                if !declared_keys.contains(&(org.key.namespace.clone(), key.resource_name.clone())) {
                    continue;
                }
                let path = self.path_for(&org.key.namespace, &key.secret_name);
                if !path.exists() {
                    inspection.missing.push(Problem {
                        object: ObjectRef::new(Kind::ApiKey, &org.key.namespace, &key.resource_name),
                        reason: Reason::SecretMissing,
                        message: format!(
                            "key {} is live but {} is gone; it is not re-issued silently. To rotate: set revoked: true (or delete the ApiKey), apply, and declare a new ApiKey",
                            key.key_id,
                            path.display()
                        ),
                    });
                }
            }
        }
        inspection
    }

    /// Writes one Secret per issued key, synced to disk. On any failure the files written so far are removed
    /// and the error returned, so the caller can roll back with nothing left behind.
    pub fn write(
        &self,
        issued: &[IssuedKey],
        orphans: &[PathBuf],
        oso_url: &str,
        templates: &Templates,
    ) -> anyhow::Result<Vec<PathBuf>> {
        for orphan in orphans {
            fs::remove_file(orphan).with_context(|| format!("removing the orphaned {}", orphan.display()))?;
        }
        let mut written = Vec::with_capacity(issued.len());
        for key in issued {
            match self.write_one(key, oso_url, templates) {
                Ok(path) => written.push(path),
                Err(e) => {
                    remove_all(&written);
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    fn write_one(&self, key: &IssuedKey, oso_url: &str, templates: &Templates) -> anyhow::Result<PathBuf> {
        let namespace = &key.organization.namespace;
        let (labels, annotations) = templates
            .get(&(namespace.clone(), key.api_key.clone()))
            .cloned()
            .unwrap_or_default();
        let spec = KeySecretSpec {
            namespace: namespace.clone(),
            secret_name: key.secret_name.clone(),
            api_key: key.api_key.clone(),
            organization: key.organization.name.clone(),
            environment: key.environment.clone(),
            oso_url: oso_url.to_owned(),
            extra_labels: labels,
            extra_annotations: annotations,
            owner: None,
        };
        let yaml = serde_norway::to_string(&key_secret(&spec, &key.token)).context("serialising a Secret")?;
        let path = self.path_for(namespace, &key.secret_name);
        let dir = path.parent().expect("a secret path has a folder");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {} (it is never overwritten)", path.display()))?;
        file.write_all(yaml.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        Ok(path)
    }
}

/// Best-effort cleanup after a failed apply.
pub fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a secret file of a failed apply");
        }
    }
}

enum FileState {
    Absent,
    Secret(Box<Secret>),
    Unreadable(String),
}

fn read_secret(path: &Path) -> FileState {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Absent,
        Err(e) => FileState::Unreadable(e.to_string()),
        Ok(text) => match serde_norway::from_str::<Secret>(&text) {
            Ok(secret) => FileState::Secret(Box::new(secret)),
            Err(e) => FileState::Unreadable(e.to_string()),
        },
    }
}
