//! The quality report (`perpetual quality`): each pair of the snapshot is checked for the
//! flags below; flagged pairs are stored (`store::dataset::quality_flags`) so exports can
//! leave them out, and three deliverables are written:
//!
//! - `quality_analysis_report.json`: totals (pairs, flagged, counts by flag), per
//!   category, per indicator and per agent the pairs, flagged pairs, flag counts and the
//!   lengths of questions and answers (characters and words: min, p10, p50, p90, max and
//!   a histogram with fixed bins), and the thresholds used;
//! - `quality_analysis_report.md`: the same for a person;
//! - `quality_flags.jsonl`: one line per flagged pair, `{"id", "key", "flags", "score"}`.
//!
//! Percentiles are nearest-rank (the smallest value with at least p% of the values at or
//! below it), computed exactly from per-length counts, so memory depends on the number
//! of distinct lengths, not on the number of pairs.

use crate::config::QualityConfig;
use crate::dataset::output::{Outputs, Progress, WrittenFile, round4};
use crate::dataset::words;
use crate::store::dataset::{self as store, PairRow};
use anyhow::{Result, bail};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

/// A quality flag. The order here is the order flags are listed in everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// The answer is empty (or only whitespace).
    EmptyAnswer,
    /// The answer is shorter than `quality.min_answer_chars`.
    ShortAnswer,
    /// The answer ends mid-sentence or mid-word.
    Truncated,
    /// The question has no question mark.
    NoQuestionMark,
    /// The answer repeats the question.
    AnswerRepeatsQuestion,
    /// A refusal or an "as an AI" phrase.
    Boilerplate,
    /// Double-encoded UTF-8 (`Ã©`, `â€™`).
    Mojibake,
    /// U+FFFD, the replacement character, in the question or the answer.
    ReplacementChar,
    /// No indicator.
    MissingIndicator,
    /// No category.
    MissingCategory,
    /// No sources in the pair's fields and no URL in its answer.
    NoSources,
}

impl Flag {
    /// Every flag, in order.
    pub const ALL: [Flag; 11] = [
        Flag::EmptyAnswer,
        Flag::ShortAnswer,
        Flag::Truncated,
        Flag::NoQuestionMark,
        Flag::AnswerRepeatsQuestion,
        Flag::Boilerplate,
        Flag::Mojibake,
        Flag::ReplacementChar,
        Flag::MissingIndicator,
        Flag::MissingCategory,
        Flag::NoSources,
    ];

    /// Its name in reports, `quality_flags.jsonl` and the database.
    pub fn name(self) -> &'static str {
        match self {
            Flag::EmptyAnswer => "empty_answer",
            Flag::ShortAnswer => "short_answer",
            Flag::Truncated => "truncated",
            Flag::NoQuestionMark => "no_question_mark",
            Flag::AnswerRepeatsQuestion => "answer_repeats_question",
            Flag::Boilerplate => "boilerplate",
            Flag::Mojibake => "mojibake",
            Flag::ReplacementChar => "replacement_char",
            Flag::MissingIndicator => "missing_indicator",
            Flag::MissingCategory => "missing_category",
            Flag::NoSources => "no_sources",
        }
    }

    /// What it means, as the reports say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Flag::EmptyAnswer => "the answer is empty",
            Flag::ShortAnswer => "the answer is shorter than quality.min_answer_chars",
            Flag::Truncated => {
                "the answer ends mid-sentence or mid-word (no closing . ! ? …, code fence or URL)"
            }
            Flag::NoQuestionMark => "the question has no question mark",
            Flag::AnswerRepeatsQuestion => {
                "the answer starts with the whole question, or their word sets are at least quality.repeat_similarity alike"
            }
            Flag::Boilerplate => "a refusal or an \"as an AI\" phrase (quality.boilerplate)",
            Flag::Mojibake => "double-encoded UTF-8 such as Ã© or â€™",
            Flag::ReplacementChar => "U+FFFD in the question or the answer",
            Flag::MissingIndicator => "no indicator",
            Flag::MissingCategory => "no category",
            Flag::NoSources => {
                "none of the pair's quality.source_fields is set and its answer has no URL"
            }
        }
    }

    /// How much it takes off a pair's score (1 = clean), in thousandths so that scores
    /// are exact decimals.
    pub fn weight_milli(self) -> u32 {
        match self {
            Flag::EmptyAnswer => 1000,
            Flag::AnswerRepeatsQuestion | Flag::Boilerplate => 500,
            Flag::ShortAnswer | Flag::Truncated | Flag::Mojibake | Flag::ReplacementChar => 300,
            Flag::NoQuestionMark | Flag::MissingIndicator | Flag::MissingCategory => 100,
            Flag::NoSources => 50,
        }
    }

    /// The flag of this name.
    pub fn parse(name: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// Adds a flag.
    pub fn insert(&mut self, f: Flag) {
        self.0 |= f.bit();
    }
    /// Whether it holds `f`.
    pub fn contains(self, f: Flag) -> bool {
        self.0 & f.bit() != 0
    }
    /// Whether it is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Its flags, in order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.contains(*f))
    }
    /// 1 minus the flags' weights, at least 0, in thousandths.
    pub fn score_milli(self) -> u32 {
        1000u32.saturating_sub(self.iter().map(Flag::weight_milli).sum())
    }
    fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

