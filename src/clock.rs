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

/// Now to the nanosecond (`PERPETUAL_NOW` when set): for a deadline that is stored to
/// the second and must not come early, which rounding [`now`] up cannot tell.
pub fn now_exact() -> DateTime<Utc> {
    match override_now() {
        Ok(Some(t)) => t,
        _ => Utc::now(),
    }
}

/// CPU time this thread has used, user and system: unlike the wall clock, it does not
/// count the time other processes hold the core, so it is steady on a loaded machine.
/// Zero where the clock cannot be read.
pub fn thread_cpu() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
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

/// How often recurring work comes back (`every = "24h"` on a plan's `[[template]]` or
/// `[[task]]`): after a period since the last time, or each day at a UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// A period: `24h`, `90m`, `7d`, `1h 30m` (at least a minute).
    Period(chrono::Duration),
    /// Each day at this UTC time: `06:00`, `daily 06:00`, `daily at 06:00`.
    DailyAt(chrono::NaiveTime),
}

impl Every {
    /// Parses a period (`24h`, humantime's units) or a daily UTC time (`06:00`).
    pub fn parse(text: &str) -> Result<Every> {
        let t = text.trim();
        let time = t
            .strip_prefix("daily at ")
            .or_else(|| t.strip_prefix("daily "))
            .unwrap_or(t)
            .trim()
            .trim_end_matches(" UTC")
            .trim_end_matches('Z');
        if time.contains(':') {
            let at = chrono::NaiveTime::parse_from_str(time, "%H:%M").with_context(|| {
                format!("invalid daily time {text:?}: write HH:MM (UTC), e.g. \"06:00\"")
            })?;
            return Ok(Every::DailyAt(at));
        }
        let d = humantime::parse_duration(t).with_context(|| {
            format!("invalid period {text:?}: write e.g. \"24h\", \"90m\", \"7d\", or a daily time \"06:00\"")
        })?;
        anyhow::ensure!(
            d.as_secs() >= 60,
            "invalid period {text:?}: recurring work comes back at most once a minute"
        );
        let d = chrono::Duration::from_std(d).context("period too long")?;
        Ok(Every::Period(d))
    }

    /// When work last added at `last` is due again: `last` plus the period, or the first
    /// daily time after `last`.
    pub fn next_after(&self, last: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            Every::Period(p) => last + p,
            Every::DailyAt(at) => {
                let same_day = last.date_naive().and_time(at).and_utc();
                if same_day > last {
                    same_day
                } else {
                    same_day + chrono::Duration::days(1)
                }
            }
        }
    }

    /// Whether work last added at `last` is due at `now`. However many periods passed,
    /// it is due once.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now >= self.next_after(last)
    }
}

impl std::fmt::Display for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Every::Period(p) => {
                let m = p.num_minutes();
                match (m % (24 * 60), m % 60) {
                    (0, _) => write!(f, "every {}d", m / (24 * 60)),
                    (_, 0) => write!(f, "every {}h", m / 60),
                    _ => write!(f, "every {m}m"),
                }
            }
            Every::DailyAt(t) => write!(f, "daily at {} UTC", t.format("%H:%M")),
        }
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
    fn recurring_periods_and_daily_times() {
        let t = |s| parse(s).unwrap();
        let day = Every::parse("24h").unwrap();
        assert_eq!(day.to_string(), "every 1d");
        assert_eq!(Every::parse("36h").unwrap().to_string(), "every 36h");
        assert_eq!(Every::parse("90m").unwrap().to_string(), "every 90m");
        assert!(!day.due(t("2026-01-01T00:00:00Z"), t("2026-01-01T23:59:59Z")));
        assert!(day.due(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z")));
        assert!(day.due(t("2026-01-01T00:00:00Z"), t("2026-01-09T00:00:00Z")));
        let six = Every::parse("daily at 06:00").unwrap();
        assert_eq!(Every::parse("06:00").unwrap(), six);
        assert_eq!(six.to_string(), "daily at 06:00 UTC");
        // Added at 10:00: due at the next 06:00, not the same day's.
        assert_eq!(
            six.next_after(t("2026-01-01T10:00:00Z")),
            t("2026-01-02T06:00:00Z")
        );
        assert_eq!(
            six.next_after(t("2026-01-01T05:00:00Z")),
            t("2026-01-01T06:00:00Z")
        );
        for bad in ["", "soon", "25:00", "30s", "daily"] {
            assert!(Every::parse(bad).is_err(), "{bad}");
        }
        assert!(Every::parse("1h 30m").is_ok());
        assert!(Every::parse("7d").is_ok());
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
