//! Where `orgkeeper apply` writes issued keys: one Kubernetes Secret manifest per key, at
//! `<dir>/<namespace>/<secret>.yaml`, readable only by its owner (0600 in a 0700 folder), never overwritten.
//!
//! Each file says whose key it holds: the labels `orgkeeper.dev/organization`, `orgkeeper.dev/api-key` and
//! `orgkeeper.dev/key-id` (and its `metadata.namespace`). The rules about what may happen to a file are the
//! domain's (`domain::review_secrets`); this module only tells it what each file holds.
//!
//! Crash safety. A key file is written to a hidden temporary file in the same folder
//! (`.<secret>.yaml.orgkeeper-tmp`), synced, then linked to its final name (a link never replaces an
//! existing file); once every key is in place, each folder is synced, and only then does the transaction
//! commit. So a crash leaves either no file at the final path or a
//! complete one, never an empty or partial one:
//! - a crash before the link leaves only the temporary file, which the next apply removes;
//! - the link comes before the transaction that makes the key live commits, so a crash after it leaves a
//!   complete file of this ApiKey whose key never became live: the next apply sees that (the key id is not
//!   live in the store) and replaces the file with a fresh key;
//! - a 0-byte file at the final path holds no key (earlier versions could leave one after a crash between
//!   creating and writing the file): it counts as absent, and is replaced when its key is issued.
//!
//! Any other file in the way (not a Secret, not orgkeeper's, or holding another organization's or
//! ApiKey's key, or a live key) is never touched: it is a conflict that names both sides.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::crd::secret::{
    KeySecretSpec, LABEL_API_KEY, LABEL_KEY_ID, LABEL_MANAGED_BY, LABEL_ORGANIZATION, MANAGED_BY, key_secret,
};
use crate::domain::{
    OrgKey, Plan, Problem, Reason, RotationCompletion, SecretState, StoredOrganization, WriteOrder, review_secrets,
};
use crate::store::IssuedKey;

/// A key file is a few hundred bytes; anything much larger is not one of ours and is not read whole.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The suffix of the temporary file a key is written to before it is linked to its final name.
const TEMP_SUFFIX: &str = ".orgkeeper-tmp";

/// Set `ORGKEEPER_FAILPOINT` (the variable the controller's failpoints read too) to one of these to abort
/// `apply` at that step, so that tests prove a crash there is safe to resume. Unset, it costs a lookup per key.
pub mod failpoints {
    /// Half of a key file's bytes are in its temporary file.
    pub const PARTIAL_KEY_FILE: &str = "apply-partial-key-file";
    /// Every key file is in place; the transaction that makes the keys live has not committed.
    pub const BEFORE_COMMIT: &str = "apply-before-commit";
    /// Rotation: the new keys are live and incoming (committed); no key file holds them yet.
    pub const ROTATION_BEFORE_FILES: &str = "apply-rotation-before-files";
    /// Rotation: the key files hold the new keys (synced); the old keys are still current.
    pub const ROTATION_AFTER_FILES: &str = "apply-rotation-after-files";

    pub fn reached(step: &str) {
        if std::env::var("ORGKEEPER_FAILPOINT").as_deref() == Ok(step) {
            tracing::error!(failpoint = step, "failpoint reached: aborting");
            std::process::abort();
        }
    }
}

pub struct SecretsDir {
    root: PathBuf,
}

/// What the secrets folder says about a plan.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Files in the way of a key to issue, and live keys whose file holds something else. They block the plan.
    pub conflicts: Vec<Problem>,
    /// Files to remove before writing: left by an interrupted apply (this ApiKey's, key never live) or empty.
    pub stale: Vec<PathBuf>,
    /// Live keys whose file is gone. They are not re-issued silently.
    pub missing: Vec<Problem>,
    /// Things the user should fix that do not block the plan (a folder others can read).
    pub notices: Vec<String>,
    /// Rotations interrupted after their file was rewritten: only the last step is left.
    pub rotations: Vec<RotationCompletion>,
}

/// What an ApiKey asks of its Secret, by (namespace, ApiKey name).
pub type Templates = BTreeMap<(String, String), SecretShape>;

/// The extra labels and annotations an ApiKey asks for on its Secret, and whether it rotates (a rotating
/// ApiKey's Secret is not `immutable`, so that `kubectl apply` of the rotated file updates it in place).
#[derive(Clone, Debug, Default)]
pub struct SecretShape {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub rotates: bool,
}

