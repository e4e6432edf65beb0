//! `perpetual backfill DIR`.

use super::Exit;
use super::output::{print_json, thousands};
use crate::root::Root;
use crate::work::backfill::{self, SessionRange, Summary, TaskOptions};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The archive folder (read in place, never moved or changed).
    pub dir: PathBuf,
    /// Only these sessions, e.g. 101-187 (a file's session: its `session` field, else
    /// its name, session_123.json).
    #[arg(long)]
    pub sessions: Option<SessionRange>,
    /// The agent whose task and session the backfill is, and to whom pairs are credited.
    #[arg(long, default_value = "claude_code")]
    pub agent: String,
    /// Token budget of the session (default: the agent's tokens_per_session). Each pair
    /// costs its characters / 4.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Print one JSON object with the summary instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    crate::root::check_agent_name(&args.agent)?;
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a folder of session exports",
        args.dir.display()
    );
    let _lock = root.lock_writer("backfill")?;
    let (config, mut conn) = super::open(root)?;
    let opts = TaskOptions {
        dir: args.dir.canonicalize()?,
        range: args.sessions,
        agent: args.agent.clone(),
        budget: args.budget,
    };
    let mut progress = Progress::new();
    let mut summary = backfill::run_task(&mut conn, root, &config, &opts, &mut |event, plan| {
        progress.file(event.new + event.duplicate + event.invalid, plan);
    })?;
    progress.finish();
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.json {
        print_json(&summary)?;
    } else {
        print_summary(&summary);
    }
    Ok(if summary.wrapped {
        Exit::Wrapped
    } else if summary.files_rejected > 0 {
        Exit::Rejected
    } else {
        Exit::Ok
    })
}

/// A bar on a terminal (files, pairs, pairs per second, ETA); plain lines every few
/// seconds otherwise, so logs stay readable.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    files: u64,
    pairs: u64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bar: None,
            started: Instant::now(),
            last_line: Instant::now(),
            files: 0,
            pairs: 0,
        }
    }

    fn file(&mut self, pairs: u64, plan: &backfill::Plan) {
        self.files += 1;
        self.pairs += pairs;
        let total = plan.files.len() as u64;
        let done = plan.files.iter().filter(|f| f.finished).count() as u64;
        let rate = self.pairs as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}  ETA {eta}")
                        .expect("valid template"),
                );
                bar
            });
            bar.set_position(done);
            bar.set_message(format!(
                "{} pairs, {} pairs/s",
                thousands(self.pairs),
                thousands(rate as u64)
            ));
        } else if self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            eprintln!(
                "backfill: {done}/{total} files, {} pairs, {} pairs/s",
                thousands(self.pairs),
                thousands(rate as u64)
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(s: &Summary) {
    if s.nothing_to_backfill {
        println!(
            "nothing to backfill: no file{} with a session number{}",
            s.range
                .map_or(String::new(), |r| format!(" of sessions {r}")),
            if s.files_outside + s.files_unnumbered > 0 {
                format!(
                    " ({} file(s) outside the range, {} without a session number, left alone)",
                    s.files_outside, s.files_unnumbered
                )
            } else {
                String::new()
            }
        );
        return;
    }
    println!(
        "task {}: {}/{} sessions done{}",
        s.task,
        s.sessions_done,
        s.sessions_total,
        s.range.map_or(String::new(), |r| format!(" (range {r})"))
    );
    if !s.sessions_missing.is_empty() {
        println!(
            "missing: no file for session(s) {}",
            backfill::compact(&s.sessions_missing)
        );
    }
    if s.files_outside > 0 || s.files_unnumbered > 0 {
        println!(
            "left alone: {} file(s) outside the range, {} without a session number",
            s.files_outside, s.files_unnumbered
        );
    }
    println!(
        "files: {} integrated, {} rejected, {} duplicate",
        s.files_integrated, s.files_rejected, s.files_duplicate
    );
    println!(
        "pairs: {} new, {} duplicate, {} invalid; {:.2} s, {} pairs/s",
        thousands(s.pairs_new),
        thousands(s.pairs_duplicate),
        thousands(s.pairs_invalid),
        s.seconds,
        thousands(s.pairs_per_second.round() as u64)
    );
    if s.budget > 0 {
        println!(
            "tokens: {} this run, {} / {} in session {} ({:.1}%)",
            thousands(s.tokens),
            thousands(s.session_tokens),
            thousands(s.budget),
            s.session.as_deref().unwrap_or("-"),
            s.session_tokens as f64 * 100.0 / s.budget as f64
        );
    }
    if s.wrapped {
        println!("wrapped at the budget's wrap threshold: run the same command again to continue");
    }
    if s.completed {
        println!(
            "task complete{}",
            s.grade
                .as_deref()
                .map_or(String::new(), |g| format!(", grade {g}"))
        );
    }
    if let Some(h) = &s.handoff {
        println!("handoff: {}", h.display());
    }
    for step in &s.wrap_steps {
        if step.status == crate::work::session::StepStatus::Failed {
            println!("wrap step {} failed: {}", step.step, step.detail);
        }
    }
}
