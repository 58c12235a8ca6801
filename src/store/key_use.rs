//! When each API key was last used, for finding keys nobody uses (cleanup candidates) and showing it.
//!
//! The data plane records uses in batches, off the request path. The record is coarse on purpose: a key's
//! time moves only when it is at least [`KEY_USE_RESOLUTION`] newer than the stored one, so however often a
//! key is used and recorded, the store gets at most one write per key per minute. Recording use leaves the
//! store revision alone: it is not tenancy, and bumping the revision would make every sidecar reload its
//! keys every minute.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{Any, Row as _};

use super::sql::Sql;
use super::{QueryContext, Row, Store, StoreError};
use crate::domain::{Access, KeyState, OrgKey};

/// How stale a key's last-used time may be.
pub const KEY_USE_RESOLUTION: Duration = Duration::from_secs(60);

/// Keys per UPDATE: two bound values each, well under both backends' parameter limits.
const KEYS_PER_STATEMENT: usize = 500;

/// A key as `orgkeeper keys list` shows it. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub key_id: String,
    pub organization: OrgKey,
    pub environment: String,
    /// The ApiKey resource's name.
    pub api_key: String,
    pub access: Access,
    pub state: KeyState,
    pub issued_at: i64,
    /// `None`: never seen in use.
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Who revoked it outside Git (`keys revoke`), and why; `None` for revocations declared in Git.
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
    /// From when data planes refuse it; `None`: never.
    pub expires_at: Option<i64>,
}

impl KeyRecord {
    /// A live key nobody has used for `idle` (counting from its issuance when it was never used): a
    /// candidate for cleanup. Revoked and pending keys are not: nothing can use them.
    /// Whether it is past its expiry time at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    pub fn is_unused_for(&self, idle: Duration, now: i64) -> bool {
        let idle = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
        self.state == KeyState::Live && self.last_used_at.unwrap_or(self.issued_at) <= now.saturating_sub(idle)
    }
}

impl Store {
    /// Records that each key was used at its time (seconds since the epoch). A key's stored time moves only
    /// when the new one is at least [`KEY_USE_RESOLUTION`] later; unknown keys are skipped. Returns how many
    /// keys were written. One statement per [`KEYS_PER_STATEMENT`] keys; the store revision is unchanged.
    pub async fn record_key_use<K: AsRef<str>>(&self, uses: &[(K, i64)]) -> Result<u64, StoreError> {
        // The latest use of each key: a key listed twice is one row of the UPDATE.
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for (key_id, at) in uses {
            let entry = latest.entry(key_id.as_ref()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        let resolution = i64::try_from(KEY_USE_RESOLUTION.as_secs()).unwrap_or(i64::MAX);
        let latest: Vec<(&str, i64)> = latest.into_iter().collect();
        let mut written = 0;
        for chunk in latest.chunks(KEYS_PER_STATEMENT) {
            // VALUES names its columns column1, column2 on both backends.
            let mut sql = Sql::default();
            sql.push("UPDATE api_keys SET last_used_at = used.column2 FROM (VALUES ");
            for (i, (key_id, at)) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.bind(*key_id);
                sql.push(", ");
                sql.bind(*at);
                sql.push(")");
            }
            sql.push(") AS used WHERE api_keys.key_id = used.column1 AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at <= used.column2 - ");
            sql.bind(resolution);
            sql.push(")");
            self.count_write(1);
            written += sql
                .build()
                .execute(self.pool())
                .await
                .context("recording key use")?
                .rows_affected();
        }
        Ok(written)
    }

    /// Every key in the store (live, pending and revoked), by organization, environment and name.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.count(1);
        sqlx::query::<Any>(
            "SELECT k.key_id, o.namespace, o.name AS organization, e.name AS environment, k.resource_name, \
             k.access, k.state, k.created_at, k.last_used_at, k.revoked_at, k.revoked_by, k.revoked_reason, \
             k.expires_at \
             FROM api_keys k JOIN organizations o ON o.id = k.organization_id \
             JOIN environments e ON e.id = k.environment_id \
             ORDER BY o.namespace, o.name, e.name, k.resource_name",
        )
        .fetch_all(self.pool())
        .await
        .context("listing keys")?
        .iter()
        .map(key_record)
        .collect()
    }
}

fn key_record(row: &Row) -> Result<KeyRecord, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { row.try_get(column).context("reading keys") };
    let corrupt = |column: &str, e: String| StoreError::Corrupt(format!("api_keys.{column}: {e}"));
    Ok(KeyRecord {
        key_id: text("key_id")?,
        organization: OrgKey::new(&text("namespace")?, &text("organization")?),
        environment: text("environment")?,
        api_key: text("resource_name")?,
        access: text("access")?.parse().map_err(|e| corrupt("access", e))?,
        state: text("state")?.parse().map_err(|e| corrupt("state", e))?,
        issued_at: row.try_get("created_at").context("reading keys")?,
        last_used_at: row.try_get("last_used_at").context("reading keys")?,
        revoked_at: row.try_get("revoked_at").context("reading keys")?,
        revoked_by: row.try_get("revoked_by").context("reading keys")?,
        revoked_reason: row.try_get("revoked_reason").context("reading keys")?,
        expires_at: row.try_get("expires_at").context("reading keys")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: KeyState, issued_at: i64, last_used_at: Option<i64>) -> KeyRecord {
        KeyRecord {
            key_id: "k1".into(),
            organization: OrgKey::new("team", "acme"),
            environment: "production".into(),
            api_key: "backend".into(),
            access: Access::ReadWrite,
            state,
            issued_at,
            last_used_at,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_live_key_is_unused_when_its_last_use_or_issuance_is_old_enough() {
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400;
        assert!(key(KeyState::Live, 0, Some(now - 31 * 86_400)).is_unused_for(30 * day, now));
        assert!(!key(KeyState::Live, 0, Some(now - 29 * 86_400)).is_unused_for(30 * day, now));
        assert!(
            key(KeyState::Live, now - 31 * 86_400, None).is_unused_for(30 * day, now),
            "never used"
        );
        assert!(
            !key(KeyState::Live, now - 86_400, None).is_unused_for(30 * day, now),
            "issued yesterday"
        );
        assert!(
            !key(KeyState::Revoked, 0, None).is_unused_for(30 * day, now),
            "nothing to clean up"
        );
        assert!(!key(KeyState::Pending, 0, None).is_unused_for(30 * day, now));
    }
}
