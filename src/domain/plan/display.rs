//! How a change reads in `orgkeeper plan`: one `+`/`~`/`-` line per change, then the fields that change.

use std::fmt;

use super::Change;
use crate::domain::limits::LimitOverrides;
use crate::domain::model::{EnvironmentSettings, OrganizationSettings};
use crate::domain::rotation::{format_duration, format_rfc3339};

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.symbol();
        match self {
            Change::CreateOrganization { organization, settings } => {
                write!(
                    f,
                    "{s} organization {organization} (plan {}, deletionPolicy {})",
                    settings.plan, settings.deletion_policy
                )
            }
            Change::UpdateOrganization {
                organization,
                from,
                to,
                adopt,
            } => {
                write!(f, "{s} organization {organization}")?;
                if *adopt {
                    f.write_str(" (adopt retained organization)")?;
                }
                write_organization_diff(f, from, to)
            }
            Change::CreateEnvironment {
                organization,
                environment,
                settings,
            } => {
                let production = if settings.production { ", production" } else { "" };
                write!(
                    f,
                    "{s} environment {organization}/{environment} ({:?}{production})",
                    settings.display_name
                )
            }
            Change::UpdateEnvironment {
                organization,
                environment,
                from,
                to,
                adopt,
            } => {
                write!(f, "{s} environment {organization}/{environment}")?;
                if *adopt {
                    f.write_str(" (adopt retained environment)")?;
                }
                write_environment_diff(f, from, to)
            }
            Change::ResetEnvironment {
                organization,
                environment,
                from,
                to,
            } => {
                write!(
                    f,
                    "{s} environment {organization}/{environment} (default environment: reset to defaults)"
                )?;
                write_environment_diff(f, from, to)
            }
            Change::DeleteEnvironment {
                organization,
                environment,
                revoked_keys,
            } => {
                write!(
                    f,
                    "{s} environment {organization}/{environment} (delete with its facts; revokes {} keys)",
                    revoked_keys.len()
                )
            }
            Change::ReleaseEnvironment {
                organization,
                environment,
                revoked_keys,
            } => write!(
                f,
                "{s} environment {organization}/{environment} (deletionPolicy Retain: stop managing, keep facts; revokes {} keys)",
                revoked_keys.len()
            ),
            Change::AddUser {
                organization,
                account,
                role,
                ..
            } => write!(f, "{s} user {account} in {organization} ({role})"),
            Change::UpdateUser {
                organization,
                account,
                from,
                to,
                ..
            } => {
                write!(f, "{s} user {account} in {organization}: role {from} -> {to}")
            }
            Change::RemoveUser { organization, account } => write!(f, "{s} user {account} in {organization}"),
            Change::IssueKey {
                organization,
                environment,
                api_key,
                access,
                secret_name,
                ..
            } => write!(
                f,
                "{s} api key {}/{api_key} in {organization}/{environment} ({access}) -> Secret {secret_name}",
                organization.namespace
            ),
            Change::RotateKey {
                organization,
                environment,
                api_key,
                secret_name,
                current,
                cause,
                overlap,
                resume,
                ..
            } => {
                write!(
                    f,
                    "{s} api key {}/{api_key} in {organization}/{environment}: rotate key {current} ({cause}) -> Secret {secret_name}; ",
                    organization.namespace
                )?;
                if *overlap == 0 {
                    f.write_str("the old key is revoked at once")?;
                } else {
                    write!(f, "the old key keeps working for {}", format_duration(*overlap))?;
                }
                if let Some(incoming) = resume {
                    write!(f, " (resumes the interrupted rotation to key {incoming})")?;
                }
                Ok(())
            }
            Change::SetKeyExpiry {
                organization,
                api_key,
                key_id,
                expires_at,
            } => write!(
                f,
                "{s} api key {}/{api_key} in {organization}: key {key_id} expires at {}",
                organization.namespace,
                format_rfc3339(*expires_at)
            ),
            Change::RetireKey {
                organization,
                api_key,
                key_id,
            } => write!(
                f,
                "{s} api key {}/{api_key} in {organization}: revoke previous key {key_id} (its rotation overlap is over)",
                organization.namespace
            ),
            Change::RevokeKey {
                organization,
                environment,
                api_key,
                key_id,
            } => write!(
                f,
                "{s} api key {}/{api_key} in {organization}/{environment}: revoke key {key_id}",
                organization.namespace
            ),
            Change::RemoveKey {
                organization,
                api_key,
                key_id,
            } => {
                write!(
                    f,
                    "{s} api key {}/{api_key} in {organization}: revoke and forget key {key_id}",
                    organization.namespace
                )
            }
            Change::DeleteOrganization {
                organization,
                revoked_keys,
            } => write!(
                f,
                "{s} organization {organization} (deletionPolicy Delete: delete it with its environments, facts and users; revokes {} keys)",
                revoked_keys.len()
            ),
            Change::ReleaseOrganization {
                organization,
                revoked_keys,
            } => write!(
                f,
                "{s} organization {organization} (deletionPolicy Retain: stop managing, keep data and users; revokes {} keys)",
                revoked_keys.len()
            ),
        }
    }
}

fn write_organization_diff(
    f: &mut fmt::Formatter<'_>,
    from: &OrganizationSettings,
    to: &OrganizationSettings,
) -> fmt::Result {
    write_field(f, "displayName", &from.display_name, &to.display_name)?;
    write_field(f, "plan", &from.plan, &to.plan)?;
    write_field(f, "deletionPolicy", &from.deletion_policy, &to.deletion_policy)?;
    write_limits_diff(f, &from.limits, &to.limits)
}

fn write_environment_diff(
    f: &mut fmt::Formatter<'_>,
    from: &EnvironmentSettings,
    to: &EnvironmentSettings,
) -> fmt::Result {
    write_field(f, "displayName", &from.display_name, &to.display_name)?;
    write_field(f, "production", &from.production, &to.production)?;
    write_field(f, "deletionPolicy", &from.deletion_policy, &to.deletion_policy)?;
    write_limits_diff(f, &from.limits, &to.limits)
}

/// One indented `name: old -> new` line, only when the value changed (strings quoted, enums bare).
fn write_field<T: PartialEq + fmt::Debug>(f: &mut fmt::Formatter<'_>, name: &str, from: &T, to: &T) -> fmt::Result {
    if from == to {
        return Ok(());
    }
    write!(f, "\n    {name}: {from:?} -> {to:?}")
}

fn write_limits_diff(f: &mut fmt::Formatter<'_>, from: &LimitOverrides, to: &LimitOverrides) -> fmt::Result {
    let show = |v: Option<u64>| v.map_or_else(|| "inherited".to_owned(), |n| n.to_string());
    for ((name, old), (_, new)) in from.fields().into_iter().zip(to.fields()) {
        if old != new {
            write!(f, "\n    limits.{name}: {} -> {}", show(old), show(new))?;
        }
    }
    Ok(())
}
