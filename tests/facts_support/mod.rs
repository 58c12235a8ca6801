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
