//! Carrying out a plan inside one transaction: all of it or none of it.

use std::collections::HashMap;

use sqlx::{Any, Transaction};

use super::lifecycle::{KeyEventKind, Keys};
use super::sql::{Delete, NewRow, Sql, Update, insert};
use super::{Row, Store, StoreError, now};
use crate::domain::keys::new_id;
use crate::domain::rotation::{format_duration, format_rfc3339};
use crate::domain::*;

/// A key issued by [`StoreTx::apply`]. It holds the plaintext, which exists nowhere else: the caller must
/// write it to its Secret before (CLI) or right after (controller) the transaction commits.
#[derive(Debug)]
pub struct IssuedKey {
    pub organization: OrgKey,
    pub api_key: String,
    pub environment: String,
    pub environment_id: String,
    pub secret_name: String,
    pub access: Access,
    pub token: ApiKeyToken,
    /// Set when the key replaces the ApiKey's current key: it was recorded live and *incoming*, and
    /// becomes current with [`StoreTx::complete_rotation`] once its Secret holds it.
    pub rotation: Option<KeyRotation>,
}

/// The key an incoming key replaces, and how long that one keeps working afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    pub previous: String,
    pub overlap: i64,
}

/// What a transaction did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub issued: Vec<IssuedKey>,
    pub changes: usize,
}

/// A write transaction on the store. Dropping it without [`StoreTx::commit`] rolls everything back.
pub struct StoreTx {
    tx: Transaction<'static, Any>,
    pub(super) store: Store,
    wrote: bool,
    organization_ids: HashMap<OrgKey, String>,
    environment_ids: HashMap<(String, String), String>,
    /// The Git revision this transaction's changes came from, for the audit trail.
    pub(super) git_revision: Option<String>,
}

/// Rows per multi-row INSERT: large enough that 12,800 keys take a few dozen statements, small enough to
/// stay under both backends' bound-parameter limits.
const ROWS_PER_INSERT: usize = 400;

impl Store {
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| StoreError::from_write("starting a transaction", e))?;
        Ok(StoreTx {
            tx,
            store: self.clone(),
            wrote: false,
            organization_ids: HashMap::new(),
            environment_ids: HashMap::new(),
            git_revision: None,
        })
    }
}

impl StoreTx {
    /// Carries out `changes` in order. New keys are recorded in `issued_state`: `Live` when the caller
    /// writes their Secrets before committing (the CLI), `Pending` when it writes them after (the controller).
    pub async fn apply(&mut self, changes: &[Change], issued_state: KeyState) -> Result<ApplyOutcome, StoreError> {
        let mut outcome = ApplyOutcome {
            changes: changes.len(),
            ..Default::default()
        };
        let mut rest = changes;
        while let Some(first) = rest.first() {
            // Runs of the same bulk change become multi-row INSERTs.
            let run = rest
                .iter()
                .take_while(|c| std::mem::discriminant(*c) == std::mem::discriminant(first))
                .count();
            let (batch, tail) = rest.split_at(run);
            match first {
                Change::CreateEnvironment { .. } => self.create_environments(batch).await?,
                Change::AddUser { .. } => self.add_users(batch).await?,
                Change::IssueKey { .. } => outcome.issued.extend(self.issue_keys(batch, issued_state).await?),
                Change::RotateKey { .. } => {
                    for change in batch {
                        outcome.issued.push(self.start_rotation(change).await?);
                    }
                }
                _ => {
                    for change in batch {
                        self.apply_one(change).await?;
                    }
                }
            }
            rest = tail;
        }
        Ok(outcome)
    }

