//! The command line: clap definitions (their doc comments are the `--help`), and one
//! handler file per command. Handlers print; the library modules they call own the
//! behaviour and the types.

mod agent;
mod assign;
mod backfill;
mod charts;
mod coverage;
mod deliver;
mod export;
mod files;
mod generate;
mod hooks;
mod import;
mod import_db;
mod ingest;
mod init;
mod monitor;
mod near_dups;
pub mod output;
mod quality;
mod record;
mod report;
pub mod run;
mod serve;
mod session;
mod split;
mod stats;
mod status;
mod task;
mod watch;

use crate::root::Root;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit statuses, documented in the README. One place maps outcomes to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An error stopped the command (message on stderr).
    Error = 1,
    /// Bad usage (clap's own status).
    Usage = 2,
    /// The command finished, but at least one file was rejected (kept in rejected/ with its reason).
    Rejected = 3,
    /// Nothing to work on: `task next` / `session start` found no ready task, or
    /// `session status` found no active session.
    Nothing = 4,
    /// `session start` refused: the agent's API calls today or its slots are at or past
    /// the wrap threshold.
    OverBudget = 5,
    /// `session wrap` archived the session, but a step failed (listed in its output).
    Partial = 6,
    /// `monitor`: at or past the warning threshold.
    Warning = 10,
    /// `monitor`: at or past the wrap threshold: wrap now.
    Wrap = 11,
    /// `monitor`: at or past the hard-stop threshold.
    HardStop = 12,
    /// `monitor`: at or past the critical threshold.
    Critical = 13,
    /// `backfill` stopped at the wrap threshold of its budget and wrapped its session;
    /// run it again to continue (EX_TEMPFAIL).
    Wrapped = 75,
}

/// A mistake in how a command was called that clap's own checks cannot see (an
/// argument that depends on another one): printed like any error, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// DONE/TOTAL (or DONE alone) as a command-line value: clap refuses a bad one with a
/// usage error (exit 2) before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressArg {
    /// Units done.
    pub done: u64,
    /// Units in all, when given.
    pub total: Option<u64>,
}

impl std::fmt::Display for ProgressArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.total {
            Some(total) => write!(f, "{}/{total}", self.done),
            None => write!(f, "{}", self.done),
        }
    }
}

impl std::str::FromStr for ProgressArg {
    type Err = String;
    fn from_str(s: &str) -> Result<ProgressArg, String> {
        crate::work::tasks::parse_progress(s)
            .map(|(done, total)| ProgressArg { done, total })
            .map_err(|e| format!("{e:#}"))
    }
}

