//! Training splits (`perpetual split`): `splits/{train,val,test}.{jsonl,csv,parquet}` and
//! `splits/manifest.json` (counts per split × stratum, the seed, the ratios, the groups
//! kept together, each file's blake3).
//!
//! **What decides a pair's split.** A *scheme* is the seed, the ratios, the stratum
//! (category by default) and the near-duplicate methods whose clusters are kept
//! together. Under a scheme, a pair's split is decided once, the first time a split run
//! sees it, stored (`store::splits`) and never recomputed:
//!
//! 1. **No leakage.** Pairs linked by near-duplicate clusters of the counted methods
//!    form a group (`dataset::groups`); a group is one unit and gets one split. A new
//!    pair that joins a group whose pairs already have a split takes that split.
//! 2. **Balance.** The new units of a stratum are taken largest first, then in the order
//!    of a hash of the seed, the stratum and the unit's key (its lowest pair's key: a
//!    hash, never a random draw), and each goes to the split furthest below its target
//!    share of the stratum (the ratio times the stratum's pairs so far, these included).
//!    So every stratum stays within one unit of its ratios, and a stratum of 100 pairs
//!    is within 1 point whenever its groups are single pairs.
//! 3. **Stability.** A stored split is never changed: when the database grows, earlier
//!    pairs keep theirs and only new pairs are placed.
//!
//! Why not a pure hash of (seed, key, stratum) per pair? It would be just as stable, but
//! its ratios are a binomial draw: in a stratum of 100 pairs, the 10% of test pairs
//! varies by ±3 points (one standard deviation), so ±2 points could not be promised.
//! The hash still decides which pairs go where; the balance decides how many.
//!
//! The one case the rules cannot both hold: two groups whose pairs already have
//! different splits become one (a new pair that is a near-duplicate of both, or a
//! near-duplicate run made after the pairs were split). Stability wins, nothing moves,
//! and the manifest lists the group under `groups_across_splits`; a new seed makes a new
//! scheme that splits everything afresh.

use crate::dataset::formats::{Columns, Format, TableWriter};
use crate::dataset::groups::Groups;
use crate::dataset::output::{Outputs, Progress, WrittenFile};
use crate::store::dataset as store;
use crate::store::{documents, splits};
use anyhow::Result;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// The folder the splits go to, inside the output folder.
pub const DIR: &str = "splits";
/// The splits, in order (their index is what `store::splits` stores).
pub const SPLITS: [&str; 3] = ["train", "val", "test"];
/// Strata of at least this many pairs must be within [`TOLERANCE_POINTS`] of the ratios.
pub const CHECKED_STRATUM: u64 = 100;
/// The promised tolerance, in percentage points.
pub const TOLERANCE_POINTS: f64 = 2.0;

const UNASSIGNED: u8 = u8::MAX;

/// What pairs are stratified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stratify {
    /// The pair's category (the seeds' "stratified by indicator category").
    Category,
    /// The pair's indicator.
    Indicator,
    /// The agent that delivered it.
    Agent,
    /// One stratum for everything.
    None,
}

impl Stratify {
    /// Parses `category`, `indicator`, `agent` or `none`.
    pub fn parse(s: &str) -> Result<Stratify> {
        Ok(match s.trim() {
            "category" => Stratify::Category,
            "indicator" => Stratify::Indicator,
            "agent" => Stratify::Agent,
            "none" => Stratify::None,
            other => anyhow::bail!(
                "cannot stratify by {other:?}: expected category, indicator, agent or none"
            ),
        })
    }

    fn of(self, l: &documents::Labels) -> String {
        let v = match self {
            Stratify::Category => l.category.as_deref(),
            Stratify::Indicator => l.indicator.as_deref(),
            Stratify::Agent => Some(l.agent.as_str()),
            Stratify::None => Some("all"),
        };
        match v.map(str::trim) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => "(none)".to_string(),
        }
    }
}

