//! `perpetual stats`.

use super::Exit;
use super::output::{print_json, thousands};
use crate::root::Root;
use crate::store::stats::Count;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// How many indicators to list.
    #[arg(long, default_value_t = crate::store::stats::DEFAULT_TOP)]
    pub top: usize,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let stats = crate::store::stats::stats(&conn, config.goal, args.top)?;
    if args.json {
        print_json(&stats)?;
        return Ok(Exit::Ok);
    }
    println!(
        "pairs       {} / {} ({:.1}%)",
        thousands(stats.pairs),
        thousands(stats.goal),
        stats.goal_percent
    );
    let mut extra = String::new();
    if stats.files_partial > 0 {
        extra.push_str(&format!(
            ", {} partial (resumed by the next ingest)",
            thousands(stats.files_partial)
        ));
    }
    if stats.files_skipped > 0 {
        extra.push_str(&format!(
            ", {} skipped (not drops: `files --skipped`)",
            thousands(stats.files_skipped)
        ));
    }
    println!(
        "files       {} integrated, {} rejected, {} duplicate{extra}",
        thousands(stats.files_integrated),
        thousands(stats.files_rejected),
        thousands(stats.files_duplicate),
    );
    println!("invalid     {} pairs", thousands(stats.pairs_invalid));
    match stats.flagged {
        Some(n) => println!(
            "flagged     {} pairs (the latest `perpetual quality`)",
            thousands(n)
        ),
        None => println!("flagged     - (no quality report yet: `perpetual quality`)"),
    }
    section("by agent", &stats.by_agent);
    section("by category", &stats.by_category);
    section("top indicators", &stats.top_indicators);
    Ok(Exit::Ok)
}

fn section(title: &str, counts: &[Count]) {
    if counts.is_empty() {
        return;
    }
    println!("{title}");
    let width = counts
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for c in counts {
        println!("  {:width$}  {:>10}", c.name, thousands(c.pairs));
    }
}
