//! `perpetual monitor USED` and `perpetual monitor --transcript PATH`: the seeds' token
//! monitor, fed by hand or by a Claude Code transcript. The exit status tells the level.

use super::Exit;
use super::output::{bar, print_json, thousands};
use crate::budget::{self, DEFAULT_TOKENS_PER_SESSION, Kind, Level};
use crate::root::Root;
use anyhow::{Result, ensure};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["used", "transcript", "api_calls", "slots"])))]
pub struct Args {
    /// Tokens used so far.
    pub used: Option<u64>,
    /// Read the tokens from a Claude Code session transcript (JSON Lines under
    /// ~/.claude/projects/): input + cache creation + cache read tokens of the last
    /// assistant reply, against monitor.context_window (default 200,000).
    #[arg(long, value_name = "PATH", conflicts_with = "used")]
    pub transcript: Option<std::path::PathBuf>,
    /// The budget; 0 = no limit (default: the agent's tokens_per_session with
    /// --agent, where 0 is no limit too, else 200,000; with --transcript,
    /// monitor.context_window).
    #[arg(long, value_name = "N")]
    pub budget: Option<u64>,
    /// API calls made today, against the agent's api_calls_per_day (or --budget), at
    /// the thresholds of API calls.
    #[arg(long, value_name = "N")]
    pub api_calls: Option<u64>,
    /// Slots in use (batch jobs, sessions running), against the agent's slots (or
    /// --budget), at the thresholds of slots.
    #[arg(long, value_name = "N")]
    pub slots: Option<u64>,
    /// Take the budget and the thresholds from this agent's [agents.<name>] in
    /// perpetual.toml (needed by --api-calls and --slots unless --budget is given).
    #[arg(long, required_unless_present_any = ["budget", "used", "transcript"])]
    pub agent: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    // Only the configuration: the monitor never opens or creates the database.
    let config = root.config()?;
    if args.api_calls.is_some() || args.slots.is_some() {
        return run_kind(&config, &args);
    }
    let budget = match (args.budget, &args.agent) {
        (Some(b), _) => b,
        (None, Some(a)) => config.budget_of(a).tokens_per_session,
        (None, None) if args.transcript.is_some() => config.monitor.context_window,
        (None, None) => DEFAULT_TOKENS_PER_SESSION,
    };
    let (used, reply) = match &args.transcript {
        Some(path) => {
            ensure!(path.is_file(), "no transcript at {}", path.display());
            let reply = crate::run::transcript::read(path)?;
            (reply.as_ref().map_or(0, |u| u.context_tokens), reply)
        }
        None => (args.used.unwrap_or(0), None),
    };
    let thresholds = match &args.agent {
        Some(a) => config.thresholds_of(a),
        None => config.thresholds,
    };
    let m = budget::monitor(used, budget, &thresholds);
    if args.json {
        #[derive(serde::Serialize)]
        struct WithSource<'a> {
            #[serde(flatten)]
            monitor: &'a budget::Monitor,
            #[serde(skip_serializing_if = "Option::is_none")]
            transcript: Option<&'a std::path::Path>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reply: Option<&'a crate::run::transcript::ContextUsage>,
        }
        print_json(&WithSource {
            monitor: &m,
            transcript: args.transcript.as_deref(),
            reply: reply.as_ref(),
        })?;
    } else {
        if let Some(path) = &args.transcript {
            match &reply {
                Some(u) => println!(
                    "transcript  {} (line {}{}{}): input {} + cache creation {} + cache read {}",
                    path.display(),
                    u.line,
                    u.model
                        .as_deref()
                        .map(|m| format!(", {m}"))
                        .unwrap_or_default(),
                    u.timestamp
                        .as_deref()
                        .map(|t| format!(", {t}"))
                        .unwrap_or_default(),
                    thousands(u.input_tokens),
                    thousands(u.cache_creation_input_tokens),
                    thousands(u.cache_read_input_tokens)
                ),
                None => println!(
                    "transcript  {}: no assistant reply with a usage yet",
                    path.display()
                ),
            }
        }
        if m.budget == 0 {
            // 0 is no limit, as everywhere a budget is configured.
            println!("tokens      {} (no limit)", thousands(m.used));
            println!("level       {}", m.level.as_str());
            println!("action      {}", m.action);
            return Ok(exit_of(m.level));
        }
        let t = &thresholds.of(Kind::Tokens);
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

/// `monitor --api-calls N` and `monitor --slots N`: one count of that kind against the
/// agent's limit (or `--budget`), at the agent's thresholds of that kind.
fn run_kind(config: &crate::config::Config, args: &Args) -> Result<Exit> {
    let (kind, used) = match (args.api_calls, args.slots) {
        (Some(n), _) => (Kind::ApiCalls, n),
        (None, Some(n)) => (Kind::Slots, n),
        (None, None) => unreachable!("run_kind is called with --api-calls or --slots"),
    };
    let thresholds = match &args.agent {
        Some(a) => {
            crate::root::check_agent_name(a)?;
            config.thresholds_of(a)
        }
        None => config.thresholds,
    };
    let limit = match (args.budget, &args.agent) {
        (Some(b), _) => b,
        (None, Some(a)) => {
            let b = config.budget_of(a);
            match kind {
                Kind::ApiCalls => b.api_calls_per_day,
                _ => b.slots,
            }
        }
        (None, None) => unreachable!("clap requires --agent or --budget"),
    };
    if limit == 0 {
        // No limit of that kind: nothing to wrap for.
        if args.json {
            print_json(&serde_json::json!({
                "kind": kind,
                "used": used,
                "budget": 0,
                "level": Level::Healthy,
                "action": Level::Healthy.action(),
                "limit": "none",
            }))?;
        } else {
            println!(
                "{:<11} {} (no limit: {} has no {} budget)",
                kind.label(),
                thousands(used),
                args.agent.as_deref().unwrap_or("-"),
                kind.config_key()
            );
            println!("level       healthy");
        }
        return Ok(Exit::Ok);
    }
    let m = budget::monitor_of(kind, used, limit, &thresholds);
    if args.json {
        print_json(&m)?;
    } else {
        let t = thresholds.of(kind);
        let u = budget::Usage::new(kind, used, limit, &thresholds).expect("a limit above 0");
        println!(
            "{:<11} {} / {} ({:.1}%)",
            kind.label(),
            thousands(m.used),
            thousands(m.budget),
            m.percent
        );
        println!("            {}", bar(m.percent / 100.0, 40));
        println!("level       {} ({})", m.level.as_str(), u.headline());
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