/// The checks, compiled from `[quality]`.
#[derive(Debug, Clone)]
pub struct Checker {
    min_answer_chars: usize,
    repeat_similarity: f64,
    boilerplate: Vec<String>,
    source_fields: Vec<String>,
    ignore: Flags,
}

impl Checker {
    /// Compiles the configuration; an unknown name in `quality.ignore` is an error.
    pub fn new(cfg: &QualityConfig) -> Result<Checker> {
        let mut ignore = Flags::default();
        for name in &cfg.ignore {
            match Flag::parse(name) {
                Some(f) => ignore.insert(f),
                None => bail!(
                    "quality.ignore names {name:?}, which is not a flag (flags: {})",
                    Flag::ALL.map(Flag::name).join(", ")
                ),
            }
        }
        Ok(Checker {
            min_answer_chars: cfg.min_answer_chars,
            repeat_similarity: cfg.repeat_similarity,
            boilerplate: cfg.boilerplate.iter().map(|p| plain_lower(p)).collect(),
            source_fields: cfg.source_fields.clone(),
            ignore,
        })
    }

    /// Every flag `pair` has (including ignored ones).
    pub fn check(&self, pair: &PairRow) -> Flags {
        let mut f = Flags::default();
        let answer = pair.answer.trim();
        let question = pair.question.trim();
        if answer.is_empty() {
            f.insert(Flag::EmptyAnswer);
        } else {
            if answer.chars().count() < self.min_answer_chars {
                f.insert(Flag::ShortAnswer);
            }
            if is_truncated(answer) {
                f.insert(Flag::Truncated);
            }
            if self.repeats(question, answer) {
                f.insert(Flag::AnswerRepeatsQuestion);
            }
            let lower = plain_lower(answer);
            if self.boilerplate.iter().any(|p| lower.contains(p.as_str())) {
                f.insert(Flag::Boilerplate);
            }
        }
        if !question.contains(['?', '？', '¿']) {
            f.insert(Flag::NoQuestionMark);
        }
        if has_mojibake(question) || has_mojibake(answer) {
            f.insert(Flag::Mojibake);
        }
        if question.contains('\u{FFFD}') || answer.contains('\u{FFFD}') {
            f.insert(Flag::ReplacementChar);
        }
        if pair
            .indicator
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
        {
            f.insert(Flag::MissingIndicator);
        }
        if pair.category.as_deref().is_none_or(|s| s.trim().is_empty()) {
            f.insert(Flag::MissingCategory);
        }
        if !self.has_sources(pair) {
            f.insert(Flag::NoSources);
        }
        f
    }

