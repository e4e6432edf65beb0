//! `perpetual ingest [PATH...]`.

use super::Exit;
use super::output::{print_json, thousands};
use crate::engine::ingest::{self, WriterOptions};
use crate::root::Root;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or folders to read in place (never moved or changed). Without any, every
    /// file waiting in inbox/<agent>/ is integrated and moved to processed/ or rejected/.
    pub paths: Vec<PathBuf>,
    /// Whose files PATHs are (default: each file's parent folder name).
    #[arg(long)]
    pub agent: Option<String>,
    /// Print one JSON object with the totals instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Read every file now, even one that changed within watch.settle_ms (by default
    /// such a file is looked at again after the settle period, and left for the next
    /// run if a writer is still at work on it).
    #[arg(long)]
    pub now: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    if let Some(agent) = &args.agent {
        crate::root::check_agent_name(agent)?;
    }
    let _lock = root.lock_writer("ingest")?;
    let config = root.config()?;
    root.ensure_layout(&config)?;
    // A new database takes 4 to 8 ms to make (`store::create`: the schema written and
    // synced), on one core while the other waits: it is made on a thread of its own
    // while the files are listed and the first ones prepared.
    let db = root.db_path();
    let fresh = !db.exists();
    let opening = std::thread::Builder::new()
        .name("open".into())
        .spawn(move || crate::store::open_closing(&db))?;
    let settle = (!args.now).then(|| Duration::from_millis(config.watch.settle_ms));
    let listed = (|| -> Result<_> {
        let jobs = if args.paths.is_empty() {
            ingest::survey_inbox(&root.inbox(), &root.agents(&config)?)?
        } else {
            ingest::discover_paths(&args.paths, args.agent.as_deref())?
        };
        let started = std::time::Instant::now();
        // SQLite databases (recognised by their header) are imported row by row.
        let (databases, jobs) = crate::engine::import_db::split_databases(jobs);
        let mut files = ingest::Settled::settle(jobs, settle);
        if fresh {
            files.prepare_ahead(config.ingest.max_file_bytes, || !opening.is_finished());
        }
        Ok((started, databases, files))
    })();
    let conn = match opening.join() {
        Ok(conn) => conn?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let (started, databases, files) = listed?;
    // Inside a session (an agent integrating its own drops), the files are the session's.
    let session = std::env::var(crate::work::session::SESSION_ENV)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .and_then(|s| crate::store::sessions::get(&conn, &s).ok().flatten())
        .filter(|s| s.is_active());
    let ledger_before = crate::store::ledger::mark(&conn)?;
    let imported = crate::engine::import_db::import_jobs(
        &conn,
        &databases,
        config.ingest.checkpoint_every,
        &mut crate::store::pairs::PairSink::new(),
        None,
    )?;
    let mut report = ingest::run_settled(
        &conn,
        files,
        config.ingest.max_file_bytes,
        WriterOptions {
            checkpoint_every: config.ingest.checkpoint_every,
        },
        &mut |_| {},
    )?;
    if let Some(s) = &session {
        crate::store::ledger::tag_session(&conn, &s.id, &ledger_before)?;
    }
    for r in &imported {
        crate::engine::import_db::add_to(&mut report, r);
    }
    if !imported.is_empty() {
        report.seconds = started.elapsed().as_secs_f64();
        report.pairs_per_second = report.pairs_seen as f64 / report.seconds.max(1e-9);
    }
    report.peak_rss_kb = super::output::peak_rss_kb();
    if args.json {
        print_json(&report)?;
    } else {
        let mut extra = String::new();
        for (n, what) in [
            (
                report.files_skipped,
                "skipped (not drops; see `files --skipped`)",
            ),
            (
                report.files_waiting,
                "still being written (left for the next run)",
            ),
            (report.files_unreadable, "unreadable"),
        ] {
            if n > 0 {
                extra.push_str(&format!(", {} {what}", thousands(n)));
            }
        }
        println!(
            "files: {} integrated, {} rejected, {} duplicate, {} already done{extra}",
            thousands(report.files_integrated),
            thousands(report.files_rejected),
            thousands(report.files_duplicate),
            thousands(report.files_already_done),
        );
        println!(
            "pairs: {} seen, {} new, {} duplicate, {} invalid",
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
        for r in &report.rejected {
            match &r.kept_at {
                Some(kept) => println!("rejected {} (kept at {}): {}", r.path, kept, r.reason),
                None => println!("rejected {}: {}", r.path, r.reason),
            }
        }
    }
    Ok(if report.files_rejected > 0 {
        Exit::Rejected
    } else {
        Exit::Ok
    })
}
