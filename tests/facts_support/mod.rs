//! A small tenancy for the fact tests, reconciled through the real plan and store: organization `acme` with
//! environments `staging` (deletionPolicy Delete) and `qa`, a ReadWrite and a ReadOnly key on staging and a
//! ReadWrite key on qa. Plus helpers to build facts.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use orgkeeper::domain::facts::{Fact, FactFilter, Value, ValuePattern};
use orgkeeper::domain::*;
use orgkeeper::store::Store;

pub const NS: &str = "facts";

pub struct Tenancy {
    /// Environment name → id.
    pub environments: HashMap<String, String>,
    /// ApiKey name (`rw`, `ro`, `qa`) → the whole key.
    pub keys: HashMap<String, ApiKeyToken>,
}

impl Tenancy {
    pub fn env(&self, name: &str) -> &str {
        &self.environments[name]
    }

    pub fn bearer(&self, key: &str) -> String {
        format!("Bearer {}", self.keys[key].expose())
    }
}

pub fn declarations(with_staging: bool) -> Declarations {
    let env = |name: &str, policy: DeletionPolicy| EnvironmentDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        display_name: None,
        production: None,
        limits: LimitOverrides::default(),
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
    let mut declarations = Declarations {
        organizations: vec![OrganizationDecl {
            namespace: NS.into(),
            name: "acme".into(),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Growth,
                limits: LimitOverrides::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
        }],
        environments: vec![
            env("staging", DeletionPolicy::Delete),
            env("qa", DeletionPolicy::Retain),
        ],
        users: vec![],
        api_keys: vec![
            key("rw", "staging", Access::ReadWrite),
            key("ro", "staging", Access::ReadOnly),
            key("qa", "qa", Access::ReadWrite),
        ],
    };
    if !with_staging {
        declarations.environments.retain(|e| e.name != "staging");
        declarations.api_keys.retain(|k| k.environment != "staging");
    }
    declarations
}

/// Makes the store hold `declarations` (the same path `orgkeeper apply` takes); returns the keys it issued.
pub async fn reconcile(store: &Store, declarations: &Declarations) -> Vec<orgkeeper::store::IssuedKey> {
    let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
    let stored = store.load_organizations(&keys).await.unwrap();
    let plan = plan(declarations, &stored, &KnownAccounts::default());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    outcome.issued
}

pub async fn tenancy(store: &Store) -> Tenancy {
    let issued = reconcile(store, &declarations(true)).await;
    let org = store
        .load_organizations(&[OrgKey::new(NS, "acme")])
        .await
        .unwrap()
        .remove(&OrgKey::new(NS, "acme"))
        .unwrap();
    Tenancy {
        environments: org
            .environments
            .iter()
            .map(|e| (e.name.clone(), e.id.clone()))
            .collect(),
        keys: issued.into_iter().map(|k| (k.api_key, k.token)).collect(),
    }
}

pub fn v(type_: &str, id: &str) -> Value {
    Value {
        type_: type_.into(),
        id: id.into(),
    }
}

pub fn fact(predicate: &str, args: &[(&str, &str)]) -> Fact {
    Fact {
        predicate: predicate.into(),
        args: args.iter().map(|(t, i)| v(t, i)).collect(),
    }
}

pub fn role(user: &str, role: &str, org: &str) -> Fact {
    fact("has_role", &[("User", user), ("String", role), ("Organization", org)])
}

/// A value pattern: `None` is a wildcard.
pub fn p(type_: Option<&str>, id: Option<&str>) -> ValuePattern {
    ValuePattern {
        type_: type_.map(Into::into),
        id: id.map(Into::into),
    }
}

pub fn pattern(predicate: &str, args: Vec<ValuePattern>) -> FactFilter {
    FactFilter::pattern(predicate.into(), args)
}

pub fn exactly(fact: &Fact) -> FactFilter {
    FactFilter::pattern(fact.predicate.clone(), fact.args.iter().map(Into::into).collect())
}

/// A read constraining some positions.
pub fn query(predicate: &str, constraints: &[(usize, ValuePattern)]) -> FactFilter {
    FactFilter::query(
        predicate.into(),
        constraints.iter().cloned().collect::<BTreeMap<_, _>>(),
    )
}

pub fn all(predicate: &str) -> FactFilter {
    query(predicate, &[])
}

/// A PostgreSQL server of the test's own (tests/postgres/up.sh in a directory of its own), which the test
/// may stop and start again without disturbing the suite's shared server. Removed when dropped.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    pub url: String,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let up = std::process::Command::new(Self::script("up.sh"))
            .env("ORGKEEPER_PG_DIR", Self::state(&dir))
            .output()
            .unwrap();
        assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
        let url = String::from_utf8(up.stdout).unwrap().lines().last().unwrap().to_owned();
        OwnPostgres { dir, url }
    }

    /// Kills the server the way a crash or a failover would: every connection drops, new ones are refused.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn restart(&self) {
        let state = Self::state(&self.dir);
        let port = std::fs::read_to_string(state.join("port")).unwrap();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
            port.trim(),
            state.display()
        );
        let log = state.join("server.log").display().to_string();
        self.pg_ctl(&["-w", "-t", "60", "-l", &log, "start", "-o", &options]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = which_pg_ctl();
        let data = Self::state(&self.dir).join("data").display().to_string();
        let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        // PostgreSQL refuses to run as root; up.sh runs it as the postgres user, and so does this.
        let mut command = if root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            command
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let output = command.args(["-D", &data]).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn state(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("pg")
    }

    fn script(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/postgres")
            .join(name)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script("down.sh"))
            .env("ORGKEEPER_PG_DIR", Self::state(&self.dir))
            .output();
    }
}

fn which_pg_ctl() -> std::path::PathBuf {
    let on_path = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8(on_path.stdout).unwrap();
    let found = found.lines().next().unwrap_or_default();
    assert!(!found.is_empty(), "pg_ctl not found: install PostgreSQL");
    found.into()
}
