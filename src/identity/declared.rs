//! Declared accounts: accounts listed in Git as ConfigMaps labelled `orgkeeper.dev/accounts: "true"`. Every
//! value in the ConfigMap's `data` is an account list: one `github:USERNAME` or `google:EMAIL` per line,
//! `#` starts a comment. Several ConfigMaps add up.
//!
//! Why a ConfigMap and not a resource of its own: it needs no CRD or extra RBAC verbs, every GitOps tool
//! already syncs ConfigMaps, and a list of names is exactly what a ConfigMap is for.
//!
//! Who may declare: a declared account skips the provider check, so the controller reads these ConfigMaps
//! from one namespace only (`--declared-accounts-namespace`, the chart's release namespace), never from the
//! tenants' namespaces where Users are written. `orgkeeper plan/apply` read them from the manifests folder,
//! which is trusted as a whole.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Account, ListError, parse_account_list};
use crate::manifests::{FileText, LoadLimits, Location, ManifestError};

/// The label that marks a ConfigMap as an account list.
pub const LABEL: &str = "orgkeeper.dev/accounts";

/// How long a plan waits for the first list of declared accounts before going on without them.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// The declared accounts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeclaredAccounts(BTreeSet<Account>);

impl DeclaredAccounts {
    pub fn contains(&self, account: &Account) -> bool {
        self.0.contains(account)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Account> for DeclaredAccounts {
    fn from_iter<I: IntoIterator<Item = Account>>(iter: I) -> Self {
        DeclaredAccounts(iter.into_iter().collect())
    }
}

/// Where the directory reads declared accounts from: a fixed list (the CLI), or one a watch keeps current
/// (the controller). Clones share the list.
#[derive(Clone, Debug)]
pub struct DeclaredSource {
    current: Arc<watch::Sender<Option<Arc<DeclaredAccounts>>>>,
}

impl Default for DeclaredSource {
    /// No declared accounts.
    fn default() -> Self {
        DeclaredSource::fixed(DeclaredAccounts::default())
    }
}

impl DeclaredSource {
    pub fn fixed(accounts: DeclaredAccounts) -> Self {
        DeclaredSource {
            current: Arc::new(watch::Sender::new(Some(Arc::new(accounts)))),
        }
    }

    /// A source that has no list until `watch` delivers the first one.
    pub fn watched() -> Self {
        DeclaredSource {
            current: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Settles on "none declared" when no list came yet.
    fn set_if_unlisted(&self) {
        self.current.send_if_modified(|current| {
            let unlisted = current.is_none();
            if unlisted {
                *current = Some(Arc::default());
            }
            unlisted
        });
    }

    pub fn set(&self, accounts: DeclaredAccounts) {
        self.current.send_replace(Some(Arc::new(accounts)));
    }

    /// The current list; right after start, waits (boundedly) for the first one so that declared users are
    /// not reported unknown only because the watch has not listed yet.
    pub async fn snapshot(&self) -> Arc<DeclaredAccounts> {
        let mut receiver = self.current.subscribe();
        match tokio::time::timeout(FIRST_LIST_WAIT, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(current)) => current.clone().unwrap_or_default(),
            _ => {
                tracing::warn!("declared accounts are not listed yet; planning without them");
                Arc::default()
            }
        }
    }
}

/// The accounts a ConfigMap declares, and its lines that are not accounts (with the data key they are in).
pub fn accounts_of(config_map: &ConfigMap) -> (Vec<Account>, Vec<(String, ListError)>) {
    let mut accounts = Vec::new();
    let mut errors = Vec::new();
    for (key, text) in config_map.data.iter().flatten() {
        let (mut found, bad) = parse_account_list(text);
        accounts.append(&mut found);
        errors.extend(bad.into_iter().map(|e| (key.clone(), e)));
    }
    (accounts, errors)
}

fn is_account_list(config_map: &ConfigMap) -> bool {
    config_map
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL))
        .is_some_and(|value| value == "true")
}

/// The declared accounts in a folder (or file) of manifests: every labelled ConfigMap. Any line that is
/// not an account is an error (with its file and line), so a typo never silently drops someone.
pub fn load_dir(dir: &Path, limits: LoadLimits) -> Result<DeclaredAccounts, Vec<ManifestError>> {
    // The same files, read under the same bounds, as the manifest loader (which reports what it skips).
    let (files, _skipped) = crate::manifests::yaml_files(dir).map_err(|e| vec![e])?;
    let mut accounts = BTreeSet::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match crate::manifests::read_bounded(&file, limits.max_file_bytes) {
            Ok(FileText::Text(text)) => text,
            Ok(FileText::NotRegular) => continue,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let starts = crate::manifests::document_start_lines(&text);
        for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            // Syntax errors are the manifest loader's to report, with their position.
            let Ok(value) = serde::Deserialize::deserialize(document) else {
                break;
            };
            let value: Value = value;
            if value.get("kind").and_then(Value::as_str) != Some("ConfigMap")
                || value.get("apiVersion").and_then(Value::as_str) != Some("v1")
            {
                continue;
            }
            let location = Location {
                file: file.clone(),
                line: starts.get(index).copied().unwrap_or(1),
            };
            let Ok(config_map) = serde_json::from_value::<ConfigMap>(value) else {
                continue;
            };
            if !is_account_list(&config_map) {
                continue;
            }
            let (found, bad) = accounts_of(&config_map);
            accounts.extend(found);
            let name = format!(
                "ConfigMap {}/{}",
                config_map.metadata.namespace.as_deref().unwrap_or("default"),
                config_map.metadata.name.as_deref().unwrap_or_default()
            );
            errors.extend(bad.into_iter().map(|(key, e)| ManifestError::Invalid {
                location: location.clone(),
                object: name.clone(),
                field: format!("data.{key}"),
                message: e.to_string(),
            }));
        }
    }
    if errors.is_empty() {
        Ok(DeclaredAccounts(accounts))
    } else {
        Err(errors)
    }
}

/// Keeps `source` equal to the labelled ConfigMaps of `namespace` until `shutdown`. A line that is not an
/// account is logged (with the ConfigMap, key and line) and skipped: one typo must not hide everyone else.
pub async fn watch(client: Client, namespace: String, source: DeclaredSource, shutdown: CancellationToken) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let (reader, writer) = reflector::store();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().reflect(writer));
    tracing::info!(%namespace, label = %format!("{LABEL}=true"), "watching declared account lists");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, %namespace, "watching declared accounts failed; retrying with backoff");
                // Plans go on without declared accounts rather than wait for a watch that may need RBAC first.
                source.set_if_unlisted();
            }
            Some(Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                let mut accounts = BTreeSet::new();
                for config_map in reader.state() {
                    let (found, bad) = accounts_of(&config_map);
                    accounts.extend(found);
                    for (key, error) in bad {
                        tracing::warn!(
                            config_map = config_map.metadata.name.as_deref().unwrap_or_default(),
                            %namespace, key, %error,
                            "skipping a line that is not an account"
                        );
                    }
                }
                tracing::debug!(accounts = accounts.len(), "declared accounts updated");
                source.set(DeclaredAccounts(accounts));
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
        }
    }
}
