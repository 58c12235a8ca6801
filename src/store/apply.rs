//! Carrying out a plan inside one transaction: all of it or none of it.

use std::collections::HashMap;

use sqlx::{Any, AssertSqlSafe, Transaction};

use super::{QueryContext, Store, StoreError, now};
use crate::domain::keys::new_id;
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
    store: Store,
    wrote: bool,
    organization_ids: HashMap<OrgKey, String>,
    environment_ids: HashMap<(String, String), String>,
}

/// Rows per multi-row INSERT: large enough that 12,800 keys take a few dozen statements, small enough to
/// stay under both backends' bound-parameter limits.
const ROWS_PER_INSERT: usize = 400;

enum Cell {
    Text(String),
    Int(Option<i64>),
}

impl Store {
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = self.pool().begin().await.context("starting a transaction")?;
        Ok(StoreTx {
            tx,
            store: self.clone(),
            wrote: false,
            organization_ids: HashMap::new(),
            environment_ids: HashMap::new(),
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
        self.tx.commit().await.context("committing")
    }

    /// Moves a key from one state to another; returns false when it was not in `from` (someone else moved it).
    pub async fn set_key_state(&mut self, key_id: &str, from: KeyState, to: KeyState) -> Result<bool, StoreError> {
        let revoked_at = (to == KeyState::Revoked).then(now);
        let query = sqlx::query("UPDATE api_keys SET state = $1, revoked_at = $2 WHERE key_id = $3 AND state = $4")
            .bind(to.as_str())
            .bind(revoked_at)
            .bind(key_id.to_owned())
            .bind(from.as_str());
        Ok(self.execute(query, "changing a key's state").await? > 0)
    }

    /// Forgets a key record entirely (a pending key whose issuance is abandoned, or a removed ApiKey).
    pub async fn delete_key(&mut self, key_id: &str) -> Result<bool, StoreError> {
        let query = sqlx::query("DELETE FROM api_keys WHERE key_id = $1").bind(key_id.to_owned());
        Ok(self.execute(query, "deleting a key").await? > 0)
    }

    async fn execute<'q>(
        &mut self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
        context: &'static str,
    ) -> Result<u64, StoreError> {
        self.store.count_write(1);
        self.wrote = true;
        let result = query.execute(&mut *self.tx).await.context(context)?;
        Ok(result.rows_affected())
    }