/// What is at a key file's path.
enum FileState {
    Absent,
    /// A regular file of 0 bytes: holds no key.
    Empty,
    /// orgkeeper's key file for (organization, ApiKey), holding this key id.
    Key {
        organization: OrgKey,
        api_key: String,
        key_id: String,
    },
    /// Anything else: not a regular file, too large, not a Secret, or not written by orgkeeper.
    Foreign,
}

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

    /// Checks every key the plan issues against the files in the folder, and every live key for its file,
    /// by the domain's rules. Returns the plan's changes minus issuance held back by a file in the way.
    pub fn inspect(&self, plan: &mut Plan, stored: &BTreeMap<OrgKey, StoredOrganization>) -> Inspection {
        let mut inspection = Inspection {
            notices: self.exposure_notices(),
            ..Default::default()
        };
        let paths = RefCell::new(BTreeMap::new());
        let empty = RefCell::new(BTreeSet::new());
        let review = review_secrets(
            std::mem::take(&mut plan.changes),
            stored.values(),
            WriteOrder::WriteFirst,
            |organization, secret_name, api_key| {
                let path = self.path_for(&organization.namespace, secret_name);
                let state = match read_key_file(&path) {
                    FileState::Absent => SecretState::Absent,
                    FileState::Empty => {
                        empty.borrow_mut().insert(path.clone());
                        SecretState::Absent
                    }
                    FileState::Key {
                        organization: owner,
                        api_key: holder,
                        key_id,
                    } if &owner == organization && holder == api_key => SecretState::Holds(key_id),
                    FileState::Key {
                        organization: owner,
                        api_key: holder,
                        ..
                    } => SecretState::HoldsAnother {
                        organization: owner,
                        api_key: holder,
                    },
                    FileState::Foreign => SecretState::Foreign,
                };
                paths
                    .borrow_mut()
                    .insert((organization.namespace.clone(), api_key.to_owned()), path);
                state
            },
        );
        plan.changes = review.changes;
        inspection.rotations = review.rotations;
        let paths = paths.into_inner();
        let with_path = |mut problem: Problem| {
            if let Some(path) = paths.get(&(problem.object.namespace.clone(), problem.object.name.clone())) {
                problem.message = format!("{} (key file {})", problem.message, path.display());
            }
            problem
        };
        for problem in review.problems {
            match problem.reason {
                Reason::SecretMissing => inspection.missing.push(with_path(problem)),
                _ => inspection.conflicts.push(with_path(problem)),
            }
        }
        let issued: BTreeSet<PathBuf> = plan
            .changes
            .iter()
            .filter_map(|change| match change {
                crate::domain::Change::IssueKey {
                    organization,
                    secret_name,
                    ..
                } => Some(self.path_for(&organization.namespace, secret_name)),
                _ => None,
            })
            .collect();
        inspection.stale = review
            .stale
            .iter()
            .map(|s| self.path_for(&s.organization.namespace, &s.secret_name))
            .chain(empty.into_inner().into_iter().filter(|path| issued.contains(path)))
            .collect();
        inspection
    }

    /// A key folder others can read exposes every key in it: say so (the keys themselves are 0600).
    fn exposure_notices(&self) -> Vec<String> {
        let mut folders = vec![self.root.clone()];
        if let Ok(entries) = fs::read_dir(&self.root) {
            let mut namespaces: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            namespaces.sort();
            folders.extend(namespaces);
        }
        folders
            .into_iter()
            .filter_map(|folder| {
                let mode = fs::metadata(&folder).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then(|| {
                    format!(
                        "the secrets folder {} is open to its group or others (mode {mode:04o}): it holds API keys; chmod 700 it",
                        folder.display()
                    )
                })
            })
            .collect()
    }

    /// Writes one Secret per issued key, each complete and synced before it appears under its name. On any
    /// failure the files written so far are removed and the error returned, so the caller can roll back
    /// with nothing left behind.
    pub fn write(
        &self,
        issued: &[IssuedKey],
        stale: &[PathBuf],
        oso_url: &str,
        templates: &Templates,
    ) -> anyhow::Result<Vec<PathBuf>> {
        for path in stale {
            remove_if_present(path).with_context(|| format!("removing the stale {}", path.display()))?;
        }
        let mut written = Vec::with_capacity(issued.len());
        // Rotated keys are written by [`Self::rotate`], after the transaction that makes them live.
        for key in issued.iter().filter(|key| key.rotation.is_none()) {
            match self.write_one(key, oso_url, templates) {
                Ok(path) => written.push(path),
                Err(e) => {
                    remove_all(&written);
                    return Err(e);
                }
            }
        }
        // The links (and removals) are durable once their folders are synced: once per folder, before the
        // caller commits.
        let folders: BTreeSet<&Path> = written.iter().chain(stale).filter_map(|p| p.parent()).collect();
        if let Err(e) = folders.into_iter().try_for_each(sync_dir) {
            remove_all(&written);
            return Err(e);
        }
        Ok(written)
    }

    /// Rotation step 2 for `orgkeeper apply`: rewrites the file of each rotated key (already live) to hold
    /// it. Each file is written whole to a temporary file, synced, and renamed over the old one (a rename
    /// replaces atomically: a reader sees the old key or the new one, never neither), then its folder is
    /// synced, all before the old key's overlap starts counting (the caller's next transaction).
    pub fn rotate(&self, issued: &[IssuedKey], oso_url: &str, templates: &Templates) -> anyhow::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for key in issued.iter().filter(|key| key.rotation.is_some()) {
            let path = self.write_whole(key, oso_url, templates, |temp, path| {
                fs::rename(temp, path).with_context(|| format!("replacing {} with the rotated key", path.display()))
            })?;
            sync_dir(path.parent().expect("a secret path has a folder"))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Writes the key's manifest to a temporary file beside its final path, synced, then moves it into place
    /// with `place(temp, final)`; the temporary file never outlives this call.
    fn write_whole(
        &self,
        key: &IssuedKey,
        oso_url: &str,
        templates: &Templates,
        place: impl FnOnce(&Path, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        let (yaml, path) = self.manifest(key, oso_url, templates)?;
        let dir = path.parent().expect("a secret path has a folder");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let temp = dir.join(format!(".{}.yaml{TEMP_SUFFIX}", key.secret_name));
        // A temporary file of ours left by a crash holds a key that never became live.
        remove_if_present(&temp).with_context(|| format!("removing the leftover {}", temp.display()))?;
        let written = write_synced(&temp, yaml.as_bytes()).and_then(|()| place(&temp, &path));
        let _ = fs::remove_file(&temp);
        written?;
        Ok(path)
    }

    /// A key's Secret manifest and the path it goes to (see [`SecretShape`]).
    fn manifest(&self, key: &IssuedKey, oso_url: &str, templates: &Templates) -> anyhow::Result<(String, PathBuf)> {
        let namespace = &key.organization.namespace;
        let shape = templates
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
            extra_labels: shape.labels,
            extra_annotations: shape.annotations,
            owner: None,
        };
        let mut secret = key_secret(&spec, &key.token);
        if shape.rotates || key.rotation.is_some() {
            secret.immutable = None;
        }
        let yaml = serde_norway::to_string(&secret).context("serialising a Secret")?;
        Ok((yaml, self.path_for(namespace, &key.secret_name)))
    }

    fn write_one(&self, key: &IssuedKey, oso_url: &str, templates: &Templates) -> anyhow::Result<PathBuf> {
        self.write_whole(key, oso_url, templates, |temp, path| {
            // A hard link fails if the name exists: the final file is never replaced, only created whole.
            fs::hard_link(temp, path).with_context(|| format!("creating {} (it is never overwritten)", path.display()))
        })
    }
}

