//! `orgkeeper keys`: the API keys the store holds, for operators. `list --unused-for 30d` finds the live keys
//! nobody has used for that long (cleanup candidates); last use is recorded at most a minute stale.
//! `revoke KEY_ID` and `expire KEY_ID` act on one key outside Git (incident response: no pull request to
//! wait for; data planes follow within seconds), and `history` prints the audit trail.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use k8s_openapi::jiff::{Span, SpanTotal, Timestamp, Unit};
use serde::Serialize;

use super::exit;
use super::output::OutputFormat;
use crate::domain::KeyState;
use crate::store::{DEFAULT_DATABASE_URL, KeyEvent, KeyRecord, Revocation, Store, local_actor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: sqlite://PATH, or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub database_url: String,
    /// Who is making the change, for the audit trail (default: the OS user running the command).
    #[arg(long, env = "ORGKEEPER_ACTOR", global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// List every key: id, organization, environment, ApiKey, access, issued, last used, state.
    List {
        /// Only live keys not used for this long, counting from issuance for keys never used (e.g. 30d, 12h,
        /// 2w, or ISO 8601 such as P30D).
        #[arg(long, value_parser = parse_idle)]
        unused_for: Option<Duration>,
        /// Output format.
        #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Revoke one key now, outside Git. Final: no later apply or reconcile brings it back (set
    /// `revoked: true` in its ApiKey, or replace the ApiKey, to bring Git in line). Sidecars refuse it within
    /// their refresh interval (1 s by default).
    Revoke {
        /// The key's id (the third part of e_<envId>_<keyId>_<secret>; `keys list` shows them).
        key_id: String,
        /// Why, for the audit trail and the key's record (e.g. "leaked in a CI log").
        #[arg(long, value_parser = parse_reason)]
        reason: String,
    },
    /// Set the time from which sidecars refuse a key by themselves (401, saying it expired), or clear it.
    Expire {
        key_id: String,
        /// RFC 3339, in the future (e.g. 2027-01-31T00:00:00Z). To stop a key now, use `keys revoke`.
        #[arg(long, required_unless_present = "never", conflicts_with = "never", value_parser = parse_time)]
        at: Option<Timestamp>,
        /// Clear the key's expiry.
        #[arg(long)]
        never: bool,
        /// Why, for the audit trail.
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
    },
    /// The audit trail, oldest first: every issuance, revocation, expiry change and removal, with who made
    /// it, why, and the Git revision when known.
    History {
        /// Only this key's events.
        key_id: Option<String>,
        #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let store = Store::connect(&args.database_url).await.context("opening the store")?;
    let store = store.acting_as(&args.actor.unwrap_or_else(local_actor));
    let result = match args.action {
        Action::List { unused_for, output } => list(&store, unused_for, output).await,
        Action::Revoke { key_id, reason } => revoke(&store, &key_id, &reason).await,
        Action::Expire {
            key_id,
            at,
            never: _,
            reason,
        } => expire(&store, &key_id, at, reason).await,
        Action::History { key_id, output } => history(&store, key_id.as_deref(), output).await,
    };
    store.close().await;
    result
}

async fn revoke(store: &Store, key_id: &str, reason: &str) -> anyhow::Result<u8> {
    let revocation = store
        .revoke_key_by_id(key_id, reason)
        .await
        .with_context(|| format!("revoking key {key_id}"))?;
    match revocation {
        Revocation::Revoked => println!(
            "key {key_id} revoked by {}: sidecars refuse it within their refresh interval; set revoked: true in \
             its ApiKey (or replace the ApiKey) so that Git says so too",
            store.actor()
        ),
        Revocation::AlreadyRevoked { at } => println!(
            "key {key_id} was already revoked{}; nothing changed",
            at.map(|at| format!(" at {}", time(at))).unwrap_or_default()
        ),
    }
    Ok(exit::OK)
}

async fn expire(store: &Store, key_id: &str, at: Option<Timestamp>, reason: Option<String>) -> anyhow::Result<u8> {
    let at = at.map(|at| at.as_second());
    let reason = reason.unwrap_or_else(|| match at {
        Some(at) => format!("expires at {}", time(at)),
        None => "expiry cleared".to_owned(),
    });
    store
        .set_key_expiry(key_id, at, &reason)
        .await
        .with_context(|| format!("setting the expiry of key {key_id}"))?;
    match at {
        Some(at) => println!("key {key_id} expires at {}: from then on sidecars refuse it", time(at)),
        None => println!("key {key_id} no longer expires"),
    }
    Ok(exit::OK)
}

async fn history(store: &Store, key_id: Option<&str>, output: OutputFormat) -> anyhow::Result<u8> {
    let events = store.key_history(key_id).await.context("reading the key history")?;
    if let Some(key_id) = key_id
        && events.is_empty()
    {
        anyhow::bail!("no history for key {key_id:?}: no key with that id was ever issued in this store");
    }
    match output {
        OutputFormat::Text => print!("{}", history_table(&events)),
        OutputFormat::Json => {
            let rows: Vec<JsonEvent> = events.iter().map(JsonEvent::from).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
    }
    Ok(exit::OK)
}

async fn list(store: &Store, unused_for: Option<Duration>, output: OutputFormat) -> anyhow::Result<u8> {
    let mut keys = store.list_keys().await.context("listing keys")?;
    let now = Timestamp::now().as_second();
    if let Some(idle) = unused_for {
        keys.retain(|key| key.is_unused_for(idle, now));
    }
    match output {
        OutputFormat::Text => print!("{}", table(&keys, now)),
        OutputFormat::Json => {
            let rows: Vec<JsonKey> = keys.iter().map(|key| JsonKey::new(key, now)).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
    }
    Ok(exit::OK)
}

/// A duration of days or weeks as well as hours (`30d`, `2w`, `12h`, `P30D`); a day is 24 hours here.
pub(super) fn parse_idle(text: &str) -> Result<Duration, String> {
    let span: Span = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a duration (use e.g. 30d, 2w, 12h or P30D): {e}"))?;
    let seconds = span
        .total(SpanTotal::from(Unit::Second).days_are_24_hours())
        .map_err(|e| format!("{text:?}: {e}"))?;
    if seconds.is_sign_negative() || !seconds.is_finite() {
        return Err(format!("{text:?}: a duration cannot be negative"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A reason is free text for people, on one line.
fn parse_reason(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("say why (e.g. \"leaked in a CI log\")".to_owned());
    }
    if text.chars().any(char::is_control) {
        return Err("a reason is one line of text, without control characters".to_owned());
    }
    if text.len() > 1024 {
        return Err("a reason is at most 1024 bytes".to_owned());
    }
    Ok(text.to_owned())
}

/// An RFC 3339 time in the future.
fn parse_time(text: &str) -> Result<Timestamp, String> {
    let at: Timestamp = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): {e}"))?;
    if at <= Timestamp::now() {
        return Err(format!(
            "{at} is in the past; to stop a key now, use `orgkeeper keys revoke`"
        ));
    }
    Ok(at)
}

/// RFC 3339 in UTC, to the second.
fn time(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

fn table(keys: &[KeyRecord], now: i64) -> String {
    let header = [
        "ID",
        "ORGANIZATION",
        "ENVIRONMENT",
        "APIKEY",
        "ACCESS",
        "ISSUED",
        "LAST USED",
        "EXPIRES",
        "STATE",
    ];
    let rows = keys.iter().map(|key| {
        [
            key.key_id.clone(),
            key.organization.to_string(),
            key.environment.clone(),
            key.api_key.clone(),
            key.access.as_str().to_owned(),
            time(key.issued_at),
            key.last_used_at.map_or_else(|| "never".to_owned(), time),
            key.expires_at.map_or_else(|| "never".to_owned(), time),
            state(key, now).to_owned(),
        ]
    });
    columns(header, rows)
}

/// A key's state as operators read it: a live key past its expiry is `expired`.
fn state(key: &KeyRecord, now: i64) -> &'static str {
    if key.state == KeyState::Live && key.is_expired(now) {
        "expired"
    } else {
        key.state.as_str()
    }
}

fn history_table(events: &[KeyEvent]) -> String {
    let header = [
        "TIME",
        "ID",
        "EVENT",
        "ORGANIZATION",
        "ENVIRONMENT",
        "APIKEY",
        "ACTOR",
        "REASON",
        "REVISION",
    ];
    let rows = events.iter().map(|event| {
        [
            time(event.at),
            event.key_id.clone(),
            event.event.as_str().to_owned(),
            event.organization.to_string(),
            event.environment.clone(),
            event.api_key.clone(),
            event.actor.clone(),
            event.reason.clone().unwrap_or_default(),
            event.git_revision.clone().unwrap_or_default(),
        ]
    });
    columns(header, rows)
}

/// Left-aligned columns under a header, two spaces apart.
fn columns<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// An audit event in `-o json`: times as RFC 3339.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonEvent<'a> {
    time: String,
    key_id: &'a str,
    event: &'static str,
    namespace: &'a str,
    organization: &'a str,
    environment: &'a str,
    api_key: &'a str,
    actor: &'a str,
    reason: Option<&'a str>,
    git_revision: Option<&'a str>,
}

impl<'a> From<&'a KeyEvent> for JsonEvent<'a> {
    fn from(event: &'a KeyEvent) -> Self {
        JsonEvent {
            time: time(event.at),
            key_id: &event.key_id,
            event: event.event.as_str(),
            namespace: &event.organization.namespace,
            organization: &event.organization.name,
            environment: &event.environment,
            api_key: &event.api_key,
            actor: &event.actor,
            reason: event.reason.as_deref(),
            git_revision: event.git_revision.as_deref(),
        }
    }
}

/// A key in `-o json`: times as RFC 3339.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonKey<'a> {
    key_id: &'a str,
    namespace: &'a str,
    organization: &'a str,
    environment: &'a str,
    api_key: &'a str,
    access: &'static str,
    state: &'static str,
    issued: String,
    last_used: Option<String>,
    revoked: Option<String>,
    /// Who revoked it outside Git (`keys revoke`) and why.
    revoked_by: Option<&'a str>,
    revoked_reason: Option<&'a str>,
    expires: Option<String>,
}

impl<'a> JsonKey<'a> {
    fn new(key: &'a KeyRecord, now: i64) -> Self {
        JsonKey {
            key_id: &key.key_id,
            namespace: &key.organization.namespace,
            organization: &key.organization.name,
            environment: &key.environment,
            api_key: &key.api_key,
            access: key.access.as_str(),
            state: state(key, now),
            issued: time(key.issued_at),
            last_used: key.last_used_at.map(time),
            revoked: key.revoked_at.map(time),
            revoked_by: key.revoked_by.as_deref(),
            revoked_reason: key.revoked_reason.as_deref(),
            expires: key.expires_at.map(time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_durations_read_days_weeks_and_iso_8601() {
        let day = 86_400;
        assert_eq!(parse_idle("30d"), Ok(Duration::from_secs(30 * day)));
        assert_eq!(parse_idle("2w"), Ok(Duration::from_secs(14 * day)));
        assert_eq!(parse_idle("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_idle("P30D"), Ok(Duration::from_secs(30 * day)));
        for bad in ["", "thirty days", "30x", "-5d"] {
            assert!(parse_idle(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc_3339_in_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
    }
}
