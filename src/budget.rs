//! Budgets and the monitor: the four kinds of budget an agent works under, the
//! thresholds, and the level a usage falls in, with the action each level calls for
//! (the seeds' token monitor).
//!
//! | kind | limit (perpetual.toml, `[agents.<name>.budget]`) | used |
//! | --- | --- | --- |
//! | tokens | `tokens_per_session` | the session's tokens, as the last checkpoint or wrap reported them |
//! | API calls | `api_calls_per_day` | calls recorded by checkpoints of the agent's sessions during the current UTC day (resets at 00:00 UTC) |
//! | slots | `slots` | the agent's active sessions (concurrent batch jobs, pipelines) |
//! | wall time | `wall_minutes_per_session` (× 60) | seconds since the session started, so the wrap level is reached for any budget |
//!
//! A limit of 0 means "no limit of that kind". A session's level is the worst level
//! over the kinds it has limits for.

use serde::{Deserialize, Serialize};

/// Percentages at which the level changes (`[thresholds]` in perpetual.toml).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Start looking for a wrap point.
    pub warning: f64,
    /// Wrap now: finish the current unit, then `session wrap`.
    pub wrap: f64,
    /// Stop at once; a task left unfinished past this is flagged "needs review".
    pub hard_stop: f64,
    /// Emergency: wrap immediately, the state may be incomplete.
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning: 75.0,
            wrap: 85.0,
            hard_stop: 90.0,
            critical: 95.0,
        }
    }
}

impl Thresholds {
    /// Each threshold above 0 and strictly above the one before.
    pub fn validate(&self) -> anyhow::Result<()> {
        let t = [self.warning, self.wrap, self.hard_stop, self.critical];
        anyhow::ensure!(
            t[0] > 0.0 && t.windows(2).all(|w| w[0] < w[1]) && t.iter().all(|x| x.is_finite()),
            "thresholds must rise strictly: 0 < warning < wrap < hard_stop < critical (got {} {} {} {})",
            t[0],
            t[1],
            t[2],
            t[3]
        );
        Ok(())
    }

    /// The level a percentage of a budget falls in.
    pub fn level(&self, percent: f64) -> Level {
        if percent >= self.critical {
            Level::Critical
        } else if percent >= self.hard_stop {
            Level::HardStop
        } else if percent >= self.wrap {
            Level::Wrap
        } else if percent >= self.warning {
            Level::Warning
        } else {
            Level::Healthy
        }
    }
}

/// One agent's budget (`[agents.<name>.budget]`). 0 means no limit of that kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Tokens one session may use (the seeds' 200,000).
    pub tokens_per_session: u64,
    /// API calls per UTC day, over all the agent's sessions.
    pub api_calls_per_day: u64,
    /// Sessions the agent may run at once (batch-job slots).
    pub slots: u64,
    /// Minutes one session may run.
    pub wall_minutes_per_session: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            tokens_per_session: DEFAULT_TOKENS_PER_SESSION,
            api_calls_per_day: 0,
            slots: 0,
            wall_minutes_per_session: 0,
        }
    }
}

/// The seeds' session budget, and `perpetual monitor`'s default.
pub const DEFAULT_TOKENS_PER_SESSION: u64 = 200_000;

/// Where a usage stands, from best to worst. The order matters: the worst kind wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Below the warning threshold.
    Healthy,
    /// At or past warning.
    Warning,
    /// At or past wrap.
    Wrap,
    /// At or past hard stop.
    HardStop,
    /// At or past critical.
    Critical,
}

impl Level {
    /// The word used in JSON, the database and the README.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Healthy => "healthy",
            Level::Warning => "warning",
            Level::Wrap => "wrap",
            Level::HardStop => "hard_stop",
            Level::Critical => "critical",
        }
    }

    /// Parses [`Level::as_str`]; unknown words are healthy.
    pub fn parse(s: &str) -> Level {
        match s {
            "warning" => Level::Warning,
            "wrap" => Level::Wrap,
            "hard_stop" => Level::HardStop,
            "critical" => Level::Critical,
            _ => Level::Healthy,
        }
    }

    /// What to do at this level (the seeds' token monitor table).
    pub fn action(self) -> &'static str {
        match self {
            Level::Healthy => "keep working",
            Level::Warning => "look for a wrap point: finish the current unit of work soon",
            Level::Wrap => "wrap now: complete the current unit, then `perpetual session wrap`",
            Level::HardStop => {
                "hard stop: wrap immediately (`perpetual session wrap`); an unfinished task will be flagged for review"
            }
            Level::Critical => {
                "critical: emergency wrap now (`perpetual session wrap`); the state may be incomplete"
            }
        }
    }

    /// True at or past the wrap threshold.
    pub fn must_wrap(self) -> bool {
        self >= Level::Wrap
    }
}

