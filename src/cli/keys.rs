//! `orgkeeper keys`: the API keys the store holds, for operators. `list --unused-for 30d` finds the live keys
//! nobody has used for that long (cleanup candidates); last use is recorded at most a minute stale.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use k8s_openapi::jiff::{Span, SpanTotal, Timestamp, Unit};
use serde::Serialize;

use super::exit;
use super::output::OutputFormat;
use crate::store::{DEFAULT_DATABASE_URL, KeyRecord, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: sqlite:PATH, or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub database_url: String,
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
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let store = Store::connect(&args.database_url).await.context("opening the store")?;
    let Action::List { unused_for, output } = args.action;
    let mut keys = store.list_keys().await.context("listing keys")?;
    store.close().await;
    let now = Timestamp::now().as_second();
    if let Some(idle) = unused_for {
        keys.retain(|key| key.is_unused_for(idle, now));
    }
    match output {
        OutputFormat::Text => print!("{}", table(&keys)),
        OutputFormat::Json => {
            let rows: Vec<JsonKey> = keys.iter().map(JsonKey::from).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
    }
    Ok(exit::OK)
}

/// A duration of days or weeks as well as hours (`30d`, `2w`, `12h`, `P30D`); a day is 24 hours here.
fn parse_idle(text: &str) -> Result<Duration, String> {
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

/// RFC 3339 in UTC, to the second.
fn time(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

fn table(keys: &[KeyRecord]) -> String {
    let header = [
        "ID",
        "ORGANIZATION",
        "ENVIRONMENT",
        "APIKEY",
        "ACCESS",
        "ISSUED",
        "LAST USED",
        "STATE",
    ];
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|key| {
            [
                key.key_id.clone(),
                key.organization.to_string(),
                key.environment.clone(),
                key.api_key.clone(),
                key.access.as_str().to_owned(),
                time(key.issued_at),
                key.last_used_at.map_or_else(|| "never".to_owned(), time),
                key.state.as_str().to_owned(),
            ]
        })
        .collect();
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
}

impl<'a> From<&'a KeyRecord> for JsonKey<'a> {
    fn from(key: &'a KeyRecord) -> Self {
        JsonKey {
            key_id: &key.key_id,
            namespace: &key.organization.namespace,
            organization: &key.organization.name,
            environment: &key.environment,
            api_key: &key.api_key,
            access: key.access.as_str(),
            state: key.state.as_str(),
            issued: time(key.issued_at),
            last_used: key.last_used_at.map(time),
            revoked: key.revoked_at.map(time),
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
