//! `perpetual near-dups`: lexical (MinHash), or semantic with `--cosine`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::output::Progress;
use crate::dataset::{cosine, near_dups};
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Jaccard similarity at or above which two pairs are near-duplicates (default:
    /// near_dups.threshold, 0.8).
    #[arg(long, conflicts_with = "cosine")]
    pub threshold: Option<f64>,
    /// Semantic near-duplicates instead: pairs whose stored embeddings have a cosine
    /// similarity of at least T (default: cosine.threshold, 0.95); writes
    /// duplicate_analysis_cosine.json and near_duplicate_pairs_cosine.csv.
    #[arg(long, value_name = "T", num_args = 0..=1, default_missing_value = "NaN")]
    pub cosine: Option<f64>,
    /// With --cosine: the model whose vectors are compared (default: the one with the
    /// most vectors).
    #[arg(long, requires = "cosine")]
    pub model: Option<String>,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("near-dups");
    if let Some(t) = args.cosine {
        let mut summary = cosine::run(
            &conn,
            &config.cosine,
            (!t.is_nan()).then_some(t),
            args.model.as_deref(),
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
            "{} vectors of {} pairs ({} search): {} clusters holding {} pairs ({} near-duplicate pairs of {} candidates)",
            thousands(summary.vectors),
            thousands(summary.pairs),
            summary.search,
            thousands(summary.clusters),
            thousands(summary.pairs_in_clusters),
            thousands(summary.near_duplicate_pairs),
            thousands(summary.candidates)
        );
        print_files(&summary.files);
        println!("{:.2} s", summary.seconds);
        return Ok(Exit::Ok);
    }
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
