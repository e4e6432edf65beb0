//! `perpetual charts`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::charts;
use crate::dataset::output::Progress;
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("charts");
    let mut summary = charts::run(&conn, config.goal, &mut out, &mut progress)?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{} pairs: {} charts{}",
        thousands(summary.pairs),
        summary.charts.len(),
        if summary.quality {
            ""
        } else {
            " (no quality chart: run `perpetual quality` first)"
        }
    );
    print_files(&summary.files);
    println!("{:.2} s", summary.seconds);
    Ok(Exit::Ok)
}
