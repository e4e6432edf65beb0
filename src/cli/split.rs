//! `perpetual split`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::formats::Format;
use crate::dataset::groups;
use crate::dataset::output::Progress;
use crate::dataset::split::{self, SplitOptions, Stratify};
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Train, validation and test shares in percent.
    #[arg(long, default_value = "80,10,10")]
    pub ratios: String,
    /// The stratum each ratio holds in: category, indicator, agent or none.
    #[arg(long, default_value = "category")]
    pub stratify: String,
    /// The files to write, comma-separated: jsonl, csv, parquet.
    #[arg(long, default_value = "jsonl,csv,parquet")]
    pub formats: String,
    /// The seed of the hash that orders pairs; a new seed is a new split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The near-duplicate methods whose clusters always share a split (or none).
    #[arg(long, default_value = "minhash,cosine", value_name = "METHODS")]
    pub near_dup_methods: String,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (_config, conn) = super::open(root)?;
    let opts = SplitOptions {
        ratios: split::parse_ratios(&args.ratios)?,
        stratify: Stratify::parse(&args.stratify)?,
        formats: Format::parse_list(&args.formats)?,
        seed: args.seed,
        near_dup_methods: groups::parse_methods(&args.near_dup_methods)?,
    };
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("split");
    let mut summary = split::run(&conn, &opts, &mut out, &mut progress)?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    let [train, val, test] = summary.totals;
    println!(
        "{} pairs: train {}, val {}, test {} ({} placed now, {} kept from before, {} moved)",
        thousands(summary.pairs),
        thousands(train),
        thousands(val),
        thousands(test),
        thousands(summary.newly_assigned),
        thousands(summary.previously_assigned),
        summary.moved
    );
    println!(
        "ratios {}: every stratum of 100 pairs or more within 2 points: {}",
        opts.ratios.map(|r| r.to_string()).join("/"),
        if summary.within_tolerance {
            "yes"
        } else {
            "NO (see splits/manifest.json)"
        }
    );
    if summary.groups_across_splits > 0 {
        println!(
            "warning: {} near-duplicate group(s) span splits because their pairs had been split before they were found to be near-duplicates (listed in splits/manifest.json); a new --seed splits everything afresh",
            summary.groups_across_splits
        );
    }
    print_files(&summary.files);
    for r in &summary.removed {
        println!("removed {r} (a format not written this time)");
    }
    println!("{:.2} s", summary.seconds);
    Ok(Exit::Ok)
}
