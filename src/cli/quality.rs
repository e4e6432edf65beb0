//! `perpetual quality`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::output::Progress;
use crate::dataset::quality;
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
    let mut progress = Progress::shown("quality");
    let mut summary = quality::run(&conn, &config.quality, &mut out, &mut progress)?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{} pairs, {} flagged ({:.1}%)",
        thousands(summary.pairs),
        thousands(summary.flagged),
        if summary.pairs == 0 {
            0.0
        } else {
            summary.flagged as f64 * 100.0 / summary.pairs as f64
        }
    );
    for (flag, n) in summary.by_flag.iter().filter(|(_, n)| **n > 0) {
        println!("  {flag:<24} {:>10}", thousands(*n));
    }
    print_files(&summary.files);
    println!("{:.2} s", summary.seconds);
    Ok(Exit::Ok)
}
