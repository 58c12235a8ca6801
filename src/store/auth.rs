//! What the data plane needs to authenticate a request: every live key's hash and access, and every
//! environment's effective limits. Read in two statements, whatever the size of the store.

// foldhash, not SipHash: the sidecar looks up every request's key and environment here, and the maps are
// built from the store, so a client cannot choose what goes in them (only what is looked up).
use foldhash::HashMap;

use sqlx::{Any, Row as _};

use super::snapshot::limits_from_row;
use super::{QueryContext, Store, StoreError};
use crate::domain::{Access, EffectiveLimits, KeyHash, LimitOverrides, PlanTier};

/// A live key as the data plane sees it.
#[derive(Clone, Debug)]
pub struct LiveKey {
    pub key_id: String,
    pub environment_id: String,
    pub access: Access,
    pub hash: KeyHash,
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
    pub environments: HashMap<String, EnvironmentLimits>,
}

impl Store {
    pub async fn load_auth_snapshot(&self) -> Result<AuthSnapshot, StoreError> {
        let mut tx = self.pool().begin().await.context("starting a read transaction")?;
        self.count(3);
        let revision: i64 = sqlx::query_scalar::<Any, i64>("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .context("reading the store revision")?;
        let environments = sqlx::query::<Any>(
            "SELECT e.id AS environment_id, e.organization_id, o.namespace, o.name AS organization, e.name AS environment, \
             o.plan, o.requests_per_minute AS o_rpm, o.fact_writes_per_minute AS o_fwpm, \
             o.max_concurrent_requests AS o_mcr, o.max_batch_facts AS o_mbf, o.max_write_body_bytes AS o_mwbb, \
             e.requests_per_minute, e.fact_writes_per_minute, e.max_concurrent_requests, e.max_batch_facts, \
             e.max_write_body_bytes \
             FROM environments e JOIN organizations o ON o.id = e.organization_id",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading environment limits")?
        .iter()
        .map(|row| {
            let plan: String = row.try_get("plan").context("reading environment limits")?;
            let plan: PlanTier = plan.parse().map_err(StoreError::Corrupt)?;
            let org_limit = |column: &'static str| -> Result<Option<u64>, StoreError> {
                let value: Option<i64> = row.try_get(column).context("reading organization limits")?;
                Ok(value.map(|v| v.max(0) as u64))
            };
            let organization = LimitOverrides {
                requests_per_minute: org_limit("o_rpm")?,
                fact_writes_per_minute: org_limit("o_fwpm")?,
                max_concurrent_requests: org_limit("o_mcr")?,
                max_batch_facts: org_limit("o_mbf")?,
                max_write_body_bytes: org_limit("o_mwbb")?,
            };
            let environment = limits_from_row(row)?;
            let id: String = row.try_get("environment_id").context("reading environment limits")?;
            let label = format!(
                "{}/{}/{}",
                row.try_get::<String, _>("namespace").context("reading environment limits")?,
                row.try_get::<String, _>("organization").context("reading environment limits")?,
                row.try_get::<String, _>("environment").context("reading environment limits")?,
            );
            Ok((
                id.clone(),
                EnvironmentLimits {
                    environment_id: id,
                    organization_id: row.try_get("organization_id").context("reading environment limits")?,
                    label,
                    limits: EffectiveLimits::resolve(plan, &organization, &environment),
                },
            ))
        })
        .collect::<Result<HashMap<_, _>, StoreError>>()?;
        let keys =
            sqlx::query::<Any>("SELECT key_id, environment_id, access, secret_hash FROM api_keys WHERE state = 'live'")
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