    /// The flags that count: `flags` without `quality.ignore`.
    pub fn counted(&self, flags: Flags) -> Flags {
        flags.without(self.ignore)
    }

    fn repeats(&self, question: &str, answer: &str) -> bool {
        let (mut q, mut a) = (Vec::new(), Vec::new());
        words::word_hashes(question, &mut q);
        words::word_hashes(answer, &mut a);
        if q.is_empty() {
            return false;
        }
        if q.len() >= 3 && a.starts_with(&q) {
            return true;
        }
        let set = |v: &[u64]| {
            let mut s = v.to_vec();
            s.sort_unstable();
            s.dedup();
            s
        };
        words::jaccard(&set(&q), &set(&a)) >= self.repeat_similarity
    }

    fn has_sources(&self, pair: &PairRow) -> bool {
        let a = pair.answer.as_str();
        if a.contains("http://") || a.contains("https://") || a.contains("www.") {
            return true;
        }
        let Some(extra) = pair.extra.as_deref() else {
            return false;
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(extra)
        else {
            return false;
        };
        self.source_fields.iter().any(|k| match map.get(k) {
            Some(serde_json::Value::String(s)) => !s.trim().is_empty(),
            Some(serde_json::Value::Array(v)) => !v.is_empty(),
            Some(serde_json::Value::Object(o)) => !o.is_empty(),
            Some(serde_json::Value::Null) | None => false,
            Some(_) => true,
        })
    }
}

/// Lower case, curly apostrophes straightened, whitespace collapsed: how boilerplate
/// phrases are matched.
fn plain_lower(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .replace(['’', '‘'], "'")
}

/// An answer is complete when, once closing quotes, brackets and emphasis are set aside,
/// it ends with sentence punctuation, or it ends with a code fence or a URL.
fn is_truncated(answer: &str) -> bool {
    if answer.ends_with("```") {
        return false;
    }
    if answer
        .split_whitespace()
        .last()
        .is_some_and(|w| w.starts_with("http://") || w.starts_with("https://"))
    {
        return false;
    }
    let core = answer.trim_end_matches(['"', '\'', '”', '’', ')', ']', '}', '»', '*', '_', '`']);
    !core.ends_with(['.', '!', '?', '…', '。', '！', '？'])
}

/// UTF-8 read as windows-1252 (or Latin-1) and encoded again: a lead character (Ã, Â,
/// â, ð...) followed by the characters its continuation bytes become. Re-encoding the
/// run as windows-1252 gives back a valid UTF-8 sequence.
pub fn has_mojibake(text: &str) -> bool {
    // Every lead is in U+00C2..U+00F4, two bytes of UTF-8 starting 0xC3: most text has none.
    if !text.as_bytes().contains(&0xC3) {
        return false;
    }
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let need = match c {
            '\u{C2}'..='\u{DF}' => 1,
            '\u{E0}'..='\u{EF}' => 2,
            '\u{F0}'..='\u{F4}' => 3,
            _ => continue,
        };
        let Some(run) = chars.get(i..=i + need) else {
            continue;
        };
        let s: String = run.iter().collect();
        let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&s);
        if !unmappable && bytes.len() == need + 1 && std::str::from_utf8(&bytes).is_ok() {
            return true;
        }
    }
    false
}

/// Upper bounds (exclusive) of the character-length histogram's bins; the last bin is
/// open.
pub const CHAR_BINS: [u32; 8] = [25, 50, 100, 200, 400, 800, 1600, 3200];
/// Upper bounds (exclusive) of the word-count histogram's bins; the last bin is open.
pub const WORD_BINS: [u32; 7] = [5, 10, 20, 40, 80, 160, 320];

/// Exact distribution of one length measure: how many values of each length.
#[derive(Debug, Clone, Default)]
struct Distribution(BTreeMap<u32, u64>);

impl Distribution {
    fn add(&mut self, v: u32) {
        *self.0.entry(v).or_default() += 1;
    }