/// Parses `80,10,10` (train, val, test; percentages that add up to 100).
pub fn parse_ratios(s: &str) -> Result<[u32; 3]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    anyhow::ensure!(
        parts.len() == 3,
        "ratios are three percentages, train,val,test (e.g. 80,10,10): got {s:?}"
    );
    let mut out = [0u32; 3];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p
            .parse()
            .map_err(|_| anyhow::anyhow!("ratio {p:?} is not a whole percentage"))?;
    }
    anyhow::ensure!(
        out.iter().sum::<u32>() == 100,
        "ratios must add up to 100: {} + {} + {} = {}",
        out[0],
        out[1],
        out[2],
        out.iter().sum::<u32>()
    );
    Ok(out)
}

/// How to split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitOptions {
    /// Train, val, test, in percent.
    pub ratios: [u32; 3],
    /// The stratum.
    pub stratify: Stratify,
    /// The files to write.
    pub formats: Vec<Format>,
    /// The seed of the hash that orders pairs.
    pub seed: u64,
    /// The near-duplicate methods whose clusters stay in one split.
    pub near_dup_methods: Vec<String>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            ratios: [80, 10, 10],
            stratify: Stratify::Category,
            formats: vec![Format::Jsonl, Format::Csv, Format::Parquet],
            seed: 0,
            near_dup_methods: crate::dataset::groups::METHODS
                .iter()
                .map(|m| m.to_string())
                .collect(),
        }
    }
}

/// The scheme's identity: what decides the assignment (not the formats).
#[derive(Serialize)]
struct SchemeParams<'a> {
    seed: u64,
    ratios: [u32; 3],
    stratify: Stratify,
    near_dup_methods: &'a [String],
}

/// One stratum's counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StratumCounts {
    /// The stratum's value.
    pub stratum: String,
    /// Pairs in it.
    pub pairs: u64,
    /// Pairs per split: train, val, test.
    pub counts: [u64; 3],
    /// Share per split, in percent (2 decimals).
    pub percent: [f64; 3],
    /// The largest distance from a ratio, in points (2 decimals).
    pub deviation_points: f64,
    /// Whether the stratum is large enough for the tolerance to apply.
    pub checked: bool,
}

/// A group whose pairs had been given different splits before they became one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Straddle {
    /// The group's lowest pair id.
    pub anchor: i64,
    /// Its pairs with their splits.
    pub members: Vec<(i64, &'static str)>,
}

/// One file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitFile {
    /// Its name inside `splits/`.
    pub file: String,
    /// `train`, `val` or `test`.
    pub split: &'static str,
    /// Rows.
    pub pairs: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

/// `splits/manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The seed.
    pub seed: u64,
    /// Train, val, test, in percent.
    pub ratios: [u32; 3],
    /// What the strata are.
    pub stratify: Stratify,
    /// The near-duplicate methods whose groups stay in one split.
    pub near_dup_methods: Vec<String>,
    /// The scheme's id in the database (`split_schemes`).
    pub scheme: i64,
    /// Pairs read: every pair with `id <= max_pair_id`.
    pub max_pair_id: i64,
    /// Pairs per split.
    pub totals: [u64; 3],
    /// Pairs per split × stratum.
    pub strata: Vec<StratumCounts>,
    /// Whether every stratum of at least 100 pairs is within 2 points of the ratios.
    pub within_tolerance: bool,
    /// The tolerance rule.
    pub tolerance: &'static str,
    /// Groups of two pairs or more kept in one split.
    pub groups: u64,
    /// Pairs in those groups.
    pub pairs_in_groups: u64,
    /// Groups whose pairs were split apart before they became one group.
    pub groups_across_splits: Vec<Straddle>,
    /// The rule.
    pub rule: &'static str,
    /// The files, by split then format.
    pub files: Vec<SplitFile>,
}

