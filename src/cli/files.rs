//! `perpetual files`.

use super::Exit;
use super::output::{cell, print_json};
use crate::root::Root;
use crate::store::ledger::{self, ListFilter};
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only rejected files.
    #[arg(long)]
    pub rejected: bool,
    /// Only this agent's files.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only files with this status (integrated, duplicate, rejected, skipped, partial).
    #[arg(long)]
    pub status: Option<String>,
    /// Only skipped entries (not regular files, not drops, unreadable; left in place).
    #[arg(long)]
    pub skipped: bool,
    /// Print a JSON array of ledger rows (with each invalid pair's index and reason, and
    /// what was salvaged).
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (_config, conn) = super::open(root)?;
    let rows = ledger::list(
        &conn,
        &ListFilter {
            rejected_only: args.rejected,
            agent: args.agent,
            status: args.status,
            skipped_only: args.skipped,
        },
    )?;
    if args.json {
        print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{:>5}  {}  {}  {}  {}  {}  {:>6} {:>6} {:>6}  reason",
        "id",
        cell("agent", 12),
        cell("name", 32),
        cell("status", 10),
        cell("encoding", 14),
        cell("layout", 12),
        "new",
        "dup",
        "inval"
    );
    for r in rows {
        // What was salvaged says as much about an integrated file as a reason does.
        let salvaged = r
            .salvage
            .clone()
            .and_then(|v| serde_json::from_value::<crate::engine::layout::Salvage>(v).ok())
            .and_then(|s| s.describe())
            .map(|s| format!("salvaged: {s}"));
        let note = match (r.reason.as_deref(), salvaged) {
            (Some(reason), Some(s)) => format!("{reason}; {s}"),
            (Some(reason), None) => reason.to_string(),
            (None, Some(s)) => s,
            (None, None) => String::new(),
        };
        println!(
            "{:>5}  {}  {}  {}  {}  {}  {:>6} {:>6} {:>6}  {}",
            r.id,
            cell(&r.agent, 12),
            cell(&r.name, 32),
            cell(r.status.as_str(), 10),
            cell(r.encoding.as_deref().unwrap_or("-"), 14),
            cell(r.layout.as_deref().unwrap_or("-"), 12),
            r.pairs_new,
            r.pairs_duplicate,
            r.pairs_invalid,
            note
        );
    }
    Ok(Exit::Ok)
}
