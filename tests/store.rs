//! The store, on SQLite and PostgreSQL alike: plans carried out through it converge, keys are stored only
//! as hashes, transactions are all or nothing, and a no-change reconcile writes nothing.

mod support;

use std::collections::BTreeMap;

use orgkeeper::domain::*;
use orgkeeper::store::Store;

const NS: &str = "team";

fn declarations() -> Declarations {
    let org = OrganizationDecl {
        namespace: NS.into(),
        name: "acme".into(),
        settings: OrganizationSettings {
            display_name: "Acme".into(),
            plan: PlanTier::Developer,
            limits: LimitOverrides {
                max_batch_facts: Some(50),
                ..Default::default()
            },
            deletion_policy: DeletionPolicy::Retain,
        },
    };
    let env = |name: &str, policy: DeletionPolicy| EnvironmentDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        display_name: None,
        production: None,
        limits: LimitOverrides {
            requests_per_minute: Some(100),
            ..Default::default()
        },
        deletion_policy: policy,
    };
    let key = |name: &str, env: &str, access: Access| ApiKeyDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        environment: env.into(),
        access,
        secret_name: format!("{name}-secret"),
        revoked: false,
        rotation: None,
        expiry: None,
    };
    Declarations {
        organizations: vec![org],
        environments: vec![
            env("staging", DeletionPolicy::Delete),
            env("qa", DeletionPolicy::Retain),
        ],
        users: vec![UserDecl {
            namespace: NS.into(),
            name: "alice".into(),
            organization: "acme".into(),
            account: "github:alice".parse().unwrap(),
            role: Role::Admin,
        }],
        api_keys: vec![
            key("rw", "staging", Access::ReadWrite),
            key("ro", "production", Access::ReadOnly),
            key("qa", "qa", Access::ReadWrite),
        ],
    }
}

async fn register_accounts(store: &Store) {
    let accounts: Vec<Account> = declarations().users.iter().map(|u| u.account.clone()).collect();
    store.add_accounts(&accounts).await.unwrap();
}

async fn reconcile(store: &Store, declarations: &Declarations) -> (Plan, Vec<orgkeeper::store::IssuedKey>) {
    let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
    let stored = store.load_organizations(&keys).await.unwrap();
    let accounts = store.known_accounts().await.unwrap();
    let plan = plan(declarations, &stored, &accounts);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    (plan, outcome.issued)
}

async fn stored(store: &Store) -> StoredOrganization {
    store
        .load_organizations(&[OrgKey::new(NS, "acme")])
        .await
        .unwrap()
        .remove(&OrgKey::new(NS, "acme"))
        .unwrap()
}

async fn a_reconciled_store_plans_nothing_and_writes_nothing(store: Store) {
    register_accounts(&store).await;
    let (first, issued) = reconcile(&store, &declarations()).await;
    assert!(!first.is_empty());
    assert_eq!(issued.len(), 3);
    let org = stored(&store).await;
    assert_eq!(org.settings.limits.max_batch_facts, Some(50));
    assert_eq!(
        org.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["development", "production", "qa", "staging"]
    );
    let staging = org.environments.iter().find(|e| e.name == "staging").unwrap();
    assert_eq!(staging.settings.limits.requests_per_minute, Some(100));
    assert_eq!(org.users.len(), 1);
    assert_eq!(org.users[0].role, Role::Admin);
    let ro = org.api_keys.iter().find(|k| k.resource_name == "ro").unwrap();
    assert_eq!(
        (ro.access, ro.state, ro.environment.as_str()),
        (Access::ReadOnly, KeyState::Live, "production")
    );

    let revision = store.revision().await.unwrap();
    let writes = store.writes();
    let (second, issued) = reconcile(&store, &declarations()).await;
    assert!(second.is_empty(), "{:?}", second.changes);
    assert!(issued.is_empty());
    assert_eq!(store.writes(), writes, "a no-change reconcile issues no writes");
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "and does not bump the revision"
    );
}