/// perpetual: keeps a deduplicated database of question/answer pairs growing, fed by
/// AI agents that drop JSON files into inbox/<agent>/.
#[derive(Debug, Parser)]
#[command(name = "perpetual", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// The working directory: perpetual.toml, perpetual.db, inbox/, outbox/ (default:
    /// the current directory). Only init, ingest, watch, run and the commands that add
    /// or change something create it; the read-only ones need an existing root.
    #[arg(long, global = true, env = "PERPETUAL_ROOT")]
    pub root: Option<PathBuf>,

    /// Log lines on stderr as text or as JSON objects (one per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log lines (per file); repeat for debug output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow inbox/<agent>/ and integrate each drop within milliseconds, until SIGINT or
    /// SIGTERM (the main job). Files waiting from before are integrated first.
    Watch(watch::Args),
    /// The perpetual loop: assign tasks, run the built-in ones (ingest, backfill), start
    /// each agent's command on its next task in a budgeted session, ask it to wrap at the
    /// threshold, and start the next; until SIGINT or SIGTERM.
    Run(run::Args),
    /// Create perpetual.toml (documented defaults), the database, and inbox/ and outbox/ folders.
    Init,
    /// Integrate every file waiting in inbox/<agent>/, or the files and folders given (read in place).
    Ingest(ingest::Args),
    /// Distinct pairs, progress toward the goal, pairs by agent, category and indicator.
    Stats(stats::Args),
    /// The file ledger: what became of every file read.
    Files(files::Args),
    /// Write realistic generated drops (for tests, benchmarks and demos).
    Generate(generate::Args),
    /// The task stack: add, list, show, next, progress, done, fail, retry, remove, stats,
    /// import, edit, review.
    Task(task::Args),
    /// Budgeted sessions: start, checkpoint, status, list, wrap.
    Session(session::Args),
    /// Integrate archived session exports in place, as a task inside a budgeted session;
    /// wraps at the wrap threshold and exits 75, so the next run continues.
    Backfill(backfill::Args),
    /// Where a token count (or a Claude Code transcript) stands against a budget; the
    /// exit status tells the level (0 healthy, 10 warning, 11 wrap, 12 hard stop, 13 critical).
    Monitor(monitor::Args),
    /// Claude Code hooks: install them in a project; handle one (what they run).
    Hooks(hooks::Args),
    /// The task assigner, once: an ingest task for drops waiting, failed tasks queued
    /// again (priority raised, up to assign.retry_limit), templated queues topped up to
    /// assign.min_ready ready tasks. `perpetual run` does this at every round.
    Assign(assign::Args),
    /// Agents: resume one the circuit breaker paused (or pause one by hand).
    Agent(agent::Args),
    /// The faucet view: each agent's session, task, budget, queue depth, idle time and
    /// pause; the pipeline's pairs against the goal, pairs per hour, files waiting,
    /// bottlenecks; the assigner's latest actions.
    Status(status::Args),
    /// The quality report: flags each pair (empty, short or truncated answers, missing
    /// question marks, boilerplate, mojibake, missing indicator or sources...), stores the
    /// flags, and writes quality_analysis_report.{json,md} and quality_flags.jsonl to
    /// outbox/<agent>/ (default zai) or --out.
    Quality(quality::Args),
    /// Lexical near-duplicates: MinHash signatures of word shingles (stored, so a re-run
    /// hashes only new pairs), LSH candidates, exact Jaccard verification, clusters;
    /// writes duplicate_analysis_detailed.json and near_duplicate_pairs.csv. With
    /// --cosine: semantic near-duplicates from the stored embeddings.
    NearDups(near_dups::Args),
    /// Import the pairs of an existing SQLite database (read-only), with the same keys,
    /// dedup and ledger as drops; resumable (a checkpoint every ingest.checkpoint_every
    /// rows), and a second import adds nothing.
    ImportDb(import_db::Args),
    /// Indicator coverage against a master list (TOML or CSV: indicator, category,
    /// target, aliases): pairs, target, gap and status per indicator, per-category totals,
    /// names in the data outside the plan; writes coverage_report.{json,md} and keeps the
    /// gaps for the assigner ({gap_indicators} in a template).
    Coverage(coverage::Args),
    /// Deliverables that leave the database: `export rag` (the RAG export) and `export
    /// embeddings` (request batches for the Gemini batch embeddings API), to
    /// outbox/<agent>/ (default zai) or --out.
    Export(export::Args),
    /// `import embeddings RESULTS.jsonl`: the vectors of a batch embeddings job.
    Import(import::Args),
    /// Stable, stratified train/val/test splits (JSON Lines, CSV, Parquet) that keep
    /// near-duplicates together; a growing database moves no pair.
    Split(split::Args),
    /// The visualizations/ folder: coverage heatmap, answer lengths, categories, quality,
    /// growth (SVG) and index.html with captions and the figures behind them.
    Charts(charts::Args),
    /// Reports: the daily team status report and performance metrics.
    Report(report::Args),
    /// The web faucet: a read-only web server with the live faucet page, tasks, sessions,
    /// files, a JSON API (/api/status, /api/stats, /api/tasks, /api/files) and /metrics
    /// for Prometheus. Listens on loopback unless given a token.
    Serve(serve::Args),
}