    fn summary(&self, bins: &[u32]) -> LengthStats {
        let n: u64 = self.0.values().sum();
        let rank = |p: u64| -> u32 {
            if n == 0 {
                return 0;
            }
            let want = (p * n).div_ceil(100).max(1);
            let mut seen = 0;
            for (&v, &c) in &self.0 {
                seen += c;
                if seen >= want {
                    return v;
                }
            }
            0
        };
        let mut histogram = Vec::with_capacity(bins.len() + 1);
        let mut lower = 0;
        for &upper in bins.iter().chain(std::iter::once(&u32::MAX)) {
            let count = self.0.range(lower..upper).map(|(_, c)| c).sum();
            let bin = if upper == u32::MAX {
                format!("{lower}+")
            } else {
                format!("{lower}-{}", upper - 1)
            };
            histogram.push(Bin { bin, count });
            lower = upper;
        }
        LengthStats {
            min: self.0.keys().next().copied().unwrap_or(0),
            p10: rank(10),
            p50: rank(50),
            p90: rank(90),
            max: self.0.keys().next_back().copied().unwrap_or(0),
            histogram,
        }
    }
}

/// Length statistics of one measure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LengthStats {
    /// Smallest.
    pub min: u32,
    /// 10th percentile (nearest rank).
    pub p10: u32,
    /// Median (nearest rank).
    pub p50: u32,
    /// 90th percentile (nearest rank).
    pub p90: u32,
    /// Largest.
    pub max: u32,
    /// Counts per fixed bin ([`CHAR_BINS`] or [`WORD_BINS`]).
    pub histogram: Vec<Bin>,
}

/// One histogram bin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bin {
    /// `lo-hi` (inclusive) or `lo+`.
    pub bin: String,
    /// Values in it.
    pub count: u64,
}

#[derive(Debug, Clone, Default)]
struct Group {
    pairs: u64,
    flagged: u64,
    flags: [u64; 11],
    question_chars: Distribution,
    question_words: Distribution,
    answer_chars: Distribution,
    answer_words: Distribution,
}

impl Group {
    fn add(&mut self, e: &Evaluated) {
        self.pairs += 1;
        if !e.counted.is_empty() {
            self.flagged += 1;
        }
        for f in e.flags.iter() {
            self.flags[f as usize] += 1;
        }
        self.question_chars.add(e.lengths[0]);
        self.question_words.add(e.lengths[1]);
        self.answer_chars.add(e.lengths[2]);
        self.answer_words.add(e.lengths[3]);
    }

    fn summary(&self, name: &str) -> GroupStats {
        GroupStats {
            name: name.to_string(),
            pairs: self.pairs,
            flagged: self.flagged,
            flags: flag_counts(&self.flags),
            question_chars: self.question_chars.summary(&CHAR_BINS),
            question_words: self.question_words.summary(&WORD_BINS),
            answer_chars: self.answer_chars.summary(&CHAR_BINS),
            answer_words: self.answer_words.summary(&WORD_BINS),
        }
    }
}

fn flag_counts(counts: &[u64; 11]) -> BTreeMap<&'static str, u64> {
    // Keyed by name; serde_json keeps insertion order, and a BTreeMap sorts by name,
    // which is stable whatever the enum's order.
    Flag::ALL
        .iter()
        .map(|f| (f.name(), counts[*f as usize]))
        .collect()
}

/// One group of the report (a category, an indicator, an agent, or everything).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStats {
    /// Its name; `(none)` when unset.
    pub name: String,
    /// Pairs.
    pub pairs: u64,
    /// Pairs with at least one counted flag.
    pub flagged: u64,
    /// Pairs with each flag (ignored flags included).
    pub flags: BTreeMap<&'static str, u64>,
    /// Question length in characters.
    pub question_chars: LengthStats,
    /// Question length in words.
    pub question_words: LengthStats,
    /// Answer length in characters.
    pub answer_chars: LengthStats,
    /// Answer length in words.
    pub answer_words: LengthStats,
}