async fn only_a_hash_of_each_key_is_stored(store: Store) {
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let rows: Vec<(String, String, String, String, String)> =
        sqlx::query_as("SELECT key_id, resource_name, secret_name, access, secret_hash FROM api_keys")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let dump = format!("{rows:?}");
    let org = stored(&store).await;
    for key in &issued {
        let secret = key.token.expose().rsplit('_').next().unwrap().to_owned();
        assert!(!dump.contains(&secret), "the plaintext secret must not be in the store");
        assert!(dump.contains(&key.token.hash().to_hex()), "its hash is");
        let record = org.api_keys.iter().find(|k| k.key_id == key.token.key_id()).unwrap();
        assert_eq!(record.fingerprint, key.token.hash().fingerprint());
    }
}

async fn an_uncommitted_transaction_changes_nothing(store: Store) {
    let keys = [OrgKey::new(NS, "acme")];
    let plan = plan(&declarations(), &BTreeMap::new(), &KnownAccounts::default());
    let mut tx = store.begin().await.unwrap();
    tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    drop(tx);
    assert!(store.load_organizations(&keys).await.unwrap().is_empty());
    assert_eq!(store.revision().await.unwrap(), 0);
}

async fn removing_environments_follows_their_policy(store: Store) {
    register_accounts(&store).await;
    reconcile(&store, &declarations()).await;
    let mut declarations = declarations();
    declarations.environments.clear();
    declarations.api_keys.retain(|k| k.environment == "production");
    reconcile(&store, &declarations).await;
    let org = stored(&store).await;
    let names: Vec<&str> = org.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["development", "production", "qa"],
        "staging (Delete) is gone, qa (Retain) kept"
    );
    let qa = org.environments.iter().find(|e| e.name == "qa").unwrap();
    assert!(!qa.managed);
    assert!(
        org.api_keys.iter().all(|k| k.resource_name == "ro"),
        "removed keys are forgotten: {:?}",
        org.api_keys
    );
    // Declared again, the retained environment is adopted.
    reconcile(&store, &self::declarations()).await;
    assert!(
        stored(&store)
            .await
            .environments
            .iter()
            .find(|e| e.name == "qa")
            .unwrap()
            .managed
    );
}

async fn revoked_keys_stay_revoked(store: Store) {
    register_accounts(&store).await;
    reconcile(&store, &declarations()).await;
    let mut declarations = declarations();
    declarations.api_keys[0].revoked = true;
    let (plan, _) = reconcile(&store, &declarations).await;
    assert!(matches!(&plan.changes[..], [Change::RevokeKey { .. }]));
    let org = stored(&store).await;
    assert_eq!(
        org.api_keys.iter().find(|k| k.resource_name == "rw").unwrap().state,
        KeyState::Revoked
    );
    assert!(reconcile(&store, &declarations).await.0.is_empty());
}

async fn pending_keys_move_to_live_once(store: Store) {
    let plan = plan(&declarations(), &BTreeMap::new(), &KnownAccounts::default());
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Pending).await.unwrap();
    tx.commit().await.unwrap();
    let key_id = outcome.issued[0].token.key_id().to_owned();
    assert_eq!(
        stored(&store)
            .await
            .api_keys
            .iter()
            .find(|k| k.key_id == key_id)
            .unwrap()
            .state,
        KeyState::Pending
    );
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.set_key_state(&key_id, KeyState::Pending, KeyState::Live)
            .await
            .unwrap()
    );
    assert!(
        !tx.set_key_state(&key_id, KeyState::Pending, KeyState::Live)
            .await
            .unwrap(),
        "only once"
    );
    tx.commit().await.unwrap();
}

async fn accounts_register_idempotently(store: Store) {
    let alice: Account = "github:Alice".parse().unwrap();
    let bob: Account = "google:bob@example.com".parse().unwrap();
    assert_eq!(store.add_accounts(&[alice.clone(), bob.clone()]).await.unwrap(), 2);
    assert_eq!(store.add_accounts(std::slice::from_ref(&alice)).await.unwrap(), 0);
    assert_eq!(store.list_accounts().await.unwrap(), vec![alice.clone(), bob.clone()]);
    assert!(store.remove_account(&alice).await.unwrap());
    assert!(!store.remove_account(&alice).await.unwrap());
    assert!(!store.known_accounts().await.unwrap().contains(&alice));
}

