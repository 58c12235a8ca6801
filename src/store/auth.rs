//! What the data plane needs to authenticate a request: every live key's hash and access, and every
//! environment's effective limits. Read in two statements, whatever the size of the store.

// foldhash, not SipHash: the sidecar looks up every request's key and environment here, and the maps are
// built from the store, so a client cannot choose what goes in them (only what is looked up).
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};

use foldhash::HashMap;

use sqlx::{Any, Row as _};

use super::snapshot::{limit_columns, limits_from_row};
use super::{QueryContext, Store, StoreError};
use crate::domain::{Access, EffectiveLimits, KeyHash, PlanTier};

/// A live key as the data plane sees it.
#[derive(Clone, Debug)]
pub struct LiveKey {
    pub key_id: String,
    pub environment_id: String,
    pub access: Access,
    pub hash: KeyHash,
    /// From when the key is refused (seconds since the epoch); `None`: never.
    pub expires_at: Option<i64>,
    /// When the key was last used by this process and not yet gathered (not read from the store: the key
    /// ring fills it on the request path and carries it over to the next snapshot).
    pub last_use: KeyUseCell,
    /// The key's environment, linked when the key ring installs the snapshot: one lookup per request
    /// instead of two.
    pub environment: Option<Arc<EnvironmentLimits>>,
}

/// The latest use of one key not yet gathered for writing (seconds since the epoch; 0: none). Shared by
/// the snapshots that hold the key, so noting a use is one atomic operation on the entry the key check
/// already found, with no second lookup.
#[derive(Clone, Debug, Default)]
pub struct KeyUseCell(Arc<AtomicI64>);

impl KeyUseCell {
    /// Notes a use at `at`. A plain load first: within the same second nothing is written and the cache
    /// line stays shared.
    pub fn note(&self, at: i64) {
        if self.0.load(Ordering::Relaxed) < at {
            self.0.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// Takes the use noted since the last call, if any.
    pub fn take(&self) -> Option<i64> {
        if self.0.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.0.swap(0, Ordering::Relaxed)).filter(|at| *at > 0)
    }

    /// Makes `self` the same cell as `other` (a key kept across snapshots keeps its pending use).
    pub fn share(&mut self, other: &KeyUseCell) {
        self.0 = other.0.clone();
    }
}

/// An environment as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentLimits {
    pub environment_id: String,
    pub organization_id: String,
    /// `namespace/organization/environment`, for metrics and logs.
    pub label: String,
    pub limits: EffectiveLimits,
}

/// Everything the data plane needs, at one store revision.
#[derive(Clone, Debug, Default)]
pub struct AuthSnapshot {
    pub revision: i64,
    pub keys: HashMap<String, LiveKey>,
    /// Shared with every request's [`crate::auth::Principal`] (one reference count, not three strings copied).
    pub environments: HashMap<String, Arc<EnvironmentLimits>>,
}

/// Every environment with its organization's plan and both layers of limit overrides.
static SELECT_ENVIRONMENT_LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.id AS environment_id, e.organization_id, o.namespace, o.name AS organization, \
         e.name AS environment, o.plan, {}, {} \
         FROM environments e JOIN organizations o ON o.id = e.organization_id",
        limit_columns("o.", "o_"),
        limit_columns("e.", ""),
    )
});

impl Store {
    pub async fn load_auth_snapshot(&self) -> Result<AuthSnapshot, StoreError> {
        let mut tx = self.pool().begin().await.context("starting a read transaction")?;
        self.count(3);
        let revision: i64 = sqlx::query_scalar::<Any, i64>("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .context("reading the store revision")?;
        let environments = sqlx::query::<Any>(sqlx::AssertSqlSafe(SELECT_ENVIRONMENT_LIMITS.as_str()))
            .fetch_all(&mut *tx)
            .await
            .context("reading environment limits")?
            .iter()
            .map(|row| {
                let plan: String = row.try_get("plan").context("reading environment limits")?;
                let plan: PlanTier = plan.parse().map_err(StoreError::Corrupt)?;
                let organization = limits_from_row(row, "o_")?;
                let environment = limits_from_row(row, "")?;
                let id: String = row.try_get("environment_id").context("reading environment limits")?;
                let label = format!(
                    "{}/{}/{}",
                    row.try_get::<String, _>("namespace")
                        .context("reading environment limits")?,
                    row.try_get::<String, _>("organization")
                        .context("reading environment limits")?,
                    row.try_get::<String, _>("environment")
                        .context("reading environment limits")?,
                );
                Ok((
                    id.clone(),
                    Arc::new(EnvironmentLimits {
                        environment_id: id,
                        organization_id: row.try_get("organization_id").context("reading environment limits")?,
                        label,
                        limits: EffectiveLimits::resolve(plan, &organization, &environment),
                    }),
                ))
            })
            .collect::<Result<HashMap<_, _>, StoreError>>()?;
        let keys = sqlx::query::<Any>(
            "SELECT key_id, environment_id, access, secret_hash, expires_at FROM api_keys WHERE state = 'live'",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading live keys")?
        .iter()
        .map(|row| {
            let key_id: String = row.try_get("key_id").context("reading live keys")?;
            let access: String = row.try_get("access").context("reading live keys")?;
            let hash: String = row.try_get("secret_hash").context("reading live keys")?;
            let key = LiveKey {
                key_id: key_id.clone(),
                environment_id: row.try_get("environment_id").context("reading live keys")?,
                access: access.parse().map_err(StoreError::Corrupt)?,
                hash: KeyHash::from_hex(&hash).ok_or_else(|| StoreError::Corrupt("a key hash".into()))?,
                expires_at: row.try_get("expires_at").context("reading live keys")?,
                last_use: KeyUseCell::default(),
                environment: None,
            };
            Ok((key_id, key))
        })
        .collect::<Result<HashMap<_, _>, StoreError>>()?;
        tx.commit().await.context("finishing a read transaction")?;
        Ok(AuthSnapshot {
            revision,
            keys,
            environments,
        })
    }
}
