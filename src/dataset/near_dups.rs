//! Lexical near-duplicates (`perpetual near-dups`): pairs whose texts say the same thing
//! with a word changed, other punctuation or casing, or a clause moved.
//!
//! 1. **Signatures.** Each pair's normalised question and answer become words
//!    (`dataset::words`: NFC, lower case, letters and digits), the words overlapping
//!    shingles of `near_dups.shingle_words`, the shingles a MinHash signature of
//!    `bands × rows` values with a fixed seed (16 bits of each are stored: b-bit
//!    MinHash, two bytes a value). Signatures are stored
//!    (`near_dup_signatures`), so a re-run hashes only the pairs added since.
//! 2. **Candidates (LSH banding).** The signature is cut into `bands` bands of `rows`
//!    values; two pairs that agree on a whole band are candidates. A band is a sorted
//!    list of (band hash, id), so memory is a few bytes per pair per band, and bands are
//!    processed a few at a time to stay within [`BAND_MEMORY`]. A bucket of more than
//!    [`BUCKET_ALL`] pairs is compared along its id order (each with the first and the
//!    next [`BUCKET_WINDOW`]) rather than all against all.
//! 3. **Verification.** Every candidate's exact Jaccard similarity is computed from the
//!    two shingle sets (64-bit shingle hashes), reading the pairs block by block in id
//!    order ([`VERIFY_BLOCK`]); pairs at or above the threshold are near-duplicates.
//! 4. **Clusters.** Union-find over the verified pairs. A cluster's representative is its
//!    lowest id (the pair stored first); each member's similarity is its Jaccard
//!    similarity to the representative. The recommendation follows [`RULE`].
//!
//! No pair is compared with every other: no similarity matrix (30,000 pairs would be 900
//! million cells). Deliverables: `duplicate_analysis_detailed.json` and
//! `near_duplicate_pairs.csv`; membership goes to `near_dup_members` (method `minhash`).

use crate::config::NearDupsConfig;
use crate::dataset::output::{Outputs, Progress, WrittenFile, round4};
use crate::dataset::union_find::UnionFind;
use crate::dataset::words;
use crate::store::dataset::{self as store, ClusterMember, MINHASH, PairRow};
use anyhow::Result;
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// Memory the banding step may use for its band lists.
pub const BAND_MEMORY: usize = 64 << 20;
/// Buckets up to this size are compared all against all.
pub const BUCKET_ALL: usize = 50;
/// In a larger bucket, each pair is compared with the bucket's first pair and the next
/// this many pairs in id order.
pub const BUCKET_WINDOW: usize = 10;
/// Pairs signed per chunk (read in id order, hashed in parallel, written in one
/// transaction).
const SIGN_CHUNK: usize = 10_000;

/// The recommendation rule, as written in the report.
pub const RULE: &str = "keep: the members name different indicators (shared wording, different subjects: keep them all); \
drop: otherwise, when every member is at least drop_similarity similar to the representative (the same pair with cosmetic \
differences: keep the representative, drop the others); merge: otherwise (the same subject with real differences: merge what \
the others add into the representative, then drop them)";

/// What a run is computed with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// The method recorded with the clusters.
    pub method: &'static str,
    /// Jaccard similarity at or above which two pairs are near-duplicates.
    pub threshold: f64,
    /// Words per shingle.
    pub shingle_words: usize,
    /// LSH bands.
    pub bands: usize,
    /// MinHash values per band.
    pub rows: usize,
    /// MinHash values per signature (bands × rows).
    pub permutations: usize,
    /// The seed of the MinHash permutations.
    pub seed: String,
    /// Bits kept of each MinHash value (b-bit MinHash).
    pub signature_bits: u32,
    /// Buckets compared all against all up to this size.
    pub bucket_all: usize,
    /// Larger buckets: each pair against the first and the next this many.
    pub bucket_window: usize,
    /// The recommendation rule's threshold.
    pub drop_similarity: f64,
    /// The recommendation rule.
    pub rule: &'static str,
    /// What the text is.
    pub text: &'static str,
}

impl Params {
    /// From `[near_dups]`, with `--threshold` when given.
    pub fn new(cfg: &NearDupsConfig, threshold: Option<f64>) -> Result<Params> {
        let threshold = threshold.unwrap_or(cfg.threshold);
        anyhow::ensure!(
            threshold > 0.0 && threshold <= 1.0,
            "the threshold must be above 0 and at most 1 (got {threshold})"
        );
        Ok(Params {
            method: MINHASH,
            threshold,
            shingle_words: cfg.shingle_words,
            bands: cfg.bands,
            rows: cfg.rows,
            permutations: cfg.bands * cfg.rows,
            seed: format!("{:#018x}", words::MINHASH_SEED),
            signature_bits: 16,
            bucket_all: BUCKET_ALL,
            bucket_window: BUCKET_WINDOW,
            drop_similarity: cfg.drop_similarity,
            rule: RULE,
            text: "the question and the answer, NFC, lower-cased, as words of letters and digits",
        })
    }

