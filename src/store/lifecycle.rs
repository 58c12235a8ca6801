//! A key's life outside a plan: revoking it by id and setting its expiry (incident response, without
//! waiting for a pull request), and the audit trail of every issuance, revocation, expiry change and
//! removal (`key_events`).
//!
//! Each audit row is written in the transaction that makes the change, so the trail and the keys never
//! disagree: a change rolled back leaves no row, a committed one always has its row. Rows name the key by
//! id and copy in its organization, environment and ApiKey (they outlive all three); the key itself is
//! never stored anywhere. Who made the change is the store's actor ([`Store::acting_as`]; by default the
//! OS user), and the Git revision is recorded when the writer knows it ([`StoreTx::set_git_revision`]).
//!
//! A revocation by id is final, like one declared in Git: no plan moves a revoked key back to live (the
//! planner refuses a declaration that would, and issuance never reuses a key id), and the row keeps who
//! revoked it and why (`revoked_by`, `revoked_reason`) until the ApiKey itself is removed.

use std::sync::Arc;

use serde::Serialize;
use sqlx::Row as _;

use super::apply::StoreTx;
use super::sql::Sql;
use super::{QueryContext, Row, Store, StoreError, now};
use crate::domain::{KeyState, OrgKey};

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyEventKind {
    /// Issued by a plan (the key's Secret is written in the same step).
    Issued,
    /// Revoked by a plan: `revoked: true` in Git, or its organization or environment released.
    Revoked,
    /// Revoked outside Git, by id (`orgkeeper keys revoke`).
    RevokedById,
    /// Its expiry time was set or cleared.
    ExpirySet,
    /// A rotation replaced it in its Secret with a newer key; it keeps working for the overlap.
    Rotated,
    /// Its record was removed: the ApiKey, its environment or its organization was deleted.
    Removed,
}

impl KeyEventKind {
    pub const ALL: [KeyEventKind; 6] = [
        KeyEventKind::Issued,
        KeyEventKind::Revoked,
        KeyEventKind::RevokedById,
        KeyEventKind::ExpirySet,
        KeyEventKind::Rotated,
        KeyEventKind::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyEventKind::Issued => "issued",
            KeyEventKind::Revoked => "revoked",
            KeyEventKind::RevokedById => "revoked-by-id",
            KeyEventKind::ExpirySet => "expiry-set",
            KeyEventKind::Rotated => "rotated",
            KeyEventKind::Removed => "removed",
        }
    }
}

impl std::str::FromStr for KeyEventKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        KeyEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("unknown key event {text:?}"))
    }
}

/// One row of the audit trail. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyEvent {
    pub at: i64,
    pub key_id: String,
    pub event: KeyEventKind,
    pub organization: OrgKey,
    pub environment: String,
    pub api_key: String,
    pub actor: String,
    pub reason: Option<String>,
    pub git_revision: Option<String>,
}

/// What [`Store::revoke_key_by_id`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The key was live or pending and is revoked now.
    Revoked,
    /// It was revoked already (at that time): nothing changed, the first revocation's record stands.
    AlreadyRevoked { at: Option<i64> },
}

/// Which keys an audit statement covers.
pub(super) enum Keys<'a> {
    Id(&'a str),
    UnrevokedId(&'a str),
    /// Every key of an environment (by id) not revoked yet.
    UnrevokedInEnvironment(&'a str),
    UnrevokedInOrganization(&'a str),
    InEnvironment(&'a str),
    InOrganization(&'a str),
}

/// The name the OS gives the user running this process (`USER`, `LOGNAME`), else `uid N`.
pub fn local_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|user| !user.trim().is_empty()))
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(metadata) => format!("uid {}", metadata.uid()),
            Err(_) => "unknown".to_owned(),
        })
}

impl Store {
    /// The same store, recording `actor` as who made each change in the audit trail.
    pub fn acting_as(mut self, actor: &str) -> Store {
        self.actor = Arc::from(actor);
        self
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Revokes a key by its id, outside any plan, recording `reason` and the store's actor. Unknown id:
    /// [`StoreError::UnknownKey`], nothing changed. Bumps the revision, so data planes drop the key within
    /// their refresh interval.
    pub async fn revoke_key_by_id(&self, key_id: &str, reason: &str) -> Result<Revocation, StoreError> {
        let mut tx = self.begin().await?;
        let revocation = tx.revoke_by_id(key_id, reason).await?;
        tx.commit().await?;
        Ok(revocation)
    }

    /// Sets (or with `None` clears) the time from which data planes refuse the key by themselves.
    pub async fn set_key_expiry(&self, key_id: &str, expires_at: Option<i64>, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.set_expiry(key_id, expires_at, reason).await?;
        tx.commit().await
    }

    /// The audit trail, oldest first: of one key, or of every key.
    pub async fn key_history(&self, key_id: Option<&str>) -> Result<Vec<KeyEvent>, StoreError> {
        let mut sql = Sql::default();
        sql.push(
            "SELECT occurred_at, key_id, event, namespace, organization, environment, api_key, actor, reason, \
             git_revision FROM key_events",
        );
        if let Some(key_id) = key_id {
            sql.push(" WHERE key_id = ");
            sql.bind(key_id);
        }
        sql.push(" ORDER BY id");
        self.count(1);
        sql.build()
            .fetch_all(self.pool())
            .await
            .context("reading the key history")?
            .iter()
            .map(key_event)
            .collect()
    }
}

impl StoreTx {
    /// Records the Git revision the changes of this transaction came from, in their audit rows.
    pub fn set_git_revision(&mut self, revision: Option<String>) {
        self.git_revision = revision;
    }

