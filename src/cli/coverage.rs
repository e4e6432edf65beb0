//! `perpetual coverage --plan PLAN`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::coverage::{self, Plan};
use crate::root::Root;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The master list: TOML ([[indicator]] name, category, target, aliases) or CSV
    /// (indicator,category,target,aliases); see examples/indicators.toml.
    #[arg(long)]
    pub plan: PathBuf,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let plan = Plan::load(&args.plan)?;
    let (_config, conn) = super::open(root)?;
    let mut out = args.deliver.outputs(root)?;
    let summary = coverage::run(&conn, &plan, &args.plan.to_string_lossy(), &mut out)?;
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{} indicators: {} complete, {} partial, {} missing; gap {} pairs",
        summary.indicators,
        summary.complete,
        summary.partial,
        summary.missing,
        thousands(summary.gap)
    );
    if !summary.largest_gaps.is_empty() {
        println!("largest gaps: {}", summary.largest_gaps.join(", "));
    }
    if summary.unmatched > 0 {
        println!(
            "{} indicator name(s) in the data match nothing in the plan (listed in the report)",
            summary.unmatched
        );
    }
    print_files(&summary.files);
    Ok(Exit::Ok)
}
