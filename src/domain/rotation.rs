//! Key rotation and expiry: when an ApiKey's key is due for replacement, how long the previous key keeps
//! working, and when a key stops working by itself.
//!
//! A rotation runs in three steps, whatever holds the key (a Kubernetes Secret, a file of `orgkeeper apply`):
//!
//! 1. the new key is recorded **live** but *incoming* (it authenticates, nobody holds it yet) and committed;
//! 2. the key's Secret is rewritten to hold the new key;
//! 3. in one transaction the new key becomes the ApiKey's *current* key and the old one its *previous* key,
//!    with an expiry of now + overlap (overlap 0: revoked at once).
//!
//! The Secret therefore only ever holds a live key: the old one until step 2 (live until step 3 plus the
//! overlap), the new one from step 2 (live since step 1). A crash after step 1 leaves an incoming key that
//! nobody holds: the next run forgets it and rotates afresh. A crash after step 2 leaves the Secret holding
//! the incoming key: the next run only finishes step 3. The end of the overlap is an expiry, which the data
//! plane enforces by itself (it refuses expired keys), so no controller needs to be running at that moment.
//!
//! Durations are written like Kubernetes writes them (Go's `time.Duration`, which the CRD's CEL rules parse
//! too): `720h`, `1h30m`, `90s`, `0s`.

use std::fmt;

use serde::Serialize;

/// The overlap when `spec.rotation.overlap` is not set: a day, or `every` when that is shorter.
pub const DEFAULT_OVERLAP_SECS: i64 = 24 * 3600;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{text:?} is not a duration: write it like 720h, 1h30m, 90s or 0s (units h, m, s)")]
    Malformed { text: String },
    #[error("{text:?} is too long a duration (at most 100 years)")]
    TooLong { text: String },
}

/// The longest duration accepted, so that adding it to a time never overflows.
const MAX_DURATION_SECS: i64 = 100 * 365 * 24 * 3600;

/// Parses `720h`, `1h30m`, `90s`, `0s` into whole seconds.
pub fn parse_duration(text: &str) -> Result<i64, DurationError> {
    let malformed = || DurationError::Malformed { text: text.to_owned() };
    if text.is_empty() || text.len() > 32 {
        return Err(malformed());
    }
    let mut total: i64 = 0;
    let mut number: Option<i64> = None;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                let digit = i64::from(c as u8 - b'0');
                number = Some(
                    number
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or_else(|| DurationError::TooLong { text: text.to_owned() })?,
                );
            }
            'h' | 'm' | 's' => {
                let value = number.take().ok_or_else(malformed)?;
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = value
                    .checked_mul(unit)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(|| DurationError::TooLong { text: text.to_owned() })?;
            }
            _ => return Err(malformed()),
        }
    }
    if number.is_some() {
        return Err(malformed());
    }
    if total > MAX_DURATION_SECS {
        return Err(DurationError::TooLong { text: text.to_owned() });
    }
    Ok(total)
}

/// Writes seconds back the way [`parse_duration`] reads them (`90061` is `25h1m1s`).
pub fn format_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut text = String::new();
    if h > 0 {
        text.push_str(&format!("{h}h"));
    }
    if m > 0 {
        text.push_str(&format!("{m}m"));
    }
    if s > 0 || text.is_empty() {
        text.push_str(&format!("{s}s"));
    }
    text
}

/// An ApiKey's declared rotation (`spec.rotation`), durations in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// Rotate when the current key is this old. None: only on a trigger change.
    pub every: Option<i64>,
    /// How long the previous key keeps working after a rotation; 0 revokes it at once.
    pub overlap: i64,
    /// Rotate when this changes (to any value other than the one the current key was issued under).
    pub trigger: Option<String>,
}

/// Why a declared rotation or expiry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("spec.rotation.{field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("spec.rotation.every must be more than 0s (leave it out to rotate only when the trigger changes)")]
    ZeroEvery,
    #[error(
        "spec.rotation.overlap ({overlap}) is longer than spec.rotation.every ({every}): the previous key would still be working when the next rotation comes; shorten the overlap or lengthen every"
    )]
    OverlapLongerThanEvery { overlap: String, every: String },
    #[error("spec.expireAfter: {0}")]
    ExpireAfter(#[source] DurationError),
    #[error("spec.expiresAt {text:?} is not an RFC 3339 time (like 2027-01-31T00:00:00Z)")]
    ExpiresAt { text: String },
    #[error("set at most one of spec.expiresAt and spec.expireAfter")]
    BothExpiries,
}

impl RotationPolicy {
    /// Reads `spec.rotation` as written: `every` and `overlap` are durations, the overlap defaults to a day
    /// (or `every`, when shorter) and is never longer than `every`.
    pub fn parse(every: Option<&str>, overlap: Option<&str>, trigger: Option<&str>) -> Result<Self, PolicyError> {
        let duration =
            |field, text: &str| parse_duration(text).map_err(|source| PolicyError::Duration { field, source });
        let every = every.map(|text| duration("every", text)).transpose()?;
        if every == Some(0) {
            return Err(PolicyError::ZeroEvery);
        }
        let overlap = match overlap {
            Some(text) => duration("overlap", text)?,
            None => every.map_or(DEFAULT_OVERLAP_SECS, |every| every.min(DEFAULT_OVERLAP_SECS)),
        };
        if let Some(every) = every
            && overlap > every
        {
            return Err(PolicyError::OverlapLongerThanEvery {
                overlap: format_duration(overlap),
                every: format_duration(every),
            });
        }
        Ok(RotationPolicy {
            every,
            overlap,
            trigger: trigger.filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    /// Whether the current key (issued at `issued_at`, under `issued_trigger`) is due for rotation at `now`.
    pub fn due(&self, issued_at: i64, issued_trigger: Option<&str>, now: i64) -> Option<RotationCause> {
        if let Some(trigger) = &self.trigger
            && issued_trigger != Some(trigger.as_str())
        {
            return Some(RotationCause::Trigger);
        }
        match self.next_rotation(issued_at) {
            Some(next) if now >= next => Some(RotationCause::Every),
            _ => None,
        }
    }

    /// When the key issued at `issued_at` is rotated by `every` (None: only by trigger).
    pub fn next_rotation(&self, issued_at: i64) -> Option<i64> {
        self.every.map(|every| issued_at.saturating_add(every))
    }
}

/// Why a key is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RotationCause {
    /// `spec.rotation.trigger` changed.
    Trigger,
    /// The current key is `spec.rotation.every` old.
    Every,
}

impl fmt::Display for RotationCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotationCause::Trigger => "spec.rotation.trigger changed",
            RotationCause::Every => "spec.rotation.every has passed",
        })
    }
}

