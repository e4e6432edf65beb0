//! `perpetual export rag` and `perpetual export embeddings`.

use super::Exit;
use super::deliver::{DeliverArgs, print_files};
use super::output::{print_json, thousands};
use crate::dataset::embeddings::{self, ExportOptions};
use crate::dataset::export::{self, RagOptions};
use crate::dataset::formats::Format;
use crate::dataset::groups;
use crate::dataset::output::Progress;
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// The RAG export: one document per pair (id, key, question, answer, text, indicator,
    /// category, agent, source_file, created_at, extra) in rag_export/part-00000.jsonl
    /// and following parts (or .parquet), with rag_export/manifest.json (counts,
    /// filters, the blake3 of each part).
    Rag(RagArgs),
    /// The next request batch for the Gemini batch embeddings API:
    /// embeddings_input_batch_<N>.jsonl (one request per pair not batched yet) and
    /// embeddings_metadata_batch_<N>.jsonl (key, pair id, indicator, category, text
    /// hash). The batch is recorded, so the next call goes on with the next pairs.
    Embeddings(EmbeddingsArgs),
}

#[derive(Debug, clap::Args)]
pub struct RagArgs {
    /// jsonl or parquet.
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Leave pairs out: `flagged` (by the latest quality run), `near-dups` (keep one
    /// pair per near-duplicate group: its representative), or both, comma-separated.
    #[arg(long, value_name = "FILTERS")]
    pub exclude: Option<String>,
    /// The near-duplicate methods whose clusters count for --exclude near-dups.
    #[arg(long, default_value = "minhash,cosine", value_name = "METHODS")]
    pub near_dup_methods: String,
    /// Documents per part file.
    #[arg(long, default_value_t = 100_000)]
    pub part_size: u64,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

#[derive(Debug, clap::Args)]
pub struct EmbeddingsArgs {
    /// Pairs per batch (default: embeddings.batch_size, 10,000).
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// How many new batches to make in this call.
    #[arg(long, default_value_t = 1, conflicts_with = "batch")]
    pub batches: u64,
    /// Write existing batch N again (the same bytes) instead of making a new one.
    #[arg(long, value_name = "N")]
    pub batch: Option<i64>,
    #[command(flatten)]
    pub deliver: DeliverArgs,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    match args.what {
        What::Rag(a) => rag(root, a),
        What::Embeddings(a) => embeddings(root, a),
    }
}

fn rag(root: &Root, args: RagArgs) -> Result<Exit> {
    let (_config, conn) = super::open(root)?;
    let mut opts = RagOptions {
        format: Format::parse(&args.format)?,
        near_dup_methods: groups::parse_methods(&args.near_dup_methods)?,
        part_size: args.part_size,
        ..RagOptions::default()
    };
    for f in args
        .exclude
        .iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
    {
        match f {
            "" => {}
            "flagged" => opts.exclude_flagged = true,
            "near-dups" | "near_dups" => opts.exclude_near_dups = true,
            other => anyhow::bail!(
                "--exclude {other:?}: expected flagged, near-dups, or both comma-separated"
            ),
        }
    }
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("export rag");
    let mut summary = export::rag(&conn, &opts, &mut out, &mut progress)?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    let c = &summary.counts;
    println!(
        "{} of {} pairs exported in {} part(s) ({}); left out: {} flagged, {} near-duplicates",
        thousands(c.exported),
        thousands(c.pairs),
        summary.parts,
        summary.format.extension(),
        thousands(c.excluded_flagged),
        thousands(c.excluded_near_dups)
    );
    print_files(&summary.files);
    for r in &summary.removed {
        println!("removed {r} (a part of an earlier, larger export)");
    }
    println!("{:.2} s", summary.seconds);
    Ok(Exit::Ok)
}

fn embeddings(root: &Root, args: EmbeddingsArgs) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let opts = ExportOptions {
        batch_size: args.batch_size.unwrap_or(config.embeddings.batch_size),
        batches: args.batches,
        rewrite: args.batch,
    };
    let mut out = args.deliver.outputs(root)?;
    let mut progress = Progress::shown("export embeddings");
    let mut summary =
        embeddings::export(&conn, &config.embeddings, &opts, &mut out, &mut progress)?;
    drop(progress);
    summary.peak_rss_kb = super::output::peak_rss_kb();
    if args.deliver.json {
        print_json(&summary)?;
        return Ok(Exit::Ok);
    }
    if summary.batches.is_empty() {
        println!(
            "nothing to batch: every one of the {} pairs is in a batch already",
            thousands(summary.pairs)
        );
    }
    for b in &summary.batches {
        println!(
            "batch {}{}: {} pairs (ids {} to {})",
            b.batch,
            if b.new { "" } else { " (written again)" },
            thousands(b.pairs),
            b.pair_ids.0,
            b.pair_ids.1
        );
    }
    print_files(&summary.files);
    println!(
        "{} pairs not batched yet; model {}",
        thousands(summary.unbatched),
        summary.params.model
    );
    Ok(Exit::Ok)
}
