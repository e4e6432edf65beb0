//! `perpetual monitor USED`: the seeds' token monitor. The exit status tells the level.

use super::Exit;
use super::output::{bar, print_json, thousands};
use crate::budget::{self, DEFAULT_TOKENS_PER_SESSION, Level};
use crate::root::Root;
use anyhow::{Result, ensure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tokens used so far.
    pub used: u64,
    /// The budget (default: the agent's tokens_per_session with --agent, else 200,000).
    #[arg(long, value_name = "N")]
    pub budget: Option<u64>,
    /// Take the budget from this agent's [agents.<name>.budget] in perpetual.toml.
    #[arg(long)]
    pub agent: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    // Only the configuration: the monitor never opens or creates the database.
    let config = root.config()?;
    let budget = match (args.budget, &args.agent) {
        (Some(b), _) => b,
        (None, Some(a)) => match config.budget_of(a).tokens_per_session {
            0 => DEFAULT_TOKENS_PER_SESSION,
            n => n,
        },
        (None, None) => DEFAULT_TOKENS_PER_SESSION,
    };
    ensure!(budget > 0, "the budget must be at least 1 token");
    let m = budget::monitor(args.used, budget, &config.thresholds);
    if args.json {
        print_json(&m)?;
    } else {
        let t = &config.thresholds;
        println!(
            "tokens      {} / {} ({:.1}%)",
            thousands(m.used),
            thousands(m.budget),
            m.percent
        );
        println!("            {}", bar(m.percent / 100.0, 40));
        println!("level       {}", m.level.as_str());
        println!("action      {}", m.action);
        println!(
            "thresholds  warning {} ({}%), wrap {} ({}%), hard stop {} ({}%), critical {} ({}%)",
            thousands(m.warning_at),
            t.warning,
            thousands(m.wrap_at),
            t.wrap,
            thousands(m.hard_stop_at),
            t.hard_stop,
            thousands(m.critical_at),
            t.critical
        );
    }
    Ok(exit_of(m.level))
}

/// The exit status of each level (README, "Exit statuses").
pub fn exit_of(level: Level) -> Exit {
    match level {
        Level::Healthy => Exit::Ok,
        Level::Warning => Exit::Warning,
        Level::Wrap => Exit::Wrap,
        Level::HardStop => Exit::HardStop,
        Level::Critical => Exit::Critical,
    }
}