/// A budget kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Tokens per session.
    Tokens,
    /// API calls per UTC day.
    ApiCalls,
    /// Concurrent sessions.
    Slots,
    /// Wall time per session, in seconds (the limit is `wall_minutes_per_session` × 60).
    WallTime,
}

impl Kind {
    /// The name shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tokens => "tokens",
            Kind::ApiCalls => "API calls today",
            Kind::Slots => "slots",
            Kind::WallTime => "wall time (s)",
        }
    }
}

/// The usage of one budget kind against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    /// Which budget.
    pub kind: Kind,
    /// Used so far.
    pub used: u64,
    /// The limit (never 0: kinds without a limit are left out).
    pub limit: u64,
    /// used / limit, in percent.
    pub percent: f64,
    /// The level that percentage falls in.
    pub level: Level,
}

impl Usage {
    /// `150,000 / 200,000 (75.0%, warning)`: how every view shows an amount.
    pub fn amount(&self) -> String {
        format!(
            "{} / {} ({:.1}%, {})",
            crate::human::thousands(self.used),
            crate::human::thousands(self.limit),
            self.percent,
            self.level.as_str()
        )
    }

    /// `used` of `limit`, or None when `limit` is 0 (no limit of that kind).
    pub fn new(kind: Kind, used: u64, limit: u64, thresholds: &Thresholds) -> Option<Usage> {
        (limit > 0).then(|| {
            let percent = percent(used, limit);
            Usage {
                kind,
                used,
                limit,
                percent,
                level: thresholds.level(percent),
            }
        })
    }
}

/// `used / limit` in percent (0 when there is no limit).
pub fn percent(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        0.0
    } else {
        used as f64 * 100.0 / limit as f64
    }
}

/// The worst level over several kinds (healthy when there are none).
pub fn worst(usages: &[Usage]) -> Level {
    usages
        .iter()
        .map(|u| u.level)
        .max()
        .unwrap_or(Level::Healthy)
}

/// What `perpetual monitor` reports: one token count against one budget.
#[derive(Debug, Clone, Serialize)]
pub struct Monitor {
    /// Tokens used.
    pub used: u64,
    /// The budget.
    pub budget: u64,
    /// used / budget, in percent.
    pub percent: f64,
    /// The level.
    pub level: Level,
    /// What to do.
    pub action: &'static str,
    /// The thresholds, as absolute token counts.
    pub warning_at: u64,
    /// See `warning_at`.
    pub wrap_at: u64,
    /// See `warning_at`.
    pub hard_stop_at: u64,
    /// See `warning_at`.
    pub critical_at: u64,
}

/// The seeds' token monitor: where `used` of `budget` stands.
pub fn monitor(used: u64, budget: u64, thresholds: &Thresholds) -> Monitor {
    let percent = percent(used, budget);
    let at = |p: f64| (budget as f64 * p / 100.0).ceil() as u64;
    let level = thresholds.level(percent);
    Monitor {
        used,
        budget,
        percent,
        level,
        action: level.action(),
        warning_at: at(thresholds.warning),
        wrap_at: at(thresholds.wrap),
        hard_stop_at: at(thresholds.hard_stop),
        critical_at: at(thresholds.critical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_at_the_seeds_thresholds() {
        let t = Thresholds::default();
        for (used, want) in [
            (0, Level::Healthy),
            (143_000, Level::Healthy),
            (149_999, Level::Healthy),
            (150_000, Level::Warning),
            (170_000, Level::Wrap),
            (180_000, Level::HardStop),
            (190_000, Level::Critical),
            (250_000, Level::Critical),
        ] {
            assert_eq!(monitor(used, 200_000, &t).level, want, "{used}");
        }
    }

    #[test]
    fn thresholds_must_rise() {
        assert!(Thresholds::default().validate().is_ok());
        let bad = Thresholds {
            wrap: 95.0,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn worst_kind_wins_and_no_limit_is_left_out() {
        let t = Thresholds::default();
        assert!(Usage::new(Kind::Slots, 3, 0, &t).is_none());
        let u = [
            Usage::new(Kind::Tokens, 10, 100, &t).unwrap(),
            Usage::new(Kind::ApiCalls, 900, 1000, &t).unwrap(),
        ];
        assert_eq!(worst(&u), Level::HardStop);
        assert_eq!(worst(&[]), Level::Healthy);
    }
}
