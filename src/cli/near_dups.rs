//! `perpetual near-dups`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::near_dups;
use crate::dataset::output::Progress;
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Jaccard similarity at or above which two pairs are near-duplicates (default:
    /// near_dups.threshold, 0.8).
    #[arg(long)]
    pub threshold: Option<f64>,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("near-dups");
    let mut summary = near_dups::run(
        &conn,
        &config.near_dups,
        args.threshold,
        &mut out,
        &mut progress,
    )?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{} pairs: {} clusters holding {} pairs ({} near-duplicate pairs of {} candidates; {} new signatures)",
        thousands(summary.pairs),
        thousands(summary.clusters),
        thousands(summary.pairs_in_clusters),
        thousands(summary.near_duplicate_pairs),
        thousands(summary.candidates),
        thousands(summary.signatures_made)
    );
    print_files(&summary.files);
    println!("{:.2} s", summary.seconds);
    Ok(Exit::Ok)
}