/// `quality_analysis_report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pairs read: every pair with `id <= max_pair_id`.
    pub snapshot: Snapshot,
    /// Pairs, flagged pairs, and pairs with each flag.
    pub totals: Totals,
    /// Every flag: its name, meaning, weight and count.
    pub flags: Vec<FlagInfo>,
    /// What the flags were computed with.
    pub thresholds: Thresholds,
    /// All pairs' lengths.
    pub overall: GroupStats,
    /// Per category, by name.
    pub by_category: Vec<GroupStats>,
    /// Per indicator, by name.
    pub by_indicator: Vec<GroupStats>,
    /// Per agent, by name.
    pub by_agent: Vec<GroupStats>,
}

/// The snapshot a report describes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// Pairs read.
    pub pairs: u64,
    /// The largest pair id read.
    pub max_pair_id: i64,
}

/// Report totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// Pairs.
    pub pairs: u64,
    /// Pairs with at least one counted flag.
    pub flagged: u64,
    /// flagged / pairs, in percent (2 decimals).
    pub flagged_percent: f64,
    /// Pairs with each flag.
    pub by_flag: BTreeMap<&'static str, u64>,
}

/// A flag as the report documents it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlagInfo {
    /// Name.
    pub flag: &'static str,
    /// Meaning.
    pub meaning: &'static str,
    /// What it takes off the score.
    pub weight: f64,
    /// Whether it makes a pair flagged (not in `quality.ignore`).
    pub counted: bool,
    /// Pairs with it.
    pub pairs: u64,
}

/// The thresholds used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Thresholds {
    /// `quality.min_answer_chars`.
    pub min_answer_chars: usize,
    /// `quality.repeat_similarity`.
    pub repeat_similarity: f64,
    /// `quality.boilerplate`.
    pub boilerplate: Vec<String>,
    /// `quality.source_fields`.
    pub source_fields: Vec<String>,
    /// `quality.ignore`.
    pub ignore: Vec<String>,
    /// How the score is computed.
    pub score: &'static str,
    /// Bin upper bounds (exclusive) of the character histograms.
    pub char_bins: Vec<u32>,
    /// Bin upper bounds (exclusive) of the word histograms.
    pub word_bins: Vec<u32>,
    /// How percentiles are computed.
    pub percentiles: &'static str,
}

/// What `perpetual quality` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Pairs read.
    pub pairs: u64,
    /// Pairs flagged.
    pub flagged: u64,
    /// Pairs with each flag.
    pub by_flag: BTreeMap<&'static str, u64>,
    /// The run's id in the manifest (`dataset_runs`).
    pub run: i64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory of the process (KiB, Linux), filled in by the command.
    pub peak_rss_kb: Option<u64>,
}

struct Evaluated {
    flags: Flags,
    counted: Flags,
    lengths: [u32; 4],
}

fn evaluate(checker: &Checker, p: &PairRow) -> Evaluated {
    let flags = checker.check(p);
    let q = p.question.trim();
    let a = p.answer.trim();
    Evaluated {
        counted: checker.counted(flags),
        flags,
        lengths: [
            q.chars().count() as u32,
            q.split_whitespace().count() as u32,
            a.chars().count() as u32,
            a.split_whitespace().count() as u32,
        ],
    }
}

/// Pairs read per chunk: evaluated in parallel, aggregated in id order.
const CHUNK: usize = 10_000;