    async fn apply_one(&mut self, change: &Change) -> Result<(), StoreError> {
        let now = now();
        match change {
            Change::CreateOrganization { organization, settings } => {
                let id = new_id();
                let limits = limit_cells(&settings.limits);
                let query = sqlx::query(
                    "INSERT INTO organizations (id, namespace, name, display_name, plan, requests_per_minute, \
                     fact_writes_per_minute, max_concurrent_requests, max_batch_facts, max_write_body_bytes, \
                     deletion_policy, managed, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12)",
                )
                .bind(id.clone())
                .bind(organization.namespace.clone())
                .bind(organization.name.clone())
                .bind(settings.display_name.clone())
                .bind(settings.plan.as_str());
                let query = bind_limits(query, &limits)
                    .bind(settings.deletion_policy.as_str())
                    .bind(now);
                self.execute(query, "creating an organization").await?;
                self.organization_ids.insert(organization.clone(), id);
            }
            Change::UpdateOrganization { organization, to, .. } => {
                let id = self.organization_id(organization).await?;
                let limits = limit_cells(&to.limits);
                let query = sqlx::query(
                    "UPDATE organizations SET display_name = $1, plan = $2, requests_per_minute = $3, \
                     fact_writes_per_minute = $4, max_concurrent_requests = $5, max_batch_facts = $6, \
                     max_write_body_bytes = $7, deletion_policy = $8, managed = 1, updated_at = $9 WHERE id = $10",
                )
                .bind(to.display_name.clone())
                .bind(to.plan.as_str());
                let query = bind_limits(query, &limits)
                    .bind(to.deletion_policy.as_str())
                    .bind(now)
                    .bind(id);
                self.execute(query, "updating an organization").await?;
            }
            Change::UpdateEnvironment {
                organization,
                environment,
                to,
                ..
            } => {
                self.update_environment(organization, environment, to, true).await?;
            }
            Change::ResetEnvironment {
                organization,
                environment,
                to,
                ..
            } => {
                self.update_environment(organization, environment, to, false).await?;
            }
            Change::DeleteEnvironment {
                organization,
                environment,
                ..
            } => {
                let id = self.environment_id(organization, environment).await?;
                // Keys (and facts) go with the environment through ON DELETE CASCADE.
                self.execute(
                    sqlx::query("DELETE FROM environments WHERE id = $1").bind(id),
                    "deleting an environment",
                )
                .await?;
            }
            Change::ReleaseEnvironment {
                organization,
                environment,
                ..
            } => {
                let id = self.environment_id(organization, environment).await?;
                let revoke = sqlx::query(
                    "UPDATE api_keys SET state = 'revoked', revoked_at = $1 WHERE environment_id = $2 AND state <> 'revoked'",
                )
                .bind(now)
                .bind(id.clone());
                self.execute(revoke, "revoking a released environment's keys").await?;
                let release = sqlx::query("UPDATE environments SET managed = 0, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id);
                self.execute(release, "releasing an environment").await?;
            }
            Change::UpdateUser {
                organization,
                account,
                to,
                resource,
                ..
            } => {
                let id = self.organization_id(organization).await?;
                let query = sqlx::query(
                    "UPDATE users SET role = $1, resource_name = $2, updated_at = $3 WHERE organization_id = $4 AND account = $5",
                )
                .bind(to.as_str())
                .bind(resource.clone())
                .bind(now)
                .bind(id)
                .bind(account.to_string());
                self.execute(query, "changing a user's role").await?;
            }
            Change::RemoveUser { organization, account } => {
                let id = self.organization_id(organization).await?;
                let query = sqlx::query("DELETE FROM users WHERE organization_id = $1 AND account = $2")
                    .bind(id)
                    .bind(account.to_string());
                self.execute(query, "removing a user").await?;
            }
            Change::RevokeKey { key_id, .. } => {
                let query = sqlx::query(
                    "UPDATE api_keys SET state = 'revoked', revoked_at = $1 WHERE key_id = $2 AND state <> 'revoked'",
                )
                .bind(now)
                .bind(key_id.clone());
                self.execute(query, "revoking a key").await?;
            }
            Change::RemoveKey { key_id, .. } => {
                self.delete_key(key_id).await?;
            }
            Change::DeleteOrganization { organization, .. } => {
                let id = self.organization_id(organization).await?;
                // Environments (with their facts), users and keys go with it through ON DELETE CASCADE.
                self.execute(
                    sqlx::query("DELETE FROM organizations WHERE id = $1").bind(id),
                    "deleting an organization",
                )
                .await?;
                self.organization_ids.remove(organization);
            }
            Change::ReleaseOrganization { organization, .. } => {
                let id = self.organization_id(organization).await?;
                let revoke = sqlx::query(
                    "UPDATE api_keys SET state = 'revoked', revoked_at = $1 WHERE organization_id = $2 AND state <> 'revoked'",
                )
                .bind(now)
                .bind(id.clone());
                self.execute(revoke, "revoking a released organization's keys").await?;
                let environments = sqlx::query(
                    "UPDATE environments SET managed = 0, updated_at = $1 WHERE organization_id = $2 AND managed <> 0",
                )
                .bind(now)
                .bind(id.clone());
                self.execute(environments, "releasing an organization's environments")
                    .await?;
                let release = sqlx::query("UPDATE organizations SET managed = 0, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id);
                self.execute(release, "releasing an organization").await?;
            }
            Change::CreateEnvironment { .. } | Change::AddUser { .. } | Change::IssueKey { .. } => {
                unreachable!("bulk changes are applied in batches")
            }
        }
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
        let limits = limit_cells(&to.limits);
        let query = sqlx::query(
            "UPDATE environments SET display_name = $1, production = $2, requests_per_minute = $3, \
             fact_writes_per_minute = $4, max_concurrent_requests = $5, max_batch_facts = $6, \
             max_write_body_bytes = $7, deletion_policy = $8, managed = $9, updated_at = $10 WHERE id = $11",
        )
        .bind(to.display_name.clone())
        .bind(i64::from(to.production));
        let query = bind_limits(query, &limits)
            .bind(to.deletion_policy.as_str())
            .bind(i64::from(managed))
            .bind(now())
            .bind(id);
        self.execute(query, "updating an environment").await?;
        Ok(())
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
            let mut row = vec![
                Cell::Text(id),
                Cell::Text(organization_id),
                Cell::Text(environment.clone()),
            ];
            row.push(Cell::Text(settings.display_name.clone()));
            row.push(Cell::Int(Some(i64::from(settings.production))));
            row.extend(limit_cells(&settings.limits).into_iter().map(Cell::Int));
            row.push(Cell::Text(settings.deletion_policy.as_str().to_owned()));
            row.extend([Cell::Int(Some(1)), Cell::Int(Some(now)), Cell::Int(Some(now))]);
            rows.push(row);
        }
        let columns = [
            "id",
            "organization_id",
            "name",
            "display_name",
            "production",
            "requests_per_minute",
            "fact_writes_per_minute",
            "max_concurrent_requests",
            "max_batch_facts",
            "max_write_body_bytes",
            "deletion_policy",
            "managed",
            "created_at",
            "updated_at",
        ];
        self.insert_rows("environments", &columns, rows, "creating environments")
            .await
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
            rows.push(vec![
                Cell::Text(organization_id),
                Cell::Text(account.to_string()),
                Cell::Text(role.as_str().to_owned()),
                Cell::Text(resource.clone()),
                Cell::Int(Some(now)),
                Cell::Int(Some(now)),
            ]);
        }
        let columns = [
            "organization_id",
            "account",
            "role",
            "resource_name",
            "created_at",
            "updated_at",
        ];
        self.insert_rows("users", &columns, rows, "adding users").await
    }

