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
//! over the kinds it has limits for; the kind that sets it is the *binding* one
//! ([`binding`]).
//!
//! Thresholds may differ by kind and by agent (the seeds wrap an API quota at 85% and
//! batch-job slots at 90%): `[thresholds]` holds the levels every kind shares and, in
//! `[thresholds.<kind>]`, a kind's own; `[agents.<name>.thresholds]` the same for one
//! agent. A level is looked up in that order: the agent's kind, the agent's, the kind,
//! then the shared one ([`Thresholds::with`], [`Thresholds::of`]).

use serde::{Deserialize, Serialize};

/// Percentages at which the level changes (`[thresholds]` in perpetual.toml): the
/// levels every kind shares, and each kind's own changes to them.
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
    /// `[thresholds.tokens]`: tokens per session.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub tokens: ThresholdOverride,
    /// `[thresholds.api_calls]`: API calls per day.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub api_calls: ThresholdOverride,
    /// `[thresholds.slots]`: concurrent slots.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub slots: ThresholdOverride,
    /// `[thresholds.wall_time]`: wall time per session.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub wall_time: ThresholdOverride,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning: 75.0,
            wrap: 85.0,
            hard_stop: 90.0,
            critical: 95.0,
            tokens: ThresholdOverride::default(),
            api_calls: ThresholdOverride::default(),
            slots: ThresholdOverride::default(),
            wall_time: ThresholdOverride::default(),
        }
    }
}

/// Thresholds one scope changes, each optional (`[thresholds.slots]`, `wrap = 90`): the
/// others are inherited.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdOverride {
    /// See [`Thresholds::warning`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
    /// See [`Thresholds::wrap`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap: Option<f64>,
    /// See [`Thresholds::hard_stop`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_stop: Option<f64>,
    /// See [`Thresholds::critical`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
}

impl ThresholdOverride {
    /// Changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ThresholdOverride::default()
    }

    /// These values, else `under`'s.
    pub fn or(self, under: ThresholdOverride) -> ThresholdOverride {
        ThresholdOverride {
            warning: self.warning.or(under.warning),
            wrap: self.wrap.or(under.wrap),
            hard_stop: self.hard_stop.or(under.hard_stop),
            critical: self.critical.or(under.critical),
        }
    }
}

/// One agent's changes to the thresholds (`[agents.<name>.thresholds]`): the levels of
/// every kind of its budget, and of one kind (`slots = { wrap = 90.0, ... }`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentThresholds {
    /// See [`Thresholds::warning`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
    /// See [`Thresholds::wrap`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap: Option<f64>,
    /// See [`Thresholds::hard_stop`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_stop: Option<f64>,
    /// See [`Thresholds::critical`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
    /// Its tokens per session.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub tokens: ThresholdOverride,
    /// Its API calls per day.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub api_calls: ThresholdOverride,
    /// Its slots.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub slots: ThresholdOverride,
    /// Its wall time per session.
    #[serde(skip_serializing_if = "ThresholdOverride::is_empty")]
    pub wall_time: ThresholdOverride,
}

impl AgentThresholds {
    /// Changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == AgentThresholds::default()
    }

    fn every_kind(&self) -> ThresholdOverride {
        ThresholdOverride {
            warning: self.warning,
            wrap: self.wrap,
            hard_stop: self.hard_stop,
            critical: self.critical,
        }
    }
}

impl Thresholds {
    /// Each threshold above 0 and strictly above the one before, for every kind.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_levels()?;
        for kind in Kind::ALL {
            let t = self.of(kind);
            t.validate_levels().map_err(|e| {
                anyhow::anyhow!(
                    "{e}; for {} the thresholds are warning {} < wrap {} < hard_stop {} < critical {} once [thresholds.{}] is applied: set every level it moves past",
                    kind.label(),
                    t.warning,
                    t.wrap,
                    t.hard_stop,
                    t.critical,
                    kind.config_key()
                )
            })?;
        }
        Ok(())
    }

    fn validate_levels(&self) -> anyhow::Result<()> {
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

    /// The change `[thresholds.<kind>]` makes.
    pub fn override_of(&self, kind: Kind) -> ThresholdOverride {
        match kind {
            Kind::Tokens => self.tokens,
            Kind::ApiCalls => self.api_calls,
            Kind::Slots => self.slots,
            Kind::WallTime => self.wall_time,
        }
    }

    /// The levels of one kind: its own thresholds where it has them, else the shared ones.
    /// The result has no per-kind changes left.
    pub fn of(&self, kind: Kind) -> Thresholds {
        let o = self.override_of(kind);
        Thresholds {
            warning: o.warning.unwrap_or(self.warning),
            wrap: o.wrap.unwrap_or(self.wrap),
            hard_stop: o.hard_stop.unwrap_or(self.hard_stop),
            critical: o.critical.unwrap_or(self.critical),
            ..Thresholds::default()
        }
    }

    /// The level a percentage of one kind of budget falls in.
    pub fn level_of(&self, kind: Kind, percent: f64) -> Level {
        self.of(kind).level(percent)
    }

    /// These thresholds as one agent sees them: its changes (its kind's, then its own)
    /// come before the kind's and the shared ones.
    pub fn with(&self, agent: &AgentThresholds) -> Thresholds {
        let all = agent.every_kind();
        let base = |shared: f64, mine: Option<f64>| mine.unwrap_or(shared);
        let kind = |k: Kind, mine: ThresholdOverride| mine.or(all).or(self.override_of(k));
        Thresholds {
            warning: base(self.warning, all.warning),
            wrap: base(self.wrap, all.wrap),
            hard_stop: base(self.hard_stop, all.hard_stop),
            critical: base(self.critical, all.critical),
            tokens: kind(Kind::Tokens, agent.tokens),
            api_calls: kind(Kind::ApiCalls, agent.api_calls),
            slots: kind(Kind::Slots, agent.slots),
            wall_time: kind(Kind::WallTime, agent.wall_time),
        }
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
    /// Every kind, in the order they are shown.
    pub const ALL: [Kind; 4] = [Kind::Tokens, Kind::ApiCalls, Kind::Slots, Kind::WallTime];

    /// Its table under `[thresholds]` and `[agents.<name>.thresholds]`.
    pub fn config_key(self) -> &'static str {
        match self {
            Kind::Tokens => "tokens",
            Kind::ApiCalls => "api_calls",
            Kind::Slots => "slots",
            Kind::WallTime => "wall_time",
        }
    }

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

    /// `used` of `limit`, or None when `limit` is 0 (no limit of that kind). The level
    /// is the one the kind's thresholds give.
    pub fn new(kind: Kind, used: u64, limit: u64, thresholds: &Thresholds) -> Option<Usage> {
        (limit > 0).then(|| {
            let percent = percent(used, limit);
            Usage {
                kind,
                used,
                limit,
                percent,
                level: thresholds.level_of(kind, percent),
            }
        })
    }

    /// `slots 9/10, 90%: wrap`: the kind, the amount and the level in a few words, how
    /// the binding kind is named wherever a level is shown.
    pub fn headline(&self) -> String {
        format!(
            "{} {}/{}, {}%: {}",
            self.kind.label(),
            crate::human::thousands(self.used),
            crate::human::thousands(self.limit),
            short_percent(self.percent),
            self.level.as_str()
        )
    }
}