impl Cli {
    /// Where the log goes: `perpetual run --log-dir DIR` writes daily files there (the
    /// newest `--log-files` kept), everything else writes to stderr.
    pub fn log_writer(&self) -> Result<tracing_subscriber::fmt::writer::BoxMakeWriter> {
        use tracing_subscriber::fmt::writer::BoxMakeWriter;
        let Command::Run(args) = &self.command else {
            return Ok(BoxMakeWriter::new(std::io::stderr));
        };
        let Some(dir) = &args.log_dir else {
            return Ok(BoxMakeWriter::new(std::io::stderr));
        };
        let dir = match &self.root {
            Some(root) if dir.is_relative() => root.join(dir),
            _ => dir.clone(),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("run")
            .filename_suffix("log")
            .max_log_files(args.log_files.max(1))
            .build(&dir)
            .with_context(|| format!("cannot write logs in {}", dir.display()))?;
        Ok(BoxMakeWriter::new(appender))
    }

    /// The log level when neither -v nor RUST_LOG says otherwise: long-running commands
    /// log each file; one-shot commands print a summary instead.
    pub fn default_log_level(&self) -> &'static str {
        let long_running = matches!(
            self.command,
            Command::Watch(_) | Command::Run(_) | Command::Serve(_)
        );
        match self.verbose + u8::from(long_running) {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    }
}

impl Command {
    /// Commands that only read: on a missing root they fail (naming it) rather than
    /// create one where a `--root` was mistyped.
    pub fn reads_only(&self) -> bool {
        match self {
            Command::Stats(_) | Command::Files(_) | Command::Status(_) => true,
            Command::Task(t) => matches!(
                t.command,
                task::TaskCommand::List { .. }
                    | task::TaskCommand::Show { .. }
                    | task::TaskCommand::Next { .. }
                    | task::TaskCommand::Stats { .. }
            ),
            Command::Session(s) => matches!(
                s.command,
                session::SessionCommand::Status { .. } | session::SessionCommand::List { .. }
            ),
            _ => false,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<Exit> {
    crate::clock::check_override()?;
    if let Command::Hooks(args) = &cli.command
        && matches!(args.command, hooks::HooksCommand::Handle)
    {
        // Claude Code runs the hook wherever it works: the root is PERPETUAL_ROOT (or
        // --root), else found by walking up; without one, no answer and nothing created.
        return hooks::handle(cli.root.as_deref());
    }
    let dir = cli.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = if cli.command.reads_only() {
        Root::existing(&dir)?
    } else if matches!(cli.command, Command::Monitor(_)) {
        // Reads perpetual.toml when there is one; creates nothing.
        Root::at(&dir)?
    } else {
        Root::new(&dir)?
    };
    let steering = record::describe(&cli.command);
    let exit = match cli.command {
        Command::Watch(args) => watch::run(&root, args),
        Command::Init => init::run(&root),
        Command::Ingest(args) => ingest::run(&root, args),
        Command::Stats(args) => stats::run(&root, args),
        Command::Files(args) => files::run(&root, args),
        Command::Generate(args) => generate::run(&root, args),
        Command::Task(args) => task::run(&root, args),
        Command::Session(args) => session::run(&root, args),
        Command::Monitor(args) => monitor::run(&root, args),
        Command::Backfill(args) => backfill::run(&root, args),
        Command::Hooks(args) => hooks::run(&root, args),
        Command::Assign(args) => assign::run(&root, args),
        Command::Agent(args) => agent::run(&root, args),
        Command::Run(args) => run::run(&root, args),
        Command::Status(args) => status::run(&root, args),
        Command::Quality(args) => quality::run(&root, args),
        Command::NearDups(args) => near_dups::run(&root, args),
        Command::ImportDb(args) => import_db::run(&root, args),
        Command::Coverage(args) => coverage::run(&root, args),
        Command::Export(args) => export::run(&root, args),
        Command::Import(args) => import::run(&root, args),
        Command::Split(args) => split::run(&root, args),
        Command::Charts(args) => charts::run(&root, args),
        Command::Report(args) => report::run(&root, args),
        Command::Serve(args) => serve::run(&root, args),
    }?;
    if let Some(what) = steering {
        record::record(&root, &what);
    }
    Ok(exit)
}

/// Opens the root's configuration and database, creating whatever is missing.
/// The connection leaves the WAL file for the next command when it is dropped
/// ([`crate::store::close`]).
pub(crate) fn open(
    root: &Root,
) -> Result<(crate::config::Config, crate::store::ClosingConnection)> {
    let config = root.config()?;
    root.ensure_layout(&config)?;
    let conn = crate::store::open_closing(&root.db_path())?;
    Ok((config, conn))
}