    /// What stored signatures depend on; when it changes they are made again.
    fn signature_key(&self) -> String {
        format!(
            "shingle_words={} permutations={} seed={} bits={}",
            self.shingle_words, self.permutations, self.seed, self.signature_bits
        )
    }
}

/// One near-duplicate cluster in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cluster {
    /// The representative: the cluster's lowest pair id.
    pub representative: i64,
    /// Members, the representative included.
    pub size: usize,
    /// The indicators its members name.
    pub indicators: Vec<String>,
    /// `keep`, `merge` or `drop` ([`RULE`]).
    pub recommendation: &'static str,
    /// Every member with its similarity to the representative, by id.
    pub members: Vec<Member>,
}

/// A cluster member in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    /// Pair id.
    pub id: i64,
    /// Similarity to the representative (4 decimals): Jaccard of shingles here, cosine
    /// of vectors in `dataset::cosine`.
    pub similarity: f64,
}

/// `duplicate_analysis_detailed.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the clusters were found.
    pub parameters: Params,
    /// The snapshot: pairs read and the largest id.
    pub snapshot: crate::dataset::quality::Snapshot,
    /// Counts.
    pub totals: Totals,
    /// The clusters, by representative.
    pub clusters: Vec<Cluster>,
}

/// Report totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// Pairs read.
    pub pairs: u64,
    /// Candidate pairs from LSH.
    pub candidates: u64,
    /// Candidates verified at or above the threshold (`near_duplicate_pairs.csv`).
    pub near_duplicate_pairs: u64,
    /// Clusters.
    pub clusters: u64,
    /// Pairs in a cluster.
    pub pairs_in_clusters: u64,
    /// Clusters per recommendation.
    pub recommendations: BTreeMap<&'static str, u64>,
}

/// What `perpetual near-dups` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Pairs read.
    pub pairs: u64,
    /// Clusters found.
    pub clusters: u64,
    /// Pairs in a cluster.
    pub pairs_in_clusters: u64,
    /// Candidate pairs LSH proposed.
    pub candidates: u64,
    /// Candidates verified as near-duplicates.
    pub near_duplicate_pairs: u64,
    /// Signatures made by this run (pairs new since the last run).
    pub signatures_made: u64,
    /// The run's id in the manifest.
    pub run: i64,
    /// Files written.
    pub files: Vec<WrittenFile>,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory of the process (KiB, Linux), filled in by the command.
    pub peak_rss_kb: Option<u64>,
}

/// The shingle set of a pair: its question and answer, as one text.
pub fn pair_shingles(question: &str, answer: &str, k: usize, scratch: &mut Vec<u64>) -> Vec<u64> {
    scratch.clear();
    words::word_hashes(question, scratch);
    words::word_hashes(answer, scratch);
    words::shingles(scratch, k)
}