/// `90`, `85.5`: a percentage without a trailing `.0`.
pub fn short_percent(p: f64) -> String {
    let one = format!("{p:.1}");
    one.strip_suffix(".0").map(str::to_string).unwrap_or(one)
}

/// The kind that sets the level: the worst level, and of those the highest share of its
/// limit (None when there are no limits).
pub fn binding(usages: &[Usage]) -> Option<&Usage> {
    usages
        .iter()
        .max_by(|a, b| a.level.cmp(&b.level).then(a.percent.total_cmp(&b.percent)))
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

/// What `perpetual monitor` reports: one count of one kind against one budget.
#[derive(Debug, Clone, Serialize)]
pub struct Monitor {
    /// Which budget (tokens unless `--api-calls` or `--slots`).
    pub kind: Kind,
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

/// The seeds' token monitor: where `used` of `budget` stands, at the thresholds of
/// tokens.
pub fn monitor(used: u64, budget: u64, thresholds: &Thresholds) -> Monitor {
    monitor_of(Kind::Tokens, used, budget, thresholds)
}

/// The monitor for any kind: where `used` of `limit` stands at that kind's thresholds.
pub fn monitor_of(kind: Kind, used: u64, budget: u64, thresholds: &Thresholds) -> Monitor {
    let thresholds = &thresholds.of(kind);
    let percent = percent(used, budget);
    let at = |p: f64| (budget as f64 * p / 100.0).ceil() as u64;
    let level = thresholds.level(percent);
    Monitor {
        kind,
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
    fn a_kind_and_an_agent_change_their_own_levels() {
        let global: Thresholds =
            toml::from_str("[slots]\nwrap = 90\nhard_stop = 95\ncritical = 99\n").unwrap();
        global.validate().unwrap();
        // Slots at 90% wrap, at 85% only warn; tokens keep the shared 85%.
        assert_eq!(global.level_of(Kind::Slots, 90.0), Level::Wrap);
        assert_eq!(global.level_of(Kind::Slots, 85.0), Level::Warning);
        assert_eq!(global.level_of(Kind::Tokens, 85.0), Level::Wrap);
        let u = Usage::new(Kind::Slots, 9, 10, &global).unwrap();
        assert_eq!(u.headline(), "slots 9/10, 90%: wrap");
        // An agent's own level beats the kind's shared one; its kind's beats its own.
        let agent: AgentThresholds = toml::from_str("wrap = 80\n[api_calls]\nwrap = 70\n").unwrap();
        let t = global.with(&agent);
        assert_eq!(t.of(Kind::Slots).wrap, 80.0);
        assert_eq!(t.of(Kind::ApiCalls).wrap, 70.0);
        assert_eq!(t.of(Kind::Tokens).wrap, 80.0);
        assert_eq!(t.of(Kind::Slots).hard_stop, 95.0);
        // A kind's level that passes the next one is refused, naming the kind.
        let bad: Thresholds = toml::from_str("[slots]\nwrap = 90\n").unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("[thresholds.slots]"), "{err}");
    }

    #[test]
    fn the_binding_kind_is_the_worst_then_the_fullest() {
        let t = Thresholds::default();
        let u = [
            Usage::new(Kind::Tokens, 80, 100, &t).unwrap(),
            Usage::new(Kind::ApiCalls, 87, 100, &t).unwrap(),
            Usage::new(Kind::WallTime, 86, 100, &t).unwrap(),
        ];
        assert_eq!(binding(&u).unwrap().kind, Kind::ApiCalls);
        assert!(binding(&[]).is_none());
        assert_eq!(short_percent(85.0), "85");
        assert_eq!(short_percent(85.25), "85.2");
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
