//! Reading what the store holds for a set of organizations, in a handful of statements however large they are.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use sqlx::{Any, AnyConnection, Row as _};

use super::{QueryContext, Row, Store, StoreError};
use crate::domain::limits::{LIMIT_COUNT, LIMIT_FIELDS};
use crate::domain::*;

impl Store {
    /// What the store holds for each of `keys` that exists (absent keys are new organizations).
    pub async fn load_organizations(
        &self,
        keys: &[OrgKey],
    ) -> Result<BTreeMap<OrgKey, StoredOrganization>, StoreError> {
        let mut conn = self.pool().acquire().await.context("acquiring a connection")?;
        let mut out = BTreeMap::new();
        for key in keys {
            let (found, statements) = load_organization(&mut conn, key).await?;
            self.count(statements);
            if let Some(org) = found {
                out.insert(key.clone(), org);
            }
        }
        Ok(out)
    }

    /// Every organization in the store with its environments, users and keys.
    pub async fn load_all_organizations(&self) -> Result<BTreeMap<OrgKey, StoredOrganization>, StoreError> {
        self.count(1);
        let keys: Vec<OrgKey> =
            sqlx::query::<Any>("SELECT namespace, name FROM organizations ORDER BY namespace, name")
                .fetch_all(self.pool())
                .await
                .context("listing organizations")?
                .iter()
                .map(|row| {
                    Ok(OrgKey {
                        namespace: row.try_get(0)?,
                        name: row.try_get(1)?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .context("reading organizations")?;
        self.load_organizations(&keys).await
    }
}

/// The statements that read one organization's settings and its environments, with every limit column.
static SELECT_ORGANIZATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, display_name, plan, {}, deletion_policy, managed FROM organizations \
         WHERE namespace = $1 AND name = $2",
        limit_columns("", "")
    )
});
static SELECT_ENVIRONMENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, name, display_name, production, {}, deletion_policy, managed \
         FROM environments WHERE organization_id = $1 ORDER BY name",
        limit_columns("", "")
    )
});