    /// Bumps the store revision (so readers notice) and commits.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.wrote {
            self.execute(
                sqlx::query("UPDATE store_revision SET revision = revision + 1 WHERE id = 1"),
                "bumping the revision",
            )
            .await?;
        }
        self.tx
            .commit()
            .await
            .map_err(|e| StoreError::from_write("committing", e))
    }

    /// Moves a key from one state to another; returns false when it was not in `from` (someone else moved it).
    pub async fn set_key_state(&mut self, key_id: &str, from: KeyState, to: KeyState) -> Result<bool, StoreError> {
        let update = Update::table("api_keys")
            .set("state", to.as_str())
            .set("revoked_at", (to == KeyState::Revoked).then(now))
            .filter("key_id", key_id)
            .filter("state", from.as_str());
        Ok(self.execute(update.build(), "changing a key's state").await? > 0)
    }

    /// Forgets a key record entirely (a pending key whose issuance is abandoned, or a removed ApiKey); its
    /// history stays.
    pub async fn delete_key(&mut self, key_id: &str) -> Result<bool, StoreError> {
        self.record(KeyEventKind::Removed, None, Keys::Id(key_id)).await?;
        let delete = Delete::from("api_keys").filter("key_id", key_id);
        Ok(self.execute(delete.build(), "deleting a key").await? > 0)
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) async fn fetch_optional<'q>(
        &mut self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
        context: &'static str,
    ) -> Result<Option<Row>, StoreError> {
        self.store.count(1);
        query
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_write(context, e))
    }

    pub(super) async fn execute<'q>(
        &mut self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
        context: &'static str,
    ) -> Result<u64, StoreError> {
        self.store.count_write(1);
        self.wrote = true;
        let result = query
            .execute(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_write(context, e))?;
        Ok(result.rows_affected())
    }

    /// One change that is not part of a bulk run: each is a named step below.
    async fn apply_one(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::CreateOrganization { organization, settings } => {
                self.create_organization(organization, settings).await
            }
            Change::UpdateOrganization { organization, to, .. } => self.update_organization(organization, to).await,
            Change::UpdateEnvironment {
                organization,
                environment,
                to,
                ..
            } => self.update_environment(organization, environment, to, true).await,
            Change::ResetEnvironment {
                organization,
                environment,
                to,
                ..
            } => self.update_environment(organization, environment, to, false).await,
            Change::DeleteEnvironment {
                organization,
                environment,
                ..
            } => self.delete_environment(organization, environment).await,
            Change::ReleaseEnvironment {
                organization,
                environment,
                ..
            } => self.release_environment(organization, environment).await,
            Change::UpdateUser {
                organization,
                account,
                to,
                resource,
                ..
            } => self.update_user(organization, account, *to, resource).await,
            Change::RemoveUser { organization, account } => self.remove_user(organization, account).await,
            Change::RevokeKey { key_id, .. } => self.revoke_key(key_id, "revoked: true in its ApiKey").await,
            Change::RetireKey { key_id, .. } => self.revoke_key(key_id, "its rotation overlap ended").await,
            Change::SetKeyExpiry { key_id, expires_at, .. } => {
                self.set_expiry(
                    key_id,
                    Some(*expires_at),
                    "spec.expiresAt or spec.expireAfter of its ApiKey",
                )
                .await
            }
            Change::RemoveKey { key_id, .. } => self.delete_key(key_id).await.map(drop),
            Change::DeleteOrganization { organization, .. } => self.delete_organization(organization).await,
            Change::ReleaseOrganization { organization, .. } => self.release_organization(organization).await,
            Change::CreateEnvironment { .. }
            | Change::AddUser { .. }
            | Change::IssueKey { .. }
            | Change::RotateKey { .. } => {
                unreachable!("bulk changes are applied in batches")
            }
        }
    }

    async fn create_organization(
        &mut self,
        organization: &OrgKey,
        settings: &OrganizationSettings,
    ) -> Result<(), StoreError> {
        let id = new_id();
        let now = now();
        let row = NewRow::default()
            .with("id", id.clone())
            .with("namespace", organization.namespace.clone())
            .with("name", organization.name.clone())
            .with("display_name", settings.display_name.clone())
            .with("plan", settings.plan.as_str())
            .with_limits(&settings.limits)
            .with("deletion_policy", settings.deletion_policy.as_str())
            .with("managed", true)
            .with("created_at", now)
            .with("updated_at", now);
        self.execute(insert("organizations", vec![row]), "creating an organization")
            .await?;
        self.organization_ids.insert(organization.clone(), id);
        Ok(())
    }

    /// Also adopts it: an organization declared again is managed again.
    async fn update_organization(
        &mut self,
        organization: &OrgKey,
        to: &OrganizationSettings,
    ) -> Result<(), StoreError> {
        let id = self.organization_id(organization).await?;
        let update = Update::table("organizations")
            .set("display_name", to.display_name.clone())
            .set("plan", to.plan.as_str())
            .set_limits(&to.limits)
            .set("deletion_policy", to.deletion_policy.as_str())
            .set("managed", true)
            .set("updated_at", now())
            .filter("id", id);
        self.execute(update.build(), "updating an organization").await?;
        Ok(())
    }

    /// Keys (and facts) go with the organization's environments, users and keys through ON DELETE CASCADE.
    async fn delete_organization(&mut self, organization: &OrgKey) -> Result<(), StoreError> {
        let id = self.organization_id(organization).await?;
        self.record(
            KeyEventKind::Removed,
            Some("its organization was deleted"),
            Keys::InOrganization(&id),
        )
        .await?;
        let delete = Delete::from("organizations").filter("id", id);
        self.execute(delete.build(), "deleting an organization").await?;
        self.organization_ids.remove(organization);
        Ok(())
    }

    /// Stops managing the organization and its environments, keeping their data; revokes every key.
    async fn release_organization(&mut self, organization: &OrgKey) -> Result<(), StoreError> {
        let id = self.organization_id(organization).await?;
        let now = now();
        self.record(
            KeyEventKind::Revoked,
            Some("its organization was released (deletionPolicy Retain)"),
            Keys::UnrevokedInOrganization(&id),
        )
        .await?;
        let revoke = revoke_keys(now).filter("organization_id", id.clone());
        self.execute(revoke.build(), "revoking a released organization's keys")
            .await?;
        let environments = Update::table("environments")
            .set("managed", false)
            .set("updated_at", now)
            .filter("organization_id", id.clone())
            .filter_sql("managed <> 0");
        self.execute(environments.build(), "releasing an organization's environments")
            .await?;
        let release = Update::table("organizations")
            .set("managed", false)
            .set("updated_at", now)
            .filter("id", id);
        self.execute(release.build(), "releasing an organization").await?;
        Ok(())
    }

    async fn update_environment(
        &mut self,
        organization: &OrgKey,
        environment: &str,
        to: &EnvironmentSettings,
        managed: bool,
    ) -> Result<(), StoreError> {
        let id = self.environment_id(organization, environment).await?;
        let update = Update::table("environments")
            .set("display_name", to.display_name.clone())
            .set("production", to.production)
            .set_limits(&to.limits)
            .set("deletion_policy", to.deletion_policy.as_str())
            .set("managed", managed)
            .set("updated_at", now())
            .filter("id", id);
        self.execute(update.build(), "updating an environment").await?;
        Ok(())
    }

    /// Keys (and facts) go with the environment through ON DELETE CASCADE.
    async fn delete_environment(&mut self, organization: &OrgKey, environment: &str) -> Result<(), StoreError> {
        let id = self.environment_id(organization, environment).await?;
        self.record(
            KeyEventKind::Removed,
            Some("its environment was deleted"),
            Keys::InEnvironment(&id),
        )
        .await?;
        let delete = Delete::from("environments").filter("id", id);
        self.execute(delete.build(), "deleting an environment").await?;
        Ok(())
    }

    /// Stops managing the environment, keeping its facts; revokes its keys.
    async fn release_environment(&mut self, organization: &OrgKey, environment: &str) -> Result<(), StoreError> {
        let id = self.environment_id(organization, environment).await?;
        let now = now();
        self.record(
            KeyEventKind::Revoked,
            Some("its environment was released (deletionPolicy Retain)"),
            Keys::UnrevokedInEnvironment(&id),
        )
        .await?;
        let revoke = revoke_keys(now).filter("environment_id", id.clone());
        self.execute(revoke.build(), "revoking a released environment's keys")
            .await?;
        let release = Update::table("environments")
            .set("managed", false)
            .set("updated_at", now)
            .filter("id", id);
        self.execute(release.build(), "releasing an environment").await?;
        Ok(())
    }

    async fn update_user(
        &mut self,
        organization: &OrgKey,
        account: &Account,
        role: Role,
        resource: &str,
    ) -> Result<(), StoreError> {
        let id = self.organization_id(organization).await?;
        let update = Update::table("users")
            .set("role", role.as_str())
            .set("resource_name", resource)
            .set("updated_at", now())
            .filter("organization_id", id)
            .filter("account", account.to_string());
        self.execute(update.build(), "changing a user's role").await?;
        Ok(())
    }

    async fn remove_user(&mut self, organization: &OrgKey, account: &Account) -> Result<(), StoreError> {
        let id = self.organization_id(organization).await?;
        let delete = Delete::from("users")
            .filter("organization_id", id)
            .filter("account", account.to_string());
        self.execute(delete.build(), "removing a user").await?;
        Ok(())
    }

    /// Revokes a key, with `reason` in its history: `revoked: true` in Git (`RevokeKey`), or the end of a
    /// previous key's rotation overlap (`RetireKey`).
    async fn revoke_key(&mut self, key_id: &str, reason: &'static str) -> Result<(), StoreError> {
        self.record(KeyEventKind::Revoked, Some(reason), Keys::UnrevokedId(key_id))
            .await?;
        let revoke = revoke_keys(now()).filter("key_id", key_id);
        self.execute(revoke.build(), "revoking a key").await?;
        Ok(())
    }

    /// A new key for the environment, with its organization's and environment's ids. The key of an
    /// interrupted issuance or rotation (`resume`) never reached its Secret and is forgotten first.
    async fn fresh_key(
        &mut self,
        organization: &OrgKey,
        environment: &str,
        resume: &Option<String>,
    ) -> Result<(String, String, ApiKeyToken), StoreError> {
        if let Some(interrupted) = resume {
            self.delete_key(interrupted).await?;
        }
        let organization_id = self.organization_id(organization).await?;
        let environment_id = self.environment_id(organization, environment).await?;
        let token = ApiKeyToken::generate(&environment_id);
        Ok((organization_id, environment_id, token))
    }

    /// Step 1 of a rotation (`domain::rotation`): records the new key live and incoming. The incoming key
    /// of an interrupted rotation (`resume`) never reached its Secret and is forgotten first.
    async fn start_rotation(&mut self, change: &Change) -> Result<IssuedKey, StoreError> {
        let Change::RotateKey {
            organization,
            environment,
            api_key,
            access,
            secret_name,
            current,
            overlap,
            resume,
            expiry,
            trigger,
            ..
        } = change
        else {
            unreachable!()
        };
        let (organization_id, environment_id, token) = self.fresh_key(organization, environment, resume).await?;
        let now = now();
        let row = key_row(
            &token,
            organization_id,
            environment_id.clone(),
            api_key,
            secret_name,
            *access,
            KeyState::Live,
            now,
        )
        .with("slot", KeySlot::Incoming.as_str())
        .with("expires_at", expiry.map(|e| e.for_key_issued_at(now)))
        .with("rotation_trigger", trigger.clone());
        self.execute(insert("api_keys", vec![row]), "recording a rotation's new key")
            .await?;
        self.record(
            KeyEventKind::Issued,
            Some("rotation: the new key"),
            Keys::Id(token.key_id()),
        )
        .await?;
        Ok(IssuedKey {
            organization: organization.clone(),
            api_key: api_key.clone(),
            environment: environment.clone(),
            environment_id,
            secret_name: secret_name.clone(),
            access: *access,
            token,
            rotation: Some(KeyRotation {
                previous: current.clone(),
                overlap: *overlap,
            }),
        })
    }

    /// Step 3 of a rotation, once the Secret holds `incoming`: it becomes current, and `previous` keeps
    /// working for `overlap` seconds from now (0: revoked now). Previous keys of earlier rotations that no
    /// longer work are forgotten (their history stays). False when the rotation was finished already.
    pub async fn complete_rotation(
        &mut self,
        incoming: &str,
        previous: &str,
        overlap: i64,
    ) -> Result<bool, StoreError> {
        let now = now();
        let until = now.saturating_add(overlap);
        let demote = Update::table("api_keys")
            .set("slot", KeySlot::Previous.as_str())
            .set("superseded_at", now)
            .filter("key_id", previous)
            .filter("slot", KeySlot::Current.as_str());
        if self.execute(demote.build(), "ending a key's time as current").await? == 0 {
            return Ok(false);
        }
        let reason = if overlap == 0 {
            "rotated with overlap 0s: revoked at once".to_owned()
        } else {
            format!(
                "rotated: keeps working for {} (until {})",
                format_duration(overlap),
                format_rfc3339(until)
            )
        };
        self.record(KeyEventKind::Rotated, Some(&reason), Keys::Id(previous))
            .await?;
        if overlap == 0 {
            let revoke = revoke_keys(now).filter("key_id", previous);
            self.execute(revoke.build(), "revoking the rotated key").await?;
        } else {
            // Never later than an expiry the key already had.
            let mut expire = Sql::default();
            expire.push("UPDATE api_keys SET expires_at = ");
            expire.bind(until);
            expire.push(" WHERE key_id = ");
            expire.bind(previous);
            expire.push(" AND (expires_at IS NULL OR expires_at > ");
            expire.bind(until);
            expire.push(")");
            self.execute(expire.build(), "starting a previous key's overlap")
                .await?;
        }
        let promote = Update::table("api_keys")
            .set("slot", KeySlot::Current.as_str())
            .filter("key_id", incoming)
            .filter("slot", KeySlot::Incoming.as_str());
        if self.execute(promote.build(), "making the new key current").await? == 0 {
            return Err(StoreError::ConcurrentApply {
                context: "finishing a rotation",
            });
        }
        let mut forget = Sql::default();
        forget.push("DELETE FROM api_keys WHERE slot = 'previous' AND key_id <> ");
        forget.bind(previous);
        forget
            .push(" AND state = 'revoked' AND organization_id = (SELECT organization_id FROM api_keys WHERE key_id = ");
        forget.bind(incoming);
        forget.push(") AND resource_name = (SELECT resource_name FROM api_keys WHERE key_id = ");
        forget.bind(incoming);
        forget.push(")");
        self.execute(forget.build(), "forgetting revoked previous keys").await?;
        Ok(true)
    }

    async fn create_environments(&mut self, batch: &[Change]) -> Result<(), StoreError> {
        let now = now();
        let mut rows = Vec::with_capacity(batch.len());
        for change in batch {
            let Change::CreateEnvironment {
                organization,
                environment,
                settings,
            } = change
            else {
                unreachable!()
            };
            let organization_id = self.organization_id(organization).await?;
            let id = new_id();
            self.environment_ids
                .insert((organization_id.clone(), environment.clone()), id.clone());
            rows.push(
                NewRow::default()
                    .with("id", id)
                    .with("organization_id", organization_id)
                    .with("name", environment.clone())
                    .with("display_name", settings.display_name.clone())
                    .with("production", settings.production)
                    .with_limits(&settings.limits)
                    .with("deletion_policy", settings.deletion_policy.as_str())
                    .with("managed", true)
                    .with("created_at", now)
                    .with("updated_at", now),
            );
        }
        self.insert_rows("environments", rows, "creating environments").await
    }

    async fn add_users(&mut self, batch: &[Change]) -> Result<(), StoreError> {
        let now = now();
        let mut rows = Vec::with_capacity(batch.len());
        for change in batch {
            let Change::AddUser {
                organization,
                account,
                role,
                resource,
            } = change
            else {
                unreachable!()
            };
            let organization_id = self.organization_id(organization).await?;
            rows.push(
                NewRow::default()
                    .with("organization_id", organization_id)
                    .with("account", account.to_string())
                    .with("role", role.as_str())
                    .with("resource_name", resource.clone())
                    .with("created_at", now)
                    .with("updated_at", now),
            );
        }
        self.insert_rows("users", rows, "adding users").await
    }

    async fn issue_keys(&mut self, batch: &[Change], state: KeyState) -> Result<Vec<IssuedKey>, StoreError> {
        let now = now();
        let mut rows = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut issued = Vec::with_capacity(batch.len());
        for change in batch {
            let Change::IssueKey {
                organization,
                environment,
                api_key,
                access,
                secret_name,
                resume,
                expiry,
                trigger,
            } = change
            else {
                unreachable!()
            };
            let (organization_id, environment_id, token) = self.fresh_key(organization, environment, resume).await?;
            rows.push(
                key_row(
                    &token,
                    organization_id,
                    environment_id.clone(),
                    api_key,
                    secret_name,
                    *access,
                    state,
                    now,
                )
                .with("expires_at", expiry.map(|e| e.for_key_issued_at(now)))
                .with("rotation_trigger", trigger.clone()),
            );
            events.push(
                NewRow::default()
                    .with("occurred_at", now)
                    .with("key_id", token.key_id())
                    .with("event", KeyEventKind::Issued.as_str())
                    .with("namespace", organization.namespace.clone())
                    .with("organization", organization.name.clone())
                    .with("environment", environment.clone())
                    .with("api_key", api_key.clone())
                    .with("actor", self.store.actor())
                    .with("git_revision", self.git_revision.clone()),
            );
            issued.push(IssuedKey {
                organization: organization.clone(),
                api_key: api_key.clone(),
                environment: environment.clone(),
                environment_id,
                secret_name: secret_name.clone(),
                access: *access,
                token,
                rotation: None,
            });
        }
        self.insert_rows("api_keys", rows, "issuing keys").await?;
        self.insert_rows("key_events", events, "recording key history").await?;
        Ok(issued)
    }

    /// Multi-row INSERTs of [`ROWS_PER_INSERT`] rows each.
    async fn insert_rows(&mut self, table: &str, rows: Vec<NewRow>, context: &'static str) -> Result<(), StoreError> {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<NewRow> = rows.by_ref().take(ROWS_PER_INSERT).collect();
            self.execute(insert(table, chunk), context).await?;
        }
        Ok(())
    }

    async fn organization_id(&mut self, key: &OrgKey) -> Result<String, StoreError> {
        if let Some(id) = self.organization_ids.get(key) {
            return Ok(id.clone());
        }
        self.store.count(1);
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM organizations WHERE namespace = $1 AND name = $2")
            .bind(key.namespace.clone())
            .bind(key.name.clone())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(|e| StoreError::from_write("finding an organization", e))?;
        // The plan was made from what the store held; a row gone since was removed by another writer.
        let id = id.ok_or(StoreError::ConcurrentApply {
            context: "finding an organization",
        })?;
        self.organization_ids.insert(key.clone(), id.clone());
        Ok(id)
    }

    async fn environment_id(&mut self, organization: &OrgKey, name: &str) -> Result<String, StoreError> {
        let organization_id = self.organization_id(organization).await?;
        let cache_key = (organization_id.clone(), name.to_owned());
        if let Some(id) = self.environment_ids.get(&cache_key) {
            return Ok(id.clone());
        }
        self.store.count(1);
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM environments WHERE organization_id = $1 AND name = $2")
                .bind(organization_id)
                .bind(name.to_owned())
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(|e| StoreError::from_write("finding an environment", e))?;
        let id = id.ok_or(StoreError::ConcurrentApply {
            context: "finding an environment",
        })?;
        self.environment_ids.insert(cache_key, id.clone());
        Ok(id)
    }
}

/// The row of a newly issued key (its hash, never the key).
#[allow(clippy::too_many_arguments)]
fn key_row(
    token: &ApiKeyToken,
    organization_id: String,
    environment_id: String,
    api_key: &str,
    secret_name: &str,
    access: Access,
    state: KeyState,
    now: i64,
) -> NewRow {
    NewRow::default()
        .with("key_id", token.key_id())
        .with("organization_id", organization_id)
        .with("environment_id", environment_id)
        .with("resource_name", api_key)
        .with("secret_name", secret_name)
        .with("access", access.as_str())
        .with("secret_hash", token.hash().to_hex())
        .with("state", state.as_str())
        .with("created_at", now)
}

/// Revokes the keys the caller's filter selects that are not revoked yet.
fn revoke_keys(now: i64) -> Update {
    Update::table("api_keys")
        .set("state", KeyState::Revoked.as_str())
        .set("revoked_at", now)
        .filter_sql("state <> 'revoked'")
}