/// A declared expiry: at a fixed time, or a duration after each key's issuance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Expiry {
    /// `spec.expiresAt`, seconds since the epoch.
    At(i64),
    /// `spec.expireAfter`, seconds after issuance.
    After(i64),
}

impl Expiry {
    /// Reads `spec.expiresAt` / `spec.expireAfter`; both set is an error.
    pub fn parse(expires_at: Option<&str>, expire_after: Option<&str>) -> Result<Option<Self>, PolicyError> {
        match (expires_at, expire_after) {
            (Some(_), Some(_)) => Err(PolicyError::BothExpiries),
            (Some(text), None) => parse_rfc3339(text)
                .map(|at| Some(Expiry::At(at)))
                .ok_or_else(|| PolicyError::ExpiresAt { text: text.to_owned() }),
            (None, Some(text)) => parse_duration(text)
                .map(|after| Some(Expiry::After(after)))
                .map_err(PolicyError::ExpireAfter),
            (None, None) => Ok(None),
        }
    }

    /// When a key issued at `issued_at` expires.
    pub fn for_key_issued_at(self, issued_at: i64) -> i64 {
        match self {
            Expiry::At(at) => at,
            Expiry::After(after) => issued_at.saturating_add(after),
        }
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2027-01-31T00:00:00Z`, `...T01:00:00.5+01:00`).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let (h, m) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 time in UTC, whole seconds (`2027-01-31T00:00:00Z`).
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubernetes_writes_them() {
        assert_eq!(parse_duration("720h"), Ok(720 * 3600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in ["", "0", "h", "1d", "1.5h", "-1h", "1h 30m", "30", "1hm"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Malformed { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_duration("9999999999h"),
            Err(DurationError::TooLong { .. })
        ));
        assert_eq!(format_duration(90061), "25h1m1s");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn the_overlap_defaults_to_a_day_or_every_and_never_exceeds_every() {
        let p = RotationPolicy::parse(Some("720h"), None, None).unwrap();
        assert_eq!((p.every, p.overlap), (Some(720 * 3600), DEFAULT_OVERLAP_SECS));
        let p = RotationPolicy::parse(Some("1h"), None, None).unwrap();
        assert_eq!(p.overlap, 3600);
        assert_eq!(
            RotationPolicy::parse(None, None, Some("a")).unwrap().overlap,
            DEFAULT_OVERLAP_SECS
        );
        let err = RotationPolicy::parse(Some("1h"), Some("2h"), None).unwrap_err();
        assert!(err.to_string().contains("longer than spec.rotation.every"), "{err}");
        assert_eq!(
            RotationPolicy::parse(Some("0s"), None, None),
            Err(PolicyError::ZeroEvery)
        );
        let err = RotationPolicy::parse(None, Some("a day"), None).unwrap_err();
        assert!(err.to_string().starts_with("spec.rotation.overlap:"), "{err}");
    }

    #[test]
    fn a_rotation_is_due_on_a_new_trigger_or_after_every() {
        let p = RotationPolicy::parse(Some("1h"), Some("10m"), Some("r2")).unwrap();
        assert_eq!(p.due(1000, Some("r1"), 1001), Some(RotationCause::Trigger));
        assert_eq!(p.due(1000, None, 1001), Some(RotationCause::Trigger));
        assert_eq!(p.due(1000, Some("r2"), 1000 + 3599), None);
        assert_eq!(p.due(1000, Some("r2"), 1000 + 3600), Some(RotationCause::Every));
        let untriggered = RotationPolicy::parse(None, None, None).unwrap();
        assert_eq!(
            untriggered.due(0, Some("old"), i64::MAX / 2),
            None,
            "no trigger declared: none fires"
        );
    }

    #[test]
    fn expiries_are_a_time_or_a_duration_but_not_both() {
        assert_eq!(
            Expiry::parse(Some("2027-01-31T00:00:00Z"), None),
            Ok(Some(Expiry::At(1_801_353_600)))
        );
        assert_eq!(Expiry::parse(None, Some("24h")), Ok(Some(Expiry::After(86_400))));
        assert_eq!(Expiry::parse(Some("x"), Some("1h")), Err(PolicyError::BothExpiries));
        assert!(Expiry::parse(Some("2027-02-30T00:00:00Z"), None).is_err());
        assert!(Expiry::parse(Some("tomorrow"), None).is_err());
        assert_eq!(Expiry::After(60).for_key_issued_at(1000), 1060);
    }

    #[test]
    fn rfc3339_times_round_trip_and_honour_offsets() {
        for secs in [0, 951_782_400, 1_801_353_600, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.25+01:00"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:00Z"), None);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00"), None);
    }
}