/// What `perpetual split` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    /// Pairs read.
    pub pairs: u64,
    /// Pairs per split.
    pub totals: [u64; 3],
    /// Pairs that had their split from an earlier run (they keep it).
    pub previously_assigned: u64,
    /// Pairs placed by this run.
    pub newly_assigned: u64,
    /// Pairs whose stored split changed: always 0 (stored splits are never changed);
    /// reported so a reader need not take it on trust.
    pub moved: u64,
    /// Whether every stratum of at least 100 pairs is within 2 points of the ratios.
    pub within_tolerance: bool,
    /// Groups whose pairs sit in different splits (see the module docs).
    pub groups_across_splits: usize,
    /// The scheme's id.
    pub scheme: i64,
    /// The run's id (`dataset_runs`).
    pub run: i64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// Split files of formats not written this time, removed.
    pub removed: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

/// The hash that orders units: blake3 of the seed, the stratum and the key.
fn unit_hash(seed: u64, stratum: &str, key: &[u8; 32]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(stratum.as_bytes());
    h.update(&[0xff]);
    h.update(key);
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Splits the snapshot and writes the files.
pub fn run(
    conn: &Connection,
    opts: &SplitOptions,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<SplitSummary> {
    anyhow::ensure!(
        opts.ratios.iter().sum::<u32>() == 100,
        "ratios must add up to 100"
    );
    anyhow::ensure!(!opts.formats.is_empty(), "no format to write");
    let started = Instant::now();
    let (max_id, pairs) = store::snapshot(conn)?;
    let params = serde_json::to_string(&SchemeParams {
        seed: opts.seed,
        ratios: opts.ratios,
        stratify: opts.stratify,
        near_dup_methods: &opts.near_dup_methods,
    })?;
    let run_id = store::begin_run(
        conn,
        "split",
        &serde_json::to_value(opts)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let scheme = splits::scheme(conn, &params)?;

    // What is known of every pair: its stratum, its hash, its stored split.
    let size = usize::try_from(max_id.max(0))? + 1;
    let mut split_of: Vec<u8> = vec![UNASSIGNED; size];
    for (id, s) in splits::assignments(conn, scheme, max_id)? {
        split_of[id as usize] = s;
    }
    let previously_assigned = split_of.iter().filter(|s| **s != UNASSIGNED).count() as u64;
    let mut stratum_names: Vec<String> = Vec::new();
    let mut stratum_index: HashMap<String, u32> = HashMap::new();
    let mut stratum_of: Vec<u32> = vec![u32::MAX; size];
    let mut hash_of: Vec<u64> = vec![0; size];
    progress.stage("reading labels", pairs);
    documents::for_each_labels(conn, max_id, &mut |l| {
        let name = opts.stratify.of(&l);
        let idx = match stratum_index.get(&name) {
            Some(i) => *i,
            None => {
                let i = stratum_names.len() as u32;
                stratum_index.insert(name.clone(), i);
                stratum_names.push(name.clone());
                i
            }
        };
        let id = l.id as usize;
        stratum_of[id] = idx;
        hash_of[id] = unit_hash(opts.seed, &name, &l.key);
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();

    // Groups: a group with a stored split passes it to its new pairs; the rest are units.
    let groups = Groups::load(conn, &opts.near_dup_methods, max_id)?;
    let by_anchor = groups.by_anchor();
    let mut straddles = Vec::new();
    let mut new: Vec<(i64, u8)> = Vec::new();
    // Units to place: (stratum, size, hash, anchor); a group's members are looked up by
    // its anchor, a single pair is its own anchor (no allocation per pair).
    let mut units: Vec<(u32, usize, u64, i64)> = Vec::new();
    for (&anchor, members) in &by_anchor {
        let known: Vec<(i64, u8)> = members
            .iter()
            .map(|&m| (m, split_of[m as usize]))
            .filter(|(_, s)| *s != UNASSIGNED)
            .collect();
        match known.first() {
            Some(&(_, s)) => {
                if known.iter().any(|(_, k)| *k != s) {
                    straddles.push(Straddle {
                        anchor,
                        members: members
                            .iter()
                            .filter(|&&m| split_of[m as usize] != UNASSIGNED)
                            .map(|&m| (m, SPLITS[split_of[m as usize] as usize]))
                            .collect(),
                    });
                }
                for &m in members {
                    if split_of[m as usize] == UNASSIGNED {
                        split_of[m as usize] = s;
                        new.push((m, s));
                    }
                }
            }
            None => units.push((
                stratum_of[anchor as usize],
                members.len(),
                hash_of[anchor as usize],
                anchor,
            )),
        }
    }
    for id in 1..size {
        if stratum_of[id] != u32::MAX && split_of[id] == UNASSIGNED && !groups.contains(id as i64) {
            units.push((stratum_of[id], 1, hash_of[id], id as i64));
        }
    }

    // Counts so far per stratum, by each pair's own stratum.
    let mut counts: Vec<[u64; 3]> = vec![[0; 3]; stratum_names.len()];
    for id in 1..size {
        if stratum_of[id] != u32::MAX && split_of[id] != UNASSIGNED {
            counts[stratum_of[id] as usize][split_of[id] as usize] += 1;
        }
    }
    // Largest first, then by hash: the deterministic order units are placed in.
    units.sort_by(|a, b| {
        (a.0, std::cmp::Reverse(a.1), a.2, a.3).cmp(&(b.0, std::cmp::Reverse(b.1), b.2, b.3))
    });
    for (stratum, weight, _, anchor) in &units {
        let members: &[i64] = if *weight > 1 {
            &by_anchor[anchor]
        } else {
            std::slice::from_ref(anchor)
        };
        let c = &counts[*stratum as usize];
        let total_after = (c.iter().sum::<u64>() + *weight as u64) as f64;
        let mut best = 0usize;
        let mut best_deficit = f64::NEG_INFINITY;
        for (s, ratio) in opts.ratios.iter().enumerate() {
            let deficit = f64::from(*ratio) / 100.0 * total_after - c[s] as f64;
            if deficit > best_deficit + 1e-9 {
                best = s;
                best_deficit = deficit;
            }
        }
        for &m in members {
            split_of[m as usize] = best as u8;
            counts[stratum_of[m as usize] as usize][best] += 1;
            new.push((m, best as u8));
        }
    }
    new.sort_unstable();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match splits::insert_assignments_raw(conn, scheme, &new) {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }

    // The files: every pair once, in id order, into its split's writers.
    let columns = Columns { text: false };
    let mut writers: Vec<Vec<(TableWriter, String, u64)>> = Vec::new();
    for split in SPLITS {
        let mut per_format = Vec::new();
        for &format in &opts.formats {
            let file = format!("{split}.{}", format.extension());
            let sink = out.create(&format!("{DIR}/{file}"))?;
            per_format.push((TableWriter::new(format, columns, sink)?, file, 0u64));
        }
        writers.push(per_format);
    }
    progress.stage("writing splits", pairs);
    documents::for_each_document(conn, max_id, &mut |d| {
        let s = split_of[d.id as usize];
        anyhow::ensure!(s != UNASSIGNED, "pair {} was not assigned a split", d.id);
        for (w, _, n) in &mut writers[s as usize] {
            w.write(&d)?;
            *n += 1;
        }
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();
    let mut files = Vec::new();
    for (s, per_format) in writers.into_iter().enumerate() {
        for (w, file, n) in per_format {
            out.commit(w.finish()?)?;
            let written = out.files().last().expect("just committed");
            files.push(SplitFile {
                file,
                split: SPLITS[s],
                pairs: n,
                bytes: written.bytes,
                blake3: written.blake3.clone(),
            });
        }
    }
    let removed = remove_other_formats(out, &opts.formats)?;

    let mut strata: Vec<StratumCounts> = stratum_names
        .iter()
        .enumerate()
        .map(|(i, name)| stratum_counts(name, counts[i], &opts.ratios))
        .collect();
    strata.sort_by(|a, b| a.stratum.cmp(&b.stratum));
    let within_tolerance = strata
        .iter()
        .filter(|s| s.checked)
        .all(|s| s.deviation_points <= TOLERANCE_POINTS);
    let mut totals = [0u64; 3];
    for c in &counts {
        for s in 0..3 {
            totals[s] += c[s];
        }
    }
    let manifest = Manifest {
        seed: opts.seed,
        ratios: opts.ratios,
        stratify: opts.stratify,
        near_dup_methods: opts.near_dup_methods.clone(),
        scheme,
        max_pair_id: max_id,
        totals,
        strata,
        within_tolerance,
        tolerance: "every stratum of at least 100 pairs within 2 points of each ratio",
        groups: by_anchor.len() as u64,
        pairs_in_groups: groups.members() as u64,
        groups_across_splits: straddles.clone(),
        rule: "a pair's split is decided the first time it is split and never changed; near-duplicate groups (clusters of the counted methods joined where they share a pair) get one split; new units of a stratum, largest first then by blake3(seed, stratum, key of the group's lowest pair), go to the split furthest below its ratio",
        files,
    };
    out.write_json(&format!("{DIR}/manifest.json"), &manifest)?;
    let written = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&written)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(SplitSummary {
        pairs,
        totals,
        previously_assigned,
        newly_assigned: new.len() as u64,
        moved: 0,
        within_tolerance,
        groups_across_splits: straddles.len(),
        scheme,
        run: run_id,
        files: written,
        removed,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

fn stratum_counts(name: &str, counts: [u64; 3], ratios: &[u32; 3]) -> StratumCounts {
    let pairs: u64 = counts.iter().sum();
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let percent = counts.map(|c| {
        if pairs == 0 {
            0.0
        } else {
            round2(c as f64 * 100.0 / pairs as f64)
        }
    });
    let deviation = percent
        .iter()
        .zip(ratios)
        .map(|(p, r)| (p - f64::from(*r)).abs())
        .fold(0.0, f64::max);
    StratumCounts {
        stratum: name.to_string(),
        pairs,
        counts,
        percent,
        deviation_points: round2(deviation),
        checked: pairs >= CHECKED_STRATUM,
    }
}

/// Removes `splits/{train,val,test}.<ext>` of the formats not written this time, so the
/// folder holds exactly what the manifest lists.
fn remove_other_formats(out: &Outputs, formats: &[Format]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for f in [Format::Jsonl, Format::Csv, Format::Parquet] {
        if formats.contains(&f) {
            continue;
        }
        for split in SPLITS {
            let name = format!("{split}.{}", f.extension());
            let path = out.dir().join(DIR).join(&name);
            if path.exists() {
                std::fs::remove_file(&path)?;
                removed.push(format!("{DIR}/{name}"));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_parse_and_must_add_up() {
        assert_eq!(parse_ratios("80, 10,10").unwrap(), [80, 10, 10]);
        assert!(parse_ratios("80,10").is_err());
        assert!(parse_ratios("80,10,20").is_err());
        assert!(parse_ratios("80,x,10").is_err());
    }

    #[test]
    fn the_unit_hash_depends_on_seed_stratum_and_key() {
        let k = [7u8; 32];
        assert_eq!(unit_hash(1, "a", &k), unit_hash(1, "a", &k));
        assert_ne!(unit_hash(1, "a", &k), unit_hash(2, "a", &k));
        assert_ne!(unit_hash(1, "a", &k), unit_hash(1, "b", &k));
    }

    #[test]
    fn a_stratum_of_100_is_exactly_80_10_10() {
        let c = stratum_counts("x", [80, 10, 10], &[80, 10, 10]);
        assert_eq!(c.deviation_points, 0.0);
        assert!(c.checked);
        let c = stratum_counts("y", [77, 13, 10], &[80, 10, 10]);
        assert_eq!(c.deviation_points, 3.0);
    }
}