/// Runs near-duplicate detection over the snapshot.
pub fn run(
    conn: &Connection,
    cfg: &NearDupsConfig,
    threshold: Option<f64>,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let params = Params::new(cfg, threshold)?;
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "near_dups",
        &serde_json::to_value(&params)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let signatures_made = sign(conn, &params, max_id, progress)?;
    let candidates = candidates(conn, &params, max_id, pairs, progress)?;
    let verified = verify(conn, &params, max_id, &candidates, progress)?;
    let n_candidates = candidates.len() as u64;
    drop(candidates);

    // Union-find over the verified pairs; ids are dense (pairs are only appended).
    let mut uf = UnionFind::new(max_id as usize + 1);
    for &(a, b, _) in &verified {
        uf.union(a as usize, b as usize);
    }
    let clusters: Vec<Vec<i64>> = uf
        .sets(
            verified
                .iter()
                .flat_map(|&(a, b, _)| [a as usize, b as usize]),
        )
        .into_iter()
        .map(|set| set.into_iter().map(|id| id as i64).collect())
        .collect();

    progress.stage("describing clusters", clusters.len() as u64);
    let mut described = Vec::with_capacity(clusters.len());
    let mut scratch = Vec::new();
    for batch in clusters.chunks(1000) {
        let ids: Vec<i64> = batch.iter().flatten().copied().collect();
        let rows: HashMap<i64, PairRow> = store::pairs_by_ids(conn, &ids)?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        for members in batch {
            described.push(describe(members, &rows, &params, &mut scratch));
        }
        progress.advance(batch.len() as u64);
    }
    progress.finish();

    let membership: Vec<ClusterMember> = described
        .iter()
        .flat_map(|c| {
            c.members.iter().map(|m| ClusterMember {
                pair_id: m.id,
                representative: c.representative,
                similarity: m.similarity,
            })
        })
        .collect();
    store::replace_cluster_members(conn, MINHASH, run_id, &membership)?;

    let mut recommendations: BTreeMap<&'static str, u64> =
        ["drop", "keep", "merge"].map(|r| (r, 0)).into();
    for c in &described {
        *recommendations.entry(c.recommendation).or_default() += 1;
    }
    let report = Report {
        parameters: params,
        snapshot: crate::dataset::quality::Snapshot {
            pairs,
            max_pair_id: max_id,
        },
        totals: Totals {
            pairs,
            candidates: n_candidates,
            near_duplicate_pairs: verified.len() as u64,
            clusters: described.len() as u64,
            pairs_in_clusters: membership.len() as u64,
            recommendations,
        },
        clusters: described,
    };
    let mut csv_sink = out.create("near_duplicate_pairs.csv")?;
    {
        let mut w = csv::Writer::from_writer(&mut csv_sink);
        w.write_record(["a", "b", "similarity"])?;
        for &(a, b, s) in &verified {
            w.write_record([a.to_string(), b.to_string(), format!("{:.4}", s)])?;
        }
        w.flush()?;
    }
    out.commit(csv_sink)?;
    out.write_json("duplicate_analysis_detailed.json", &report)?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(Summary {
        pairs,
        clusters: report.totals.clusters,
        pairs_in_clusters: report.totals.pairs_in_clusters,
        candidates: n_candidates,
        near_duplicate_pairs: report.totals.near_duplicate_pairs,
        signatures_made,
        run: run_id,
        files,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

/// Makes and stores the signatures of the pairs that have none; returns how many.
fn sign(conn: &Connection, params: &Params, max_id: i64, progress: &mut Progress) -> Result<u64> {
    let key = params.signature_key();
    if store::setting(conn, "minhash_params")?.as_deref() != Some(key.as_str()) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let reset = store::clear_signatures(conn)
            .and_then(|()| store::set_setting(conn, "minhash_params", &key));
        match reset {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    let mut after = store::last_signed_pair(conn)?;
    let todo = conn.query_row(
        "SELECT COUNT(*) FROM pairs WHERE id > ?1 AND id <= ?2",
        [after, max_id],
        |r| r.get::<_, i64>(0),
    )? as u64;
    progress.stage("signing new pairs", todo);
    let perms = words::permutations(params.permutations);
    let mut made = 0;
    loop {
        let chunk = store::pairs_after(conn, after, max_id, SIGN_CHUNK)?;
        let Some(last) = chunk.last() else { break };
        after = last.id;
        let signed: Vec<(i64, Vec<u8>)> = chunk
            .par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(scratch, sig), p| {
                    let sh = pair_shingles(&p.question, &p.answer, params.shingle_words, scratch);
                    words::signature(&sh, &perms, sig);
                    (p.id, words::compact(sig))
                },
            )
            .collect();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let written = signed
            .iter()
            .try_for_each(|(id, sig)| store::insert_signature(conn, *id, sig));
        match written {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        made += signed.len() as u64;
        progress.advance(signed.len() as u64);
    }
    progress.finish();
    Ok(made)
}

/// LSH: candidate pairs `(a << 32) | b` with `a < b`, sorted, distinct.
fn candidates(
    conn: &Connection,
    params: &Params,
    max_id: i64,
    pairs: u64,
    progress: &mut Progress,
) -> Result<Vec<u64>> {
    let per_band = (pairs as usize).max(1) * std::mem::size_of::<(u64, u32)>();
    let bands_per_pass = (BAND_MEMORY / per_band).clamp(1, params.bands);
    let mut edges: Vec<u64> = Vec::new();
    progress.stage("banding signatures", params.bands as u64);
    let width = params.rows * 2;
    for first in (0..params.bands).step_by(bands_per_pass) {
        let pass: Vec<usize> = (first..(first + bands_per_pass).min(params.bands)).collect();
        let mut lists: Vec<Vec<(u64, u32)>> = pass
            .iter()
            .map(|_| Vec::with_capacity(pairs as usize))
            .collect();
        store::for_each_signature(conn, max_id, &mut |id, sig| {
            for (list, &band) in lists.iter_mut().zip(&pass) {
                let Some(slice) = sig.get(band * width..(band + 1) * width) else {
                    continue;
                };
                let mut h = words::mix64(band as u64 ^ 0x6c73_685f_6261_6e64);
                for chunk in slice.chunks(8) {
                    let mut word = [0u8; 8];
                    word[..chunk.len()].copy_from_slice(chunk);
                    h = words::mix64(h ^ u64::from_le_bytes(word));
                }
                list.push((h, id as u32));
            }
            Ok(())
        })?;
        for mut list in lists {
            list.par_sort_unstable();
            let mut i = 0;
            while i < list.len() {
                let mut j = i + 1;
                while j < list.len() && list[j].0 == list[i].0 {
                    j += 1;
                }
                let bucket = &list[i..j];
                if bucket.len() <= BUCKET_ALL {
                    for x in 0..bucket.len() {
                        for y in x + 1..bucket.len() {
                            edges.push(edge(bucket[x].1, bucket[y].1));
                        }
                    }
                } else {
                    // Sorted by (hash, id), so the bucket is in id order.
                    for x in 1..bucket.len() {
                        edges.push(edge(bucket[0].1, bucket[x].1));
                        for y in x + 1..(x + 1 + BUCKET_WINDOW).min(bucket.len()) {
                            edges.push(edge(bucket[x].1, bucket[y].1));
                        }
                    }
                }
                i = j;
            }
            // Keep the list of edges from growing with duplicates between bands.
            if edges.len() > (64 << 20) / 8 {
                edges.par_sort_unstable();
                edges.dedup();
            }
            progress.advance(1);
        }
    }
    edges.par_sort_unstable();
    edges.dedup();
    progress.finish();
    Ok(edges)
}

fn edge(a: u32, b: u32) -> u64 {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    (u64::from(a) << 32) | u64::from(b)
}

/// Exact Jaccard of each candidate; those at or above the threshold, by (a, b).
///
/// Candidates join pairs anywhere in the table, so reading both ends of each one by id
/// would cost a random read per end. Instead the ids are cut into blocks of
/// [`VERIFY_BLOCK`] pairs read in id order: for each block `i`, its shingle sets are
/// made once, then each later block `j` that holds the other ends of block `i`'s
/// candidates is read and its candidates verified. Two blocks are in memory at a time.
fn verify(
    conn: &Connection,
    params: &Params,
    max_id: i64,
    candidates: &[u64],
    progress: &mut Progress,
) -> Result<Vec<(u32, u32, f64)>> {
    progress.stage("verifying candidates", candidates.len() as u64);
    let block_of = |id: u32| id as usize / VERIFY_BLOCK;
    let mut verified = Vec::new();
    let mut start = 0;
    while start < candidates.len() {
        let i = block_of((candidates[start] >> 32) as u32);
        let end = start
            + candidates[start..]
                .iter()
                .position(|&e| block_of((e >> 32) as u32) != i)
                .unwrap_or(candidates.len() - start);
        let mut mine: Vec<u64> = candidates[start..end].to_vec();
        // By the other end's block, then as before.
        mine.sort_unstable_by_key(|&e| (block_of((e & 0xffff_ffff) as u32), e));
        let home = Block::read(conn, params, i, max_id)?;
        let mut k = 0;
        while k < mine.len() {
            let j = block_of((mine[k] & 0xffff_ffff) as u32);
            let stop = k + mine[k..]
                .iter()
                .position(|&e| block_of((e & 0xffff_ffff) as u32) != j)
                .unwrap_or(mine.len() - k);
            let other = if j == i {
                None
            } else {
                Some(Block::read(conn, params, j, max_id)?)
            };
            let other = other.as_ref().unwrap_or(&home);
            let found: Vec<(u32, u32, f64)> = mine[k..stop]
                .par_iter()
                .filter_map(|&e| {
                    let (a, b) = ((e >> 32) as u32, (e & 0xffff_ffff) as u32);
                    let s = words::jaccard(home.get(a)?, other.get(b)?);
                    (s >= params.threshold).then_some((a, b, round4(s)))
                })
                .collect();
            verified.extend(found);
            progress.advance((stop - k) as u64);
            k = stop;
        }
        start = end;
    }
    verified.sort_unstable_by_key(|&(a, b, _)| (a, b));
    progress.finish();
    Ok(verified)
}

/// Pairs per verification block (see [`verify`]).
pub const VERIFY_BLOCK: usize = 100_000;

/// The shingle sets of one block of pair ids, flat.
struct Block {
    first: u32,
    offsets: Vec<u32>,
    shingles: Vec<u64>,
}

impl Block {
    fn read(conn: &Connection, params: &Params, index: usize, max_id: i64) -> Result<Block> {
        let first = (index * VERIFY_BLOCK) as i64;
        let last = (first + VERIFY_BLOCK as i64 - 1).min(max_id);
        let rows = store::pairs_after(conn, first - 1, last, VERIFY_BLOCK)?;
        let k = params.shingle_words;
        let sets: Vec<(i64, Vec<u64>)> = rows
            .par_iter()
            .map_init(Vec::new, |scratch, r| {
                (r.id, pair_shingles(&r.question, &r.answer, k, scratch))
            })
            .collect();
        let mut block = Block {
            first: first.max(0) as u32,
            offsets: vec![0; VERIFY_BLOCK + 1],
            shingles: Vec::with_capacity(sets.iter().map(|(_, s)| s.len()).sum()),
        };
        // Ids without a row (none, as ids are dense) get an empty range.
        let mut next = 0usize;
        for (id, set) in sets {
            let slot = (id - first) as usize;
            while next <= slot {
                block.offsets[next] = block.shingles.len() as u32;
                next += 1;
            }
            block.shingles.extend(set);
        }
        while next <= VERIFY_BLOCK {
            block.offsets[next] = block.shingles.len() as u32;
            next += 1;
        }
        Ok(block)
    }

    fn get(&self, id: u32) -> Option<&[u64]> {
        let slot = id.checked_sub(self.first)? as usize;
        let (from, to) = (*self.offsets.get(slot)?, *self.offsets.get(slot + 1)?);
        Some(&self.shingles[from as usize..to as usize])
    }
}

fn describe(
    members: &[i64],
    rows: &HashMap<i64, PairRow>,
    params: &Params,
    scratch: &mut Vec<u64>,
) -> Cluster {
    let k = params.shingle_words;
    let representative = members[0];
    let rep = rows
        .get(&representative)
        .map(|r| pair_shingles(&r.question, &r.answer, k, scratch))
        .unwrap_or_default();
    let mut indicators = BTreeSet::new();
    let mut list = Vec::with_capacity(members.len());
    for &id in members {
        let Some(r) = rows.get(&id) else { continue };
        if let Some(i) = r
            .indicator
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            indicators.insert(i.to_string());
        }
        let similarity = if id == representative {
            1.0
        } else {
            round4(words::jaccard(
                &rep,
                &pair_shingles(&r.question, &r.answer, k, scratch),
            ))
        };
        list.push(Member { id, similarity });
    }
    let recommendation = recommend(indicators.len(), &list, params.drop_similarity);
    Cluster {
        representative,
        size: list.len(),
        indicators: indicators.into_iter().collect(),
        recommendation,
        members: list,
    }
}

/// The recommendation rule (the lexical [`RULE`], and the cosine one of
/// `dataset::cosine`): `keep` when the members name more than one indicator, `drop`
/// when every member is at least `drop_similarity` similar to the representative,
/// `merge` otherwise.
pub(crate) fn recommend(
    indicators: usize,
    members: &[Member],
    drop_similarity: f64,
) -> &'static str {
    if indicators > 1 {
        "keep"
    } else if members.iter().all(|m| m.similarity >= drop_similarity) {
        "drop"
    } else {
        "merge"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendation_follows_the_rule() {
        let cfg = NearDupsConfig::default();
        let params = Params::new(&cfg, None).unwrap();
        let row = |id, q: &str, ind: &str| PairRow {
            id,
            key: [0; 32],
            question: q.into(),
            answer: "a fixed answer that is long enough to shingle well".into(),
            indicator: Some(ind.into()),
            category: None,
            agent: "t".into(),
            extra: None,
        };
        let rec = |rows: Vec<PairRow>| {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let map = rows.into_iter().map(|r| (r.id, r)).collect();
            describe(&ids, &map, &params, &mut Vec::new())
        };
        let same = rec(vec![
            row(1, "What is RSI?", "RSI"),
            row(2, "what is rsi", "RSI"),
        ]);
        assert_eq!(same.recommendation, "drop");
        assert_eq!(same.members[1].similarity, 1.0);
        let other = rec(vec![
            row(1, "What is RSI?", "RSI"),
            row(2, "What is RSI?", "MACD"),
        ]);
        assert_eq!(other.recommendation, "keep");
        let differs = rec(vec![
            row(1, "What is RSI and why?", "RSI"),
            row(2, "What is the RSI and how?", "RSI"),
        ]);
        assert_eq!(differs.recommendation, "merge");
        assert!(differs.members[1].similarity < 0.95);
    }
}
