//! `perpetual report daily`: the day's team status report and performance metrics.

use super::Exit;
use super::output::print_json;
use crate::root::Root;
use crate::run::report;
use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// The report subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Write reports/team_status_<date>.md and performance_metrics/<date>.json: pairs
    /// added, files, tasks and grades, sessions and how they ended, tokens per pair, API
    /// calls, idle time per agent, the loop's uptime, hours without human intervention.
    Daily {
        /// The UTC day, YYYY-MM-DD (default: today, so far). `perpetual run` writes each
        /// day's report by itself once the day has ended.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<chrono::NaiveDate>,
        /// Print the figures as JSON (the report files are written too).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    match args.command {
        ReportCommand::Daily { date, json } => {
            let date = date.unwrap_or_else(|| crate::clock::now().date_naive());
            let d = report::daily(&conn, root, &config, date)?;
            let (md, metrics) = report::write(&conn, root, &d)?;
            if json {
                print_json(&d)?;
                return Ok(Exit::Ok);
            }
            let rel = |p: &std::path::Path| {
                p.strip_prefix(root.dir())
                    .unwrap_or(p)
                    .display()
                    .to_string()
            };
            println!(
                "report of {}{}: {} and {}",
                d.date,
                if d.complete { "" } else { " (so far)" },
                rel(&md),
                rel(&metrics)
            );
            for line in summary_lines(&d) {
                println!("  {line}");
            }
        }
    }
    Ok(Exit::Ok)
}

/// The day's figures in a few lines (`report daily` and `status`).
pub(super) fn summary_lines(d: &report::Daily) -> Vec<String> {
    use crate::human::thousands;
    let grades: Vec<String> = d
        .tasks
        .grades
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    vec![
        format!(
            "pairs     {} added ({:.1}/hour); files {} integrated, {} rejected, {} duplicate",
            thousands(d.pairs.added),
            d.pairs.per_hour,
            d.files.integrated,
            d.files.rejected,
            d.files.duplicate
        ),
        format!(
            "tasks     {} completed{}{}",
            d.tasks.completed,
            if grades.is_empty() {
                String::new()
            } else {
                format!(" ({})", grades.join(", "))
            },
            d.tasks
                .avg_completion_seconds
                .map(|s| format!(", {} on average", crate::clock::human_duration(s as i64)))
                .unwrap_or_default()
        ),
        format!(
            "sessions  {} started, {} wrapped, {} SIGKILL, {} breaker trip(s); tokens {}{}",
            d.sessions.started,
            d.sessions.wrapped,
            d.sessions.sigkills,
            d.sessions.breaker_trips,
            thousands(d.tokens.used),
            d.tokens
                .per_new_pair
                .map(|t| format!(" ({t:.1} per new pair)"))
                .unwrap_or_default()
        ),
        format!(
            "loop      up {} ({:.1}%)",
            crate::clock::human_duration(d.loop_uptime.seconds),
            d.loop_uptime.percent
        ),
        format!(
            "autonomy  {:.1} h without human intervention (longest stretch); {}",
            d.autonomy.hours_without_intervention,
            d.autonomy
                .hours_since_last_intervention
                .map(|h| format!("{h:.1} h since the last manual command"))
                .unwrap_or_else(|| "no manual command ever recorded".to_string())
        ),
    ]
}