async fn the_data_plane_sees_live_keys_and_effective_limits(store: Store) {
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let ring = orgkeeper::auth::KeyRing::default();
    assert!(ring.refresh(&store).await.unwrap());
    assert!(
        !ring.refresh(&store).await.unwrap(),
        "nothing changed, nothing reloaded"
    );
    let rw = issued.iter().find(|k| k.api_key == "rw").unwrap();
    let principal = ring
        .authenticate(Some(&format!("Bearer {}", rw.token.expose())))
        .unwrap();
    assert_eq!(principal.access, Access::ReadWrite);
    let limits = principal.limits();
    assert_eq!(limits.requests_per_minute, Some(100), "environment override");
    assert_eq!(limits.max_batch_facts, Some(50), "organization override");
    assert_eq!(limits.fact_writes_per_minute, Some(1_000), "plan default");
    assert_eq!(principal.environment.label, "team/acme/staging");
    // Revoking is visible after the next refresh.
    let mut declarations = declarations();
    declarations.api_keys[0].revoked = true;
    reconcile(&store, &declarations).await;
    assert!(ring.refresh(&store).await.unwrap());
    assert!(
        ring.authenticate(Some(&format!("Bearer {}", rw.token.expose())))
            .is_err()
    );
}

/// Use is recorded at most once per key per minute, in one statement for many keys, without bumping the
/// revision; the listing shows it, and only live keys idle long enough are cleanup candidates.
async fn key_use_is_recorded_at_most_once_a_minute(store: Store) {
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let id = |name: &str| {
        issued
            .iter()
            .find(|k| k.api_key == name)
            .unwrap()
            .token
            .key_id()
            .to_owned()
    };
    let (rw, ro) = (id("rw"), id("ro"));
    let revision = store.revision().await.unwrap();
    let t0 = 1_800_000_000;
    let statements = store.statements();
    let written = store
        .record_key_use(&[
            (rw.as_str(), t0),
            (ro.as_str(), t0 - 10),
            (rw.as_str(), t0 - 5),
            ("k_unknown", t0),
        ])
        .await
        .unwrap();
    assert_eq!(written, 2, "two known keys, each once");
    assert_eq!(store.statements() - statements, 1, "one statement for the batch");
    assert_eq!(
        store.record_key_use(&[(rw.as_str(), t0 + 59)]).await.unwrap(),
        0,
        "within the minute"
    );
    assert_eq!(
        store.record_key_use(&[(rw.as_str(), t0 - 600)]).await.unwrap(),
        0,
        "never backwards"
    );
    assert_eq!(
        store.record_key_use(&[(rw.as_str(), t0 + 60)]).await.unwrap(),
        1,
        "a minute later"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "use is not tenancy: no reload for anyone"
    );

    let keys = store.list_keys().await.unwrap();
    assert_eq!(keys.len(), 3);
    let last_used = |key_id: &str| keys.iter().find(|k| k.key_id == key_id).unwrap().last_used_at;
    assert_eq!(last_used(&rw), Some(t0 + 60));
    assert_eq!(last_used(&ro), Some(t0 - 10));
    assert_eq!(last_used(&id("qa")), None);
    let qa = keys.iter().find(|k| k.api_key == "qa").unwrap();
    assert_eq!((qa.environment.as_str(), qa.organization.name.as_str()), ("qa", "acme"));
    let idle: Vec<&str> = keys
        .iter()
        .filter(|k| k.is_unused_for(std::time::Duration::from_secs(30), t0 + 60))
        .map(|k| k.api_key.as_str())
        .collect();
    assert_eq!(
        idle,
        ["ro", "qa"],
        "rw was used at the clock's now; ro 70 s before; qa never, and was issued before t0"
    );
}

on_both_backends!(
    key_use_is_recorded_at_most_once_a_minute,
    the_data_plane_sees_live_keys_and_effective_limits,
    a_reconciled_store_plans_nothing_and_writes_nothing,
    only_a_hash_of_each_key_is_stored,
    an_uncommitted_transaction_changes_nothing,
    removing_environments_follows_their_policy,
    revoked_keys_stay_revoked,
    pending_keys_move_to_live_once,
    accounts_register_idempotently,
);

