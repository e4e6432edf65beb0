//! `perpetual generate`: realistic drops for tests, benchmarks and demos.

use super::Exit;
use super::output::thousands;
use crate::generate::{self, DropEncoding, DropLayout, GenConfig, TextPair};
use crate::root::Root;
use crate::store::source_db::LegacyRow;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write into (default: the root's inbox/<agent>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Agent whose inbox receives the files when --out is not given.
    #[arg(long, default_value = "droid")]
    pub agent: String,
    /// Number of good files.
    #[arg(long, default_value_t = 10)]
    pub files: usize,
    /// Pairs per file.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Fraction of each file's pairs copied from earlier files (cross-file duplicates).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Layouts to use, cycled (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub layouts: Vec<LayoutArg>,
    /// Encodings to use, cycled (default: utf8).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub encodings: Vec<EncodingArg>,
    /// Also write this many bad files (one of each kind in turn).
    #[arg(long, default_value_t = 0)]
    pub bad: usize,
    /// Name files session_<n>.json with a `session` field, starting at this number.
    #[arg(long)]
    pub sessions_from: Option<u32>,
    /// Number of the first fresh pair: sets generated with disjoint ranges share no pair.
    #[arg(long, default_value_t = 0)]
    pub first_pair_id: u64,
    /// Length of each fresh answer in characters, MIN-MAX (e.g. 800-2000, like the
    /// seeds' answers) or one number (default: 200 to 800).
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_range)]
    pub answer_chars: Option<(usize, usize)>,
    /// Random seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also plant near-duplicates of this fraction of the pairs (a word changed,
    /// punctuation, casing, a clause reordered), as one more drop, near_duplicates.json
    /// (with --db: as more rows).
    #[arg(long, default_value_t = 0.0)]
    pub near_dups: f64,
    /// Write the pairs into a new SQLite database FILE instead of drops, in the layout of
    /// the seeds' production database (table qa_pairs: indicator_name,
    /// indicator_category, question, answer, sources, ...); --bad adds that many rows
    /// with an empty answer.
    #[arg(long, value_name = "FILE", conflicts_with = "out")]
    pub db: Option<PathBuf>,
}

/// A layout, as named on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Flat,
    Nested,
    NestedArray,
    Jsonl,
    Single,
}

/// An encoding, as named on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EncodingArg {
    Utf8,
    Utf8Bom,
    Utf16le,
    Utf16be,
    Windows1252,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            crate::root::check_agent_name(&args.agent)?;
            root.inbox_of(&args.agent)
        }
    };
    let cfg = GenConfig {
        seed: args.seed,
        files: args.files,
        pairs_per_file: args.pairs,
        duplicate_ratio: args.duplicates,
        layouts: args
            .layouts
            .iter()
            .map(|l| match l {
                LayoutArg::Flat => DropLayout::Flat,
                LayoutArg::Nested => DropLayout::Nested,
                LayoutArg::NestedArray => DropLayout::NestedArray,
                LayoutArg::Jsonl => DropLayout::JsonLines,
                LayoutArg::Single => DropLayout::Single,
            })
            .collect(),
        encodings: args
            .encodings
            .iter()
            .map(|e| match e {
                EncodingArg::Utf8 => DropEncoding::Utf8,
                EncodingArg::Utf8Bom => DropEncoding::Utf8Bom,
                EncodingArg::Utf16le => DropEncoding::Utf16Le,
                EncodingArg::Utf16be => DropEncoding::Utf16Be,
                EncodingArg::Windows1252 => DropEncoding::Windows1252,
            })
            .collect(),
        bad_files: args.bad,
        session_start: args.sessions_from,
        first_pair_id: args.first_pair_id,
        answer_chars: args.answer_chars,
    };
    let mut files = generate::generate(&cfg);
    let planted = if args.near_dups > 0.0 || args.db.is_some() {
        let good: Vec<TextPair> = files
            .iter()
            .filter(|f| f.bad.is_none())
            .flat_map(|f| text_pairs(&f.bytes))
            .collect();
        let planted = generate::plant_near_duplicates(&good, args.near_dups, args.seed);
        Some((good, planted))
    } else {
        None
    };
    if let Some(db) = &args.db {
        let (good, planted) = planted.expect("made for --db");
        let row = |p: &TextPair, sources: Option<String>| LegacyRow {
            question: p.question.clone(),
            answer: p.answer.clone(),
            indicator: p.indicator.clone(),
            category: p.category.clone(),
            sources,
        };
        let mut rows: Vec<LegacyRow> = good
            .iter()
            .enumerate()
            .map(|(i, p)| row(p, Some(format!("[\"source {}\"]", i % 7))))
            .collect();
        rows.extend(planted.iter().map(|p| row(&p.variant, None)));
        for i in 0..args.bad {
            rows.push(LegacyRow {
                question: format!("Unanswered question {i}?"),
                answer: String::new(),
                indicator: None,
                category: None,
                sources: None,
            });
        }
        crate::store::source_db::create_legacy(db, &rows)?;
        println!(
            "wrote {} rows ({} planted near-duplicates, {} with an empty answer) to {}",
            thousands(rows.len() as u64),
            thousands(planted.len() as u64),
            args.bad,
            db.display()
        );
        return Ok(Exit::Ok);
    }
    if let Some((_, planted)) = &planted {
        let variants: Vec<TextPair> = planted.iter().map(|p| p.variant.clone()).collect();
        files.push(generate::text_pairs_drop("near_duplicates.json", &variants));
    }
    // write_files uses the documented writer convention (temporary name, then rename),
    // so a running watcher never sees half a file.
    generate::write_files(&dir, &files)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    let pairs: usize = files.iter().map(|f| f.pairs).sum();
    println!(
        "wrote {} file(s) ({} pairs{}) to {}",
        files.len(),
        thousands(pairs as u64),
        planted
            .map(|(_, p)| format!(", {} planted near-duplicates", thousands(p.len() as u64)))
            .unwrap_or_default(),
        dir.display()
    );
    Ok(Exit::Ok)
}

/// `800-2000` or `1000`: a range of lengths, both ends included.
fn parse_range(text: &str) -> Result<(usize, usize), String> {
    let number = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{t}` is not a number of characters"))
    };
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    if low > high {
        return Err(format!("{low} is more than {high}: write MIN-MAX"));
    }
    if high == 0 {
        return Err("an answer needs at least one character".to_string());
    }
    Ok((low, high))
}

/// The pairs of a generated drop, with their indicator and category, read back the way
/// the engine reads them.
fn text_pairs(bytes: &[u8]) -> Vec<TextPair> {
    match crate::engine::ingest::parse_bytes(bytes) {
        crate::engine::ingest::Outcome::Parsed(f) => f
            .pairs
            .into_iter()
            .map(|p| TextPair {
                question: p.question,
                answer: p.answer,
                indicator: p.indicator,
                category: p.category,
            })
            .collect(),
        _ => Vec::new(),
    }
}
