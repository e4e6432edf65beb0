//! `perpetual import embeddings`.

use super::Exit;
use super::output::{print_json, thousands};
use crate::dataset::output::Progress;
use crate::engine::embeddings;
use crate::root::Root;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Store the vectors of a Gemini batch embeddings results file (one line per
    /// request: its key and the embedding's values, or an error). Keys that name no pair,
    /// errors and dimension mismatches are reported; running it again stores nothing
    /// twice, and an interrupted import goes on where it stopped.
    Embeddings(EmbeddingsArgs),
}

#[derive(Debug, clap::Args)]
pub struct EmbeddingsArgs {
    /// The results file (JSON Lines).
    pub file: PathBuf,
    /// The model the vectors are stored under (default: the model each key's request
    /// batch was made for, embeddings.model when it was exported).
    #[arg(long)]
    pub model: Option<String>,
    /// Print one JSON object with the report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    match args.what {
        What::Embeddings(a) => import_embeddings(root, a),
    }
}

fn import_embeddings(root: &Root, args: EmbeddingsArgs) -> Result<Exit> {
    let (_config, conn) = super::open(root)?;
    let mut progress = Progress::shown("import embeddings");
    let mut report =
        embeddings::import_file(&conn, &args.file, args.model.as_deref(), &mut |p| match p {
            embeddings::Progress::Size(n) => progress.stage("reading results (bytes)", n),
            embeddings::Progress::Read(n) => progress.advance(n),
        })?;
    drop(progress);
    report.peak_rss_kb = super::output::peak_rss_kb();
    if args.json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{}: {} lines; {} vectors stored, {} replaced, {} already stored ({}{})",
        report.file,
        thousands(report.lines),
        thousands(report.stored),
        thousands(report.replaced),
        thousands(report.unchanged),
        report.model,
        report
            .dimension
            .map(|d| format!(", {d} dimensions"))
            .unwrap_or_default()
    );
    for (what, p) in [
        ("unknown keys", &report.unknown_keys),
        ("errors", &report.errors),
        ("dimension mismatches", &report.dimension_mismatches),
        ("malformed lines", &report.malformed),
    ] {
        if p.count == 0 {
            continue;
        }
        println!("{} {what}:", thousands(p.count));
        for x in &p.first {
            println!(
                "  line {}{}: {}",
                x.line,
                x.key
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default(),
                x.reason
            );
        }
        if p.count > p.first.len() as u64 {
            println!(
                "  ... and {} more",
                thousands(p.count - p.first.len() as u64)
            );
        }
    }
    Ok(Exit::Ok)
}