/// Runs each named `async fn(postgres: bool)` twice: on a SQLite file, then on PostgreSQL (for tests that need
/// two handles on one database, which `on_both_backends!`'s single store cannot give).
macro_rules! on_both_backends_with_two_writers {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$test(false).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$test(true).await
                }
            }
        )*
    };
}

on_both_backends_with_two_writers!(
    the_apply_that_loses_a_race_to_create_says_so,
    an_apply_planned_before_its_organization_was_deleted_says_so,
);

/// Two handles on one database, as two `orgkeeper apply` processes have. The SQLite file lives in the
/// returned directory (an in-memory database cannot be shared between pools).
async fn two_writers(postgres: bool) -> (Store, Store, Option<tempfile::TempDir>) {
    if postgres {
        let url = support::fresh_postgres_url().await;
        let first = Store::connect(&url).await.unwrap();
        (first, Store::connect(&url).await.unwrap(), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let first = Store::connect(&url).await.unwrap();
        (first, Store::connect(&url).await.unwrap(), Some(dir))
    }
}

fn assert_lost_the_race(error: &orgkeeper::store::StoreError) {
    assert!(
        matches!(error, orgkeeper::store::StoreError::ConcurrentApply { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "another apply is running against this store; nothing was changed"
    );
}

/// Both applies planned against the empty store and both create `acme`: the one that commits first wins,
/// the other (waiting on the first's lock meanwhile) is told another apply ran, and changes nothing.
async fn the_apply_that_loses_a_race_to_create_says_so(postgres: bool) {
    let (first, second, _dir) = two_writers(postgres).await;
    let plan = plan(&declarations(), &BTreeMap::new(), &KnownAccounts::default());
    let mut winner = first.begin().await.unwrap();
    let issued = winner.apply(&plan.changes, KeyState::Live).await.unwrap().issued;
    let loser = tokio::spawn({
        let changes = plan.changes.clone();
        async move {
            let mut tx = second.begin().await?;
            tx.apply(&changes, KeyState::Live).await?;
            tx.commit().await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!loser.is_finished(), "the second apply waits for the first one's lock");
    winner.commit().await.unwrap();
    let error = loser.await.unwrap().unwrap_err();
    assert_lost_the_race(&error);
    let org = stored(&first).await;
    let mut live: Vec<&str> = org.api_keys.iter().map(|k| k.key_id.as_str()).collect();
    let mut winners: Vec<&str> = issued.iter().map(|k| k.token.key_id()).collect();
    live.sort_unstable();
    winners.sort_unstable();
    assert_eq!(live, winners, "only the winner's keys are stored");
    assert_eq!(first.revision().await.unwrap(), 1, "one apply committed");
}

/// SQLite only: a transaction that has read the store cannot start writing while another apply holds the
/// write lock; SQLite refuses at once rather than wait ("database is locked", the raw error users saw), and
/// the loser is told another apply ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_whose_snapshot_went_stale_says_another_apply_ran() {
    let (first, second, _dir) = two_writers(false).await;
    register_accounts(&first).await;
    reconcile(&first, &declarations()).await;
    let current = first.load_organizations(&[OrgKey::new(NS, "acme")]).await.unwrap();
    let accounts = first.known_accounts().await.unwrap();
    let plan_for = |display_name: &str| {
        let mut declarations = declarations();
        declarations.organizations[0].settings.display_name = display_name.into();
        plan(&declarations, &current, &accounts)
    };
    let (a, b) = (plan_for("Acme A"), plan_for("Acme B"));
    assert!(matches!(&a.changes[..], [Change::UpdateOrganization { .. }]));
    let mut winner = first.begin().await.unwrap();
    winner.apply(&a.changes, KeyState::Live).await.unwrap();
    let loser = tokio::spawn(async move {
        let mut tx = second.begin().await?;
        tx.apply(&b.changes, KeyState::Live).await?;
        tx.commit().await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    winner.commit().await.unwrap();
    let error = loser.await.unwrap().unwrap_err();
    assert_lost_the_race(&error);
    assert_eq!(stored(&first).await.settings.display_name, "Acme A");
}

/// An apply planned while the organization existed, committed after another writer deleted it (the
/// controller's finalizer): told another apply ran, not that the store was edited by hand.
async fn an_apply_planned_before_its_organization_was_deleted_says_so(postgres: bool) {
    let (first, second, _dir) = two_writers(postgres).await;
    register_accounts(&first).await;
    reconcile(&first, &declarations()).await;
    let current = first.load_organizations(&[OrgKey::new(NS, "acme")]).await.unwrap();
    let mut renamed = declarations();
    renamed.organizations[0].settings.display_name = "Acme Renamed".into();
    let late = plan(&renamed, &current, &first.known_accounts().await.unwrap());
    let removal = plan_organization_removal(current.values().next(), DeletionPolicy::Delete);
    let mut tx = first.begin().await.unwrap();
    tx.apply(&removal, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = second.begin().await.unwrap();
    let error = tx.apply(&late.changes, KeyState::Live).await.unwrap_err();
    assert_lost_the_race(&error);
}

/// What a test's code logs, as text.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// It holds key hashes, facts and e-mail addresses: only its owner may read it, WAL and shared memory too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_store_is_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    register_accounts(&store).await;
    reconcile(&store, &declarations()).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("store.db{suffix}"));
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
    store.close().await;
}

/// An existing store others can read is used, with a warning that names the file and the fix.
#[tokio::test(flavor = "current_thread")]
async fn an_existing_store_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let logs = LogCapture::default();
    let store = {
        let _guard = tracing::subscriber::set_default(logs.subscriber());
        Store::connect(&format!("sqlite://{}", path.display())).await.unwrap()
    };
    store.close().await;
    let logs = logs.text();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains(&path.display().to_string()) && logs.contains("chmod 600"),
        "{logs}"
    );
    assert_eq!(mode_of(&path), 0o644, "the file is left as it is");

    // An owner-only store is not warned about.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let quiet = LogCapture::default();
    let store = {
        let _guard = tracing::subscriber::set_default(quiet.subscriber());
        Store::connect(&format!("sqlite://{}", path.display())).await.unwrap()
    };
    store.close().await;
    assert!(!quiet.text().contains("WARN"), "{}", quiet.text());
}

/// `orgkeeper keys list` prints every key; `--unused-for` only the live keys idle that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_shows_last_use_and_finds_the_idle_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await.unwrap();
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let rw = issued
        .iter()
        .find(|k| k.api_key == "rw")
        .unwrap()
        .token
        .key_id()
        .to_owned();
    let ro = issued
        .iter()
        .find(|k| k.api_key == "ro")
        .unwrap()
        .token
        .key_id()
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The read-only key was last used 40 days ago, the read-write key just now; qa never.
    let forty_days_ago = now - 40 * 86_400;
    store
        .record_key_use(&[(ro.as_str(), forty_days_ago), (rw.as_str(), now)])
        .await
        .unwrap();
    store.close().await;

    let keys = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(["keys", "list", "--database-url", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let all = keys(&[]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three keys:\n{all}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST USED") && lines[0].ends_with("STATE"),
        "{all}"
    );
    let line_of = |key_id: &str| *lines.iter().find(|l| l.starts_with(key_id)).unwrap();
    let last_used = k8s_openapi::jiff::Timestamp::from_second(forty_days_ago)
        .unwrap()
        .to_string();
    assert!(
        line_of(&ro).contains(&last_used) && line_of(&ro).contains("team/acme"),
        "{all}"
    );
    assert!(
        line_of(&ro).contains("ReadOnly") && line_of(&ro).ends_with("live"),
        "{all}"
    );
    let qa = lines.iter().find(|l| l.contains(" qa ")).unwrap();
    assert!(qa.contains("never"), "{all}");

    let idle = keys(&["--unused-for", "30d"]);
    assert_eq!(idle.lines().count(), 2, "only the read-only key:\n{idle}");
    assert!(idle.lines().nth(1).unwrap().starts_with(&ro), "{idle}");

    let json: serde_json::Value = serde_json::from_str(&keys(&["--unused-for", "30d", "-o", "json"])).unwrap();
    assert_eq!(json[0]["keyId"], ro.as_str());
    assert_eq!(json[0]["lastUsed"], last_used.as_str());
    assert!(
        keys(&["--unused-for", "60d"]).lines().count() == 1,
        "nobody idle for 60 days"
    );
}