/// Creates `path` (0600, never an existing file), writes `bytes` and syncs them.
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    file.write_all(first)
        .with_context(|| format!("writing {}", path.display()))?;
    failpoints::reached(failpoints::PARTIAL_KEY_FILE);
    file.write_all(rest)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))
}

/// Makes a link or removal in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the folder {}", dir.display()))
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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

/// The part of a key file that says whose key it holds; the key itself is never read back.
#[derive(Deserialize)]
struct KeyFileHead {
    metadata: KeyFileMeta,
}

#[derive(Deserialize)]
struct KeyFileMeta {
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What the file at `path` is; only a regular file (not a link, a FIFO or a device) is ever read.
fn read_key_file(path: &Path) -> FileState {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileState::Absent,
        Err(_) => return FileState::Foreign,
        Ok(meta) => meta,
    };
    if !meta.file_type().is_file() || meta.len() > MAX_KEY_FILE_BYTES {
        return FileState::Foreign;
    }
    if meta.len() == 0 {
        return FileState::Empty;
    }
    let mut text = String::new();
    let read = File::open(path).and_then(|f| f.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text));
    if read.is_err() {
        return FileState::Foreign;
    }
    let Ok(secret) = serde_norway::from_str::<KeyFileHead>(&text) else {
        return FileState::Foreign;
    };
    let labels = secret.metadata.labels;
    let label = |name: &str| labels.get(name).cloned();
    match (
        label(LABEL_MANAGED_BY).as_deref() == Some(MANAGED_BY),
        secret.metadata.namespace,
        label(LABEL_ORGANIZATION),
        label(LABEL_API_KEY),
        label(LABEL_KEY_ID),
    ) {
        (true, Some(namespace), Some(organization), Some(api_key), Some(key_id)) => FileState::Key {
            organization: OrgKey::new(&namespace, &organization),
            api_key,
            key_id,
        },
        _ => FileState::Foreign,
    }
}
