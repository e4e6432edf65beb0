//! Wall-clock time as the database and documents show it: UTC, RFC 3339, seconds.
//! One place, so tests and every table agree on the format.
//!
//! `PERPETUAL_NOW` (an RFC 3339 time, e.g. `2026-01-01T23:59:00Z`) overrides "now" for
//! every command of the process: a testing and operations override, so the daily reset
//! of an API-call budget, session durations and wall-time budgets can be exercised
//! without waiting for the clock. It is never set in normal operation.

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};

/// The environment variable that overrides now.
pub const NOW_ENV: &str = "PERPETUAL_NOW";

/// Now: `PERPETUAL_NOW` when it is set and valid, else the system clock, to the second.
pub fn now() -> DateTime<Utc> {
    match override_now() {
        Ok(Some(t)) => t,
        _ => truncate(Utc::now()),
    }
}

/// Now, e.g. `2025-11-06T00:13:55Z`.
pub fn now_rfc3339() -> String {
    format(now())
}

/// Fails when `PERPETUAL_NOW` is set but is not an RFC 3339 time. The command line calls
/// it first, so a typo is an error instead of a silent fallback to the real clock.
pub fn check_override() -> Result<()> {
    override_now().map(|_| ())
}

/// The one text form of a time: `2025-11-06T00:13:55Z`.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses a time written by [`format`] (or any RFC 3339 time).
pub fn parse(s: &str) -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("not an RFC 3339 time: {s:?}"))?
        .with_timezone(&Utc))
}

/// `6 minutes`, `1 h 05 min`, `less than a minute`: durations as documents show them.
pub fn human_duration(seconds: i64) -> String {
    let minutes = (seconds.max(0) as f64 / 60.0).round() as i64;
    match minutes {
        0 => "less than a minute".to_string(),
        1 => "1 minute".to_string(),
        m if m < 60 => format!("{m} minutes"),
        m => format!("{} h {:02} min", m / 60, m % 60),
    }
}

fn override_now() -> Result<Option<DateTime<Utc>>> {
    match std::env::var(NOW_ENV) {
        Ok(v) if !v.trim().is_empty() => parse(v.trim())
            .map(|t| Some(truncate(t)))
            .with_context(|| format!("invalid {NOW_ENV}")),
        _ => Ok(None),
    }
}

fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_parse_round_trip() {
        let t = parse("2025-11-06T00:13:55Z").unwrap();
        assert_eq!(format(t), "2025-11-06T00:13:55Z");
        assert_eq!(
            format(parse("2025-11-06T01:13:55+01:00").unwrap()),
            "2025-11-06T00:13:55Z"
        );
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn durations() {
        for (s, want) in [
            (0, "less than a minute"),
            (29, "less than a minute"),
            (60, "1 minute"),
            (355, "6 minutes"),
            (3900, "1 h 05 min"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}
