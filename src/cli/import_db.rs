//! `perpetual import-db PATH`.

use super::Exit;
use super::output::{print_json, thousands};
use crate::engine::import_db::{self, ColumnMap, ImportOptions};
use crate::root::Root;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite database (read-only; never moved or changed).
    pub path: PathBuf,
    /// Only this table (default: every table with question and answer columns).
    #[arg(long)]
    pub table: Option<String>,
    /// Columns by hand: question=COL,answer=COL,indicator=COL,category=COL (any subset;
    /// the rest are detected).
    #[arg(long, value_name = "FIELD=COL,...")]
    pub map: Option<ColumnMap>,
    /// The agent the pairs are credited to.
    #[arg(long, default_value = "claude_code")]
    pub agent: String,
    /// Print one JSON object with the summary instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    crate::root::check_agent_name(&args.agent)?;
    anyhow::ensure!(args.path.is_file(), "{} is not a file", args.path.display());
    let _lock = root.lock_writer("import-db")?;
    let (config, conn) = super::open(root)?;
    let opts = ImportOptions {
        table: args.table.clone(),
        map: args.map.clone().unwrap_or_default(),
        agent: args.agent.clone(),
        checkpoint_every: config.ingest.checkpoint_every,
    };
    let mut sink = crate::store::pairs::PairSink::new();
    let mut progress = Progress::new();
    let mut report = import_db::import_path(
        &conn,
        &args.path,
        &opts,
        &mut sink,
        None,
        &mut |done, total| progress.rows(done, total),
    )?;
    progress.finish();
    report.peak_rss_kb = super::output::peak_rss_kb();
    if args.json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    println!("{}: {} table(s)", report.database, report.tables.len());
    for t in &report.tables {
        let m = &t.mapping;
        println!(
            "  {}: {} rows, {}: {} new, {} duplicate, {} invalid (question={}, answer={}, indicator={}, category={}; {} other column(s) kept in extra)",
            t.table,
            thousands(t.rows),
            if t.status == "already" {
                "imported before"
            } else {
                t.status
            },
            thousands(t.pairs_new),
            thousands(t.pairs_duplicate),
            thousands(t.pairs_invalid),
            m.question,
            m.answer,
            m.indicator.as_deref().unwrap_or("-"),
            m.category.as_deref().unwrap_or("-"),
            m.extra.len()
        );
    }
    println!(
        "pairs: {} read, {} new, {} duplicate, {} invalid",
        thousands(report.pairs_seen),
        thousands(report.pairs_new),
        thousands(report.pairs_duplicate),
        thousands(report.pairs_invalid)
    );
    println!(
        "time:  {:.2} s, {} pairs/s",
        report.seconds,
        thousands(report.pairs_per_second.round() as u64)
    );
    Ok(Exit::Ok)
}

/// A bar of rows on a terminal; a plain line every two seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bar: None,
            last_line: Instant::now(),
        }
    }

    fn rows(&mut self, done: u64, total: u64) {
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "import-db {bar:30} {human_pos}/{human_len} rows {per_sec}  ETA {eta}",
                    )
                    .expect("valid template"),
                );
                bar
            });
            bar.set_position(done);
        } else if self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            eprintln!("import-db: {}/{} rows", thousands(done), thousands(total));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