    /// Records `actor` instead of the store's as who made this transaction's changes (the controller names
    /// the GitOps application that applied the resources, which differs from one transaction to the next).
    pub fn set_actor(&mut self, actor: &str) {
        self.store = self.store.clone().acting_as(actor);
    }

    /// See [`Store::revoke_key_by_id`].
    pub async fn revoke_by_id(&mut self, key_id: &str, reason: &str) -> Result<Revocation, StoreError> {
        let (state, revoked_at) = self.key_state(key_id).await?;
        if state == KeyState::Revoked {
            return Ok(Revocation::AlreadyRevoked { at: revoked_at });
        }
        self.record(KeyEventKind::RevokedById, Some(reason), Keys::Id(key_id))
            .await?;
        let mut sql = Sql::default();
        sql.push("UPDATE api_keys SET state = 'revoked', revoked_at = ");
        sql.bind(now());
        sql.push(", revoked_by = ");
        sql.bind(self.store().actor());
        sql.push(", revoked_reason = ");
        sql.bind(reason);
        sql.push(" WHERE key_id = ");
        sql.bind(key_id);
        sql.push(" AND state <> 'revoked'");
        if self.execute(sql.build(), "revoking a key by id").await? == 0 {
            return Err(StoreError::ConcurrentApply {
                context: "revoking a key by id",
            });
        }
        Ok(Revocation::Revoked)
    }

    /// See [`Store::set_key_expiry`].
    pub async fn set_expiry(&mut self, key_id: &str, expires_at: Option<i64>, reason: &str) -> Result<(), StoreError> {
        self.key_state(key_id).await?;
        self.record(KeyEventKind::ExpirySet, Some(reason), Keys::Id(key_id))
            .await?;
        let mut sql = Sql::default();
        sql.push("UPDATE api_keys SET expires_at = ");
        sql.bind(expires_at);
        sql.push(" WHERE key_id = ");
        sql.bind(key_id);
        self.execute(sql.build(), "setting a key's expiry").await?;
        Ok(())
    }

    /// A key's state and revocation time; [`StoreError::UnknownKey`] when there is no such key.
    async fn key_state(&mut self, key_id: &str) -> Result<(KeyState, Option<i64>), StoreError> {
        let row = self
            .fetch_optional(
                sqlx::query("SELECT state, revoked_at FROM api_keys WHERE key_id = $1").bind(key_id.to_owned()),
                "finding a key",
            )
            .await?
            .ok_or_else(|| StoreError::UnknownKey {
                key_id: key_id.to_owned(),
            })?;
        let state: String = row.try_get("state").context("reading a key")?;
        let state = state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("api_keys.state: {e}")))?;
        Ok((state, row.try_get("revoked_at").context("reading a key")?))
    }

    /// Writes one audit row per key that `keys` selects, as it is now (call it before a change that
    /// removes or revokes the keys).
    pub(super) async fn record(
        &mut self,
        kind: KeyEventKind,
        reason: Option<&str>,
        keys: Keys<'_>,
    ) -> Result<u64, StoreError> {
        let mut sql = Sql::default();
        sql.push(
            "INSERT INTO key_events (occurred_at, key_id, event, namespace, organization, environment, api_key, \
             actor, reason, git_revision) SELECT ",
        );
        sql.bind(now());
        sql.push(", k.key_id, ");
        sql.bind(kind.as_str());
        sql.push(", o.namespace, o.name, e.name, k.resource_name, ");
        sql.bind(self.store().actor());
        sql.push(", ");
        sql.bind(reason.map(str::to_owned));
        sql.push(", ");
        sql.bind(self.git_revision.clone());
        sql.push(
            " FROM api_keys k JOIN organizations o ON o.id = k.organization_id \
             JOIN environments e ON e.id = k.environment_id WHERE ",
        );
        let (column, id, unrevoked) = match keys {
            Keys::Id(id) => ("k.key_id = ", id, false),
            Keys::UnrevokedId(id) => ("k.key_id = ", id, true),
            Keys::UnrevokedInEnvironment(id) => ("k.environment_id = ", id, true),
            Keys::UnrevokedInOrganization(id) => ("k.organization_id = ", id, true),
            Keys::InEnvironment(id) => ("k.environment_id = ", id, false),
            Keys::InOrganization(id) => ("k.organization_id = ", id, false),
        };
        sql.push(column);
        sql.bind(id);
        if unrevoked {
            sql.push(" AND k.state <> 'revoked'");
        }
        self.execute(sql.build(), "recording key history").await
    }
}

fn key_event(row: &Row) -> Result<KeyEvent, StoreError> {
    let text =
        |column: &'static str| -> Result<String, StoreError> { row.try_get(column).context("reading the key history") };
    let optional = |column: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get(column).context("reading the key history")
    };
    Ok(KeyEvent {
        at: row.try_get("occurred_at").context("reading the key history")?,
        key_id: text("key_id")?,
        event: text("event")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("key_events.event: {e}")))?,
        organization: OrgKey::new(&text("namespace")?, &text("organization")?),
        environment: text("environment")?,
        api_key: text("api_key")?,
        actor: text("actor")?,
        reason: optional("reason")?,
        git_revision: optional("git_revision")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_read_back_as_written() {
        for kind in KeyEventKind::ALL {
            assert_eq!(kind.as_str().parse::<KeyEventKind>(), Ok(kind));
        }
        assert!("deleted".parse::<KeyEventKind>().is_err());
    }

    #[test]
    fn the_local_actor_is_never_empty() {
        assert!(!local_actor().trim().is_empty());
    }
}