    async fn issue_keys(&mut self, batch: &[Change], state: KeyState) -> Result<Vec<IssuedKey>, StoreError> {
        let now = now();
        let mut rows = Vec::with_capacity(batch.len());
        let mut issued = Vec::with_capacity(batch.len());
        for change in batch {
            let Change::IssueKey {
                organization,
                environment,
                api_key,
                access,
                secret_name,
                resume,
            } = change
            else {
                unreachable!()
            };
            if let Some(pending) = resume {
                self.delete_key(pending).await?;
            }
            let organization_id = self.organization_id(organization).await?;
            let environment_id = self.environment_id(organization, environment).await?;
            let token = ApiKeyToken::generate(&environment_id);
            rows.push(vec![
                Cell::Text(token.key_id().to_owned()),
                Cell::Text(organization_id),
                Cell::Text(environment_id.clone()),
                Cell::Text(api_key.clone()),
                Cell::Text(secret_name.clone()),
                Cell::Text(access.as_str().to_owned()),
                Cell::Text(token.hash().to_hex()),
                Cell::Text(state.as_str().to_owned()),
                Cell::Int(Some(now)),
            ]);
            issued.push(IssuedKey {
                organization: organization.clone(),
                api_key: api_key.clone(),
                environment: environment.clone(),
                environment_id,
                secret_name: secret_name.clone(),
                access: *access,
                token,
            });
        }
        let columns = [
            "key_id",
            "organization_id",
            "environment_id",
            "resource_name",
            "secret_name",
            "access",
            "secret_hash",
            "state",
            "created_at",
        ];
        self.insert_rows("api_keys", &columns, rows, "issuing keys").await?;
        Ok(issued)
    }

    async fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: Vec<Vec<Cell>>,
        context: &'static str,
    ) -> Result<(), StoreError> {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Cell>> = rows.by_ref().take(ROWS_PER_INSERT).collect();
            let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
            let mut n = 0;
            for (i, _) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "(" } else { ", (" });
                for c in 0..columns.len() {
                    n += 1;
                    sql.push_str(&format!("{}${n}", if c == 0 { "" } else { ", " }));
                }
                sql.push(')');
            }
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for cell in chunk.into_iter().flatten() {
                query = match cell {
                    Cell::Text(text) => query.bind(text),
                    Cell::Int(value) => query.bind(value),
                };
            }
            self.execute(query, context).await?;
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
            .context("finding an organization")?;
        let id =
            id.ok_or_else(|| StoreError::Corrupt(format!("organization {key} vanished during the transaction")))?;
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
                .context("finding an environment")?;
        let id = id.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "environment {organization}/{name} vanished during the transaction"
            ))
        })?;
        self.environment_ids.insert(cache_key, id.clone());
        Ok(id)
    }
}

/// Binds the five limit columns, in the order `LimitOverrides::fields` lists them.
fn bind_limits<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    limits: &[Option<i64>; 5],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    limits.iter().fold(query, |query, value| query.bind(*value))
}

fn limit_cells(limits: &LimitOverrides) -> [Option<i64>; 5] {
    limits
        .fields()
        .map(|(_, v)| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
}