/// Runs the quality report over the snapshot: flags stored, deliverables written.
pub fn run(
    conn: &Connection,
    cfg: &QualityConfig,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let checker = Checker::new(cfg)?;
    let (max_id, pairs) = store::snapshot(conn)?;
    let thresholds = Thresholds {
        min_answer_chars: cfg.min_answer_chars,
        repeat_similarity: cfg.repeat_similarity,
        boilerplate: cfg.boilerplate.clone(),
        source_fields: cfg.source_fields.clone(),
        ignore: cfg.ignore.clone(),
        score: "1 minus the sum of the weights of the pair's flags, at least 0",
        char_bins: CHAR_BINS.to_vec(),
        word_bins: WORD_BINS.to_vec(),
        percentiles: "nearest rank: the smallest length with at least p% of the pairs at or below it",
    };
    let run_id = store::begin_run(
        conn,
        "quality",
        &serde_json::to_value(&thresholds)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;

    progress.stage("checking pairs", pairs);
    let mut overall = Group::default();
    let mut by_category: BTreeMap<String, Group> = BTreeMap::new();
    let mut by_indicator: BTreeMap<String, Group> = BTreeMap::new();
    let mut by_agent: BTreeMap<String, Group> = BTreeMap::new();
    let mut flagged: Vec<(i64, Flags)> = Vec::new();
    let mut jsonl = out.create("quality_flags.jsonl")?;
    let mut after = 0;
    loop {
        let chunk = store::pairs_after(conn, after, max_id, CHUNK)?;
        let Some(last) = chunk.last() else { break };
        after = last.id;
        let evaluated: Vec<Evaluated> = chunk.par_iter().map(|p| evaluate(&checker, p)).collect();
        for (p, e) in chunk.iter().zip(&evaluated) {
            overall.add(e);
            by_category.entry(name_of(&p.category)).or_default().add(e);
            by_indicator
                .entry(name_of(&p.indicator))
                .or_default()
                .add(e);
            by_agent.entry(p.agent.clone()).or_default().add(e);
            if !e.counted.is_empty() {
                flagged.push((p.id, e.counted));
                let line = serde_json::json!({
                    "id": p.id,
                    "key": crate::pair::hex(&p.key),
                    "flags": e.counted.iter().map(Flag::name).collect::<Vec<_>>(),
                    "score": f64::from(e.counted.score_milli()) / 1000.0,
                });
                serde_json::to_writer(&mut jsonl, &line)?;
                jsonl.write_all(b"\n")?;
            }
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    let totals = Totals {
        pairs: overall.pairs,
        flagged: overall.flagged,
        flagged_percent: if overall.pairs == 0 {
            0.0
        } else {
            (overall.flagged as f64 * 10_000.0 / overall.pairs as f64).round() / 100.0
        },
        by_flag: flag_counts(&overall.flags),
    };
    let report = Report {
        snapshot: Snapshot {
            pairs: overall.pairs,
            max_pair_id: max_id,
        },
        flags: Flag::ALL
            .iter()
            .map(|&f| FlagInfo {
                flag: f.name(),
                meaning: f.meaning(),
                weight: f64::from(f.weight_milli()) / 1000.0,
                counted: !checker.ignore.contains(f),
                pairs: overall.flags[f as usize],
            })
            .collect(),
        totals,
        thresholds,
        overall: overall.summary("all"),
        by_category: by_category.iter().map(|(n, g)| g.summary(n)).collect(),
        by_indicator: by_indicator.iter().map(|(n, g)| g.summary(n)).collect(),
        by_agent: by_agent.iter().map(|(n, g)| g.summary(n)).collect(),
    };

    // The flags, replaced in one transaction, so exports see one run's flags or the next's.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let stored = (|| -> Result<()> {
        store::clear_quality_flags(conn)?;
        for (id, flags) in &flagged {
            let names: Vec<&str> = flags.iter().map(Flag::name).collect();
            store::insert_quality_flag(
                conn,
                run_id,
                *id,
                &names,
                f64::from(flags.score_milli()) / 1000.0,
            )?;
        }
        Ok(())
    })();
    match stored {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }

    out.commit(jsonl)?;
    out.write_json("quality_analysis_report.json", &report)?;
    out.write(
        "quality_analysis_report.md",
        render_markdown(&report).as_bytes(),
    )?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(Summary {
        pairs: report.totals.pairs,
        flagged: report.totals.flagged,
        by_flag: report.totals.by_flag.clone(),
        run: run_id,
        files,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

fn name_of(s: &Option<String>) -> String {
    match s.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "(none)".to_string(),
    }
}

fn render_markdown(r: &Report) -> String {
    use crate::human::thousands;
    let mut s = String::new();
    let t = &r.totals;
    s.push_str("# Quality analysis\n\n");
    s.push_str(&format!(
        "{} pairs (ids up to {}), **{} flagged ({:.2}%)**.\n\n",
        thousands(t.pairs),
        r.snapshot.max_pair_id,
        thousands(t.flagged),
        t.flagged_percent
    ));
    s.push_str("## Flags\n\n| flag | pairs | weight | counted | meaning |\n| --- | ---: | ---: | --- | --- |\n");
    for f in &r.flags {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            f.flag,
            thousands(f.pairs),
            f.weight,
            if f.counted { "yes" } else { "no" },
            f.meaning
        ));
    }
    s.push_str(&format!(
        "\nA pair's score is {}. Flagged pairs are listed in `quality_flags.jsonl`.\n",
        r.thresholds.score
    ));
    let o = &r.overall;
    s.push_str("\n## Lengths (all pairs)\n\n| measure | min | p10 | p50 | p90 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, l) in [
        ("question characters", &o.question_chars),
        ("question words", &o.question_words),
        ("answer characters", &o.answer_chars),
        ("answer words", &o.answer_words),
    ] {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            l.min, l.p10, l.p50, l.p90, l.max
        ));
    }
    s.push_str("\nAnswer characters, histogram:\n\n| bin | pairs |\n| --- | ---: |\n");
    for b in &o.answer_chars.histogram {
        s.push_str(&format!("| {} | {} |\n", b.bin, thousands(b.count)));
    }
    for (title, groups) in [
        ("By category", &r.by_category),
        ("By agent", &r.by_agent),
        ("By indicator", &r.by_indicator),
    ] {
        s.push_str(&format!(
            "\n## {title}\n\n| name | pairs | flagged | % | answer chars p10 / p50 / p90 | answer words p50 | question chars p50 |\n| --- | ---: | ---: | ---: | --- | ---: | ---: |\n"
        ));
        for g in groups {
            s.push_str(&format!(
                "| {} | {} | {} | {:.1} | {} / {} / {} | {} | {} |\n",
                g.name.replace('|', "\\|"),
                thousands(g.pairs),
                thousands(g.flagged),
                if g.pairs == 0 {
                    0.0
                } else {
                    g.flagged as f64 * 100.0 / g.pairs as f64
                },
                g.answer_chars.p10,
                g.answer_chars.p50,
                g.answer_chars.p90,
                g.answer_words.p50,
                g.question_chars.p50
            ));
        }
    }
    s.push_str(&format!(
        "\n## Thresholds\n\n- `quality.min_answer_chars` = {}\n- `quality.repeat_similarity` = {}\n- `quality.boilerplate`: {}\n- `quality.source_fields`: {}\n- `quality.ignore`: {}\n- percentiles: {}\n",
        r.thresholds.min_answer_chars,
        round4(r.thresholds.repeat_similarity),
        r.thresholds
            .boilerplate
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", "),
        r.thresholds.source_fields.join(", "),
        if r.thresholds.ignore.is_empty() {
            "(none)".to_string()
        } else {
            r.thresholds.ignore.join(", ")
        },
        r.thresholds.percentiles
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(q: &str, a: &str) -> PairRow {
        PairRow {
            id: 1,
            key: [0; 32],
            question: q.into(),
            answer: a.into(),
            indicator: Some("RSI".into()),
            category: Some("momentum".into()),
            agent: "droid".into(),
            extra: Some(r#"{"sources": ["Investopedia"]}"#.into()),
        }
    }

    fn flags_of(p: &PairRow) -> Vec<&'static str> {
        let c = Checker::new(&QualityConfig::default()).unwrap();
        c.check(p).iter().map(Flag::name).collect()
    }

    #[test]
    fn each_flag_by_its_case() {
        let good = pair(
            "What does an RSI above 70 mean?",
            "It is conventionally read as overbought, though strong trends can keep it there for weeks.",
        );
        let cases: Vec<(&str, PairRow, Vec<&str>)> = vec![
            ("clean", good.clone(), vec![]),
            ("empty", pair("Q?", "   "), vec!["empty_answer"]),
            ("short", pair("Q?", "Yes."), vec!["short_answer"]),
            (
                "truncated",
                pair(
                    "Q?",
                    "It is read as overbought, though strong trends can keep it the",
                ),
                vec!["truncated"],
            ),
            (
                "quoted ending is complete",
                pair(
                    "Q?",
                    "Traders call this reading \"overbought, but not yet a sell.\"",
                ),
                vec![],
            ),
            (
                "no question mark",
                pair(
                    "Explain RSI",
                    "RSI is a momentum oscillator bounded between 0 and 100.",
                ),
                vec!["no_question_mark"],
            ),
            (
                "repeats",
                pair(
                    "What does an RSI above 70 mean?",
                    "What does an RSI above 70 mean? It means overbought in most readings.",
                ),
                vec!["answer_repeats_question"],
            ),
            (
                "boilerplate",
                pair(
                    "Q?",
                    "As an AI language model, I cannot give financial advice here.",
                ),
                vec!["boilerplate"],
            ),
            (
                "mojibake",
                pair(
                    "Q?",
                    "The indicatorâ€™s reading is the same in Zürich and Paris.",
                ),
                vec!["mojibake"],
            ),
            (
                "replacement",
                pair(
                    "Q?",
                    "The reading is 70 \u{FFFD} which is overbought for most.",
                ),
                vec!["replacement_char"],
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(flags_of(&p), want, "case {name}");
        }
        let mut bare = good.clone();
        bare.indicator = None;
        bare.category = Some(" ".into());
        bare.extra = Some(r#"{"difficulty": "easy", "sources": []}"#.into());
        assert_eq!(
            flags_of(&bare),
            ["missing_indicator", "missing_category", "no_sources"]
        );
        bare.answer
            .push_str(" See https://example.org/rsi for more.");
        assert_eq!(flags_of(&bare), ["missing_indicator", "missing_category"]);
    }

    #[test]
    fn real_accents_are_not_mojibake() {
        for ok in [
            "déjà vu in Zürich",
            "naïve “quotes” — fine",
            "€100 or 50 £",
            "Ã",
        ] {
            assert!(!has_mojibake(ok), "{ok}");
        }
        for bad in ["dÃ©jÃ  vu", "itâ€™s", "ðŸ“ˆ up"] {
            assert!(has_mojibake(bad), "{bad}");
        }
    }

    #[test]
    fn ignored_flags_do_not_flag_and_unknown_names_are_refused() {
        let cfg = QualityConfig {
            ignore: vec!["no_sources".into()],
            ..QualityConfig::default()
        };
        let c = Checker::new(&cfg).unwrap();
        let mut p = pair("Q?", "A complete and long enough answer to the question.");
        p.extra = None;
        let f = c.check(&p);
        assert!(f.contains(Flag::NoSources));
        assert!(c.counted(f).is_empty());
        let bad = QualityConfig {
            ignore: vec!["nosources".into()],
            ..QualityConfig::default()
        };
        let err = Checker::new(&bad).unwrap_err().to_string();
        assert!(
            err.contains("nosources") && err.contains("no_sources"),
            "{err}"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank_and_bins_fixed() {
        let mut d = Distribution::default();
        for v in 1..=10 {
            d.add(v * 10);
        }
        let s = d.summary(&CHAR_BINS);
        assert_eq!((s.min, s.p10, s.p50, s.p90, s.max), (10, 10, 50, 90, 100));
        assert_eq!(s.histogram[0].bin, "0-24");
        assert_eq!(s.histogram[0].count, 2);
        assert_eq!(s.histogram.last().unwrap().bin, "3200+");
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 10);
        assert_eq!(Flags::default().score_milli(), 1000);
    }
}