/// Loads one organization in four statements; returns it (if it exists) and the number of statements issued.
pub(super) async fn load_organization(
    conn: &mut AnyConnection,
    key: &OrgKey,
) -> Result<(Option<StoredOrganization>, u64), StoreError> {
    let row = sqlx::query::<Any>(sqlx::AssertSqlSafe(SELECT_ORGANIZATION.as_str()))
        .bind(&key.namespace)
        .bind(&key.name)
        .fetch_optional(&mut *conn)
        .await
        .context("reading an organization")?;
    let Some(row) = row else { return Ok((None, 1)) };
    let id: String = row.try_get("id").context("reading an organization")?;
    let settings = OrganizationSettings {
        display_name: row.try_get("display_name").context("reading an organization")?,
        plan: parse_column(&row, "plan")?,
        limits: limits_from_row(&row, "")?,
        deletion_policy: parse_column(&row, "deletion_policy")?,
    };
    let managed = flag(&row, "managed")?;

    let environments = sqlx::query::<Any>(sqlx::AssertSqlSafe(SELECT_ENVIRONMENTS.as_str()))
        .bind(&id)
        .fetch_all(&mut *conn)
        .await
        .context("reading environments")?
        .iter()
        .map(environment_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let environment_names: BTreeMap<String, String> =
        environments.iter().map(|e| (e.id.clone(), e.name.clone())).collect();

    let users = sqlx::query::<Any>(
        "SELECT account, role, resource_name FROM users WHERE organization_id = $1 ORDER BY account",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await
    .context("reading users")?
    .iter()
    .map(|row| {
        Ok(StoredUser {
            account: parse_column(row, "account")?,
            role: parse_column(row, "role")?,
            resource_name: row.try_get("resource_name").context("reading users")?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;

    let api_keys = sqlx::query::<Any>(
        "SELECT key_id, environment_id, resource_name, secret_name, access, secret_hash, state, slot, created_at, \
         expires_at, rotation_trigger, superseded_at, last_used_at, revoked_by, revoked_reason FROM api_keys WHERE organization_id = $1 \
         ORDER BY resource_name, created_at, key_id",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await
    .context("reading api keys")?
    .iter()
    .map(|row| api_key_from_row(row, &environment_names))
    .collect::<Result<Vec<_>, _>>()?;

    let org = StoredOrganization {
        id,
        key: key.clone(),
        settings,
        managed,
        environments,
        users,
        api_keys,
    };
    Ok((Some(org), 4))
}

fn environment_from_row(row: &Row) -> Result<StoredEnvironment, StoreError> {
    Ok(StoredEnvironment {
        id: row.try_get("id").context("reading environments")?,
        name: row.try_get("name").context("reading environments")?,
        settings: EnvironmentSettings {
            display_name: row.try_get("display_name").context("reading environments")?,
            production: flag(row, "production")?,
            limits: limits_from_row(row, "")?,
            deletion_policy: parse_column(row, "deletion_policy")?,
        },
        managed: flag(row, "managed")?,
    })
}

fn api_key_from_row(row: &Row, environment_names: &BTreeMap<String, String>) -> Result<StoredApiKey, StoreError> {
    let environment_id: String = row.try_get("environment_id").context("reading api keys")?;
    let hash: String = row.try_get("secret_hash").context("reading api keys")?;
    let fingerprint = KeyHash::from_hex(&hash)
        .ok_or_else(|| StoreError::Corrupt("an api key hash".into()))?
        .fingerprint();
    // `keys revoke` sets both; a revocation declared in Git neither.
    let revoked_by: Option<String> = row.try_get("revoked_by").context("reading api keys")?;
    let revoked_reason: Option<String> = row.try_get("revoked_reason").context("reading api keys")?;
    Ok(StoredApiKey {
        key_id: row.try_get("key_id").context("reading api keys")?,
        environment: environment_names
            .get(&environment_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("api key of unknown environment {environment_id}")))?,
        resource_name: row.try_get("resource_name").context("reading api keys")?,
        secret_name: row.try_get("secret_name").context("reading api keys")?,
        access: parse_column(row, "access")?,
        state: parse_column(row, "state")?,
        fingerprint,
        slot: parse_column(row, "slot")?,
        issued_at: row.try_get("created_at").context("reading api keys")?,
        expires_at: row.try_get("expires_at").context("reading api keys")?,
        trigger: row.try_get("rotation_trigger").context("reading api keys")?,
        superseded_at: row.try_get("superseded_at").context("reading api keys")?,
        last_used_at: row.try_get("last_used_at").context("reading api keys")?,
        revoked_outside_git: revoked_by.map(|by| OutsideRevocation {
            by,
            reason: revoked_reason.unwrap_or_default(),
        }),
    })
}

/// The limit columns (nullable BIGINTs, shared by organizations and environments) for a SELECT list:
/// `{table}column AS {alias}column, ...`, e.g. table `o.` and alias `o_` to tell two tables' apart.
pub(super) fn limit_columns(table: &str, alias: &str) -> String {
    LIMIT_FIELDS
        .iter()
        .map(|field| match (table, alias) {
            ("", "") => field.column.to_owned(),
            _ => format!("{table}{column} AS {alias}{column}", column = field.column),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The limits of a row selected with [`limit_columns`] and the same `alias`.
pub(super) fn limits_from_row(row: &Row, alias: &str) -> Result<LimitOverrides, StoreError> {
    let mut values = [None; LIMIT_COUNT];
    for (value, field) in values.iter_mut().zip(&LIMIT_FIELDS) {
        let column = format!("{alias}{}", field.column);
        let stored: Option<i64> = row.try_get(column.as_str()).context("reading limits")?;
        *value = stored.map(|v| u64::try_from(v).unwrap_or(0));
    }
    Ok(LimitOverrides::from_values(values))
}

pub(super) fn flag(row: &Row, column: &'static str) -> Result<bool, StoreError> {
    let value: i64 = row.try_get(column).context("reading a flag")?;
    Ok(value != 0)
}

fn parse_column<T: std::str::FromStr>(row: &Row, column: &'static str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(column).context("reading a column")?;
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("{column} {text:?}: {e}")))
}
