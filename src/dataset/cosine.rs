//! Semantic near-duplicates (`perpetual near-dups --cosine 0.95`): pairs whose stored
//! embeddings (`store::embeddings`, imported from the batch embeddings API) point the
//! same way, the seeds' "deduplication by cosine similarity".
//!
//! 1. **Vectors.** Every vector of one model and dimension among the snapshot's pairs,
//!    scaled to unit length, so a dot product is the cosine similarity.
//! 2. **Candidates.** Up to `cosine.exact_max` vectors, every pair of vectors is compared
//!    (exact; rayon over rows). Beyond, an HNSW index (`instant-distance`, seeded and
//!    built on one thread, so the same vectors always give the same graph) proposes each
//!    vector's `cosine.neighbours` nearest, searched with breadth `cosine.ef_search`.
//! 3. **Verification.** Each candidate's cosine similarity is computed exactly; pairs
//!    at or above the threshold are near-duplicates.
//! 4. **Clusters.** Union-find; the representative is the lowest pair id; each member's
//!    similarity is its cosine similarity to the representative; the recommendation
//!    follows the lexical run's rule (`keep` when the members name different
//!    indicators, `drop` when all are at least `cosine.drop_similarity` similar to the
//!    representative, `merge` otherwise).
//!
//! The deliverables have the lexical run's shape with `"method": "cosine"`:
//! `duplicate_analysis_cosine.json` and `near_duplicate_pairs_cosine.csv` (their own
//! names, so the lexical `duplicate_analysis_detailed.json` beside them is kept), and
//! membership is stored with method `cosine` for the exports and the splits.

use crate::config::CosineConfig;
use crate::dataset::output::{Outputs, Progress, WrittenFile, round4};
use crate::dataset::union_find::UnionFind;
use crate::store::dataset::{self as store, COSINE, ClusterMember};
use crate::store::embeddings as vectors;
use anyhow::{Context, Result};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The seed of the HNSW index's layer assignment.
pub const HNSW_SEED: u64 = 0x434f_5349_4e45; // "COSINE"

/// The recommendation rule, as written in the report.
pub const RULE: &str = "keep: the members name different indicators; drop: otherwise, when every member is at least drop_similarity similar to the representative (keep the representative, drop the others); merge: otherwise (merge what the others add into the representative, then drop them)";

/// What a run is computed with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// The method recorded with the clusters.
    pub method: &'static str,
    /// The model whose vectors are compared.
    pub model: String,
    /// Their dimension.
    pub dimension: usize,
    /// Cosine similarity at or above which two pairs are near-duplicates.
    pub threshold: f64,
    /// `exact` (every pair compared) or `hnsw` (candidates from the index).
    pub search: &'static str,
    /// Vectors up to which the search is exact.
    pub exact_max: usize,
    /// HNSW: neighbours taken per vector.
    pub neighbours: usize,
    /// HNSW: search breadth while building.
    pub ef_construction: usize,
    /// HNSW: search breadth per query.
    pub ef_search: usize,
    /// HNSW: the seed of its layers.
    pub seed: String,
    /// The recommendation rule's threshold.
    pub drop_similarity: f64,
    /// The recommendation rule.
    pub rule: &'static str,
}

/// The report's clusters and members: the same shape as the lexical method's.
pub use crate::dataset::near_dups::{Cluster, Member};

/// The snapshot read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// Pairs in it.
    pub pairs: u64,
    /// Its largest pair id.
    pub max_pair_id: i64,
    /// Pairs with a vector of the model.
    pub pairs_with_vectors: u64,
}

/// Report totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// Vectors compared.
    pub vectors: u64,
    /// Candidate pairs (every pair when exact).
    pub candidates: u64,
    /// Candidates at or above the threshold.
    pub near_duplicate_pairs: u64,
    /// Clusters.
    pub clusters: u64,
    /// Pairs in a cluster.
    pub pairs_in_clusters: u64,
    /// Clusters per recommendation.
    pub recommendations: BTreeMap<&'static str, u64>,
}

/// `duplicate_analysis_cosine.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the clusters were found.
    pub parameters: Params,
    /// What was read.
    pub snapshot: Snapshot,
    /// Counts.
    pub totals: Totals,
    /// The clusters, by representative.
    pub clusters: Vec<Cluster>,
}

/// What `perpetual near-dups --cosine` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The method.
    pub method: &'static str,
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// Vectors compared.
    pub vectors: u64,
    /// `exact` or `hnsw`.
    pub search: &'static str,
    /// Clusters found.
    pub clusters: u64,
    /// Pairs in a cluster.
    pub pairs_in_clusters: u64,
    /// Candidate pairs looked at.
    pub candidates: u64,
    /// Near-duplicate pairs verified.
    pub near_duplicate_pairs: u64,
    /// The run's id (`dataset_runs`).
    pub run: i64,
    /// Files written.
    pub files: Vec<WrittenFile>,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

/// Unit vectors in one buffer.
struct Vectors {
    ids: Vec<i64>,
    dim: usize,
    data: Vec<f32>,
}

impl Vectors {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn dot(&self, a: usize, b: usize) -> f32 {
        dot(self.row(a), self.row(b))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes the compiler vectorises; the order of the sum is fixed, so the result
    // is the same on every run.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// A point of the HNSW index: a unit vector; distance = 1 − cosine similarity.
#[derive(Clone)]
struct Unit(Vec<f32>);

impl instant_distance::Point for Unit {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

fn load(
    conn: &Connection,
    model: &str,
    dim: usize,
    max_id: i64,
    progress: &mut Progress,
) -> Result<Vectors> {
    let mut v = Vectors {
        ids: Vec::new(),
        dim,
        data: Vec::new(),
    };
    progress.stage("reading vectors", vectors::vector_count(conn, model)?);
    vectors::for_each_vector(conn, model, dim, max_id, &mut |id, bytes| {
        let start = v.data.len();
        v.data.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let norm = v.data[start..].iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for x in &mut v.data[start..] {
                *x /= norm;
            }
        }
        v.ids.push(id);
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();
    Ok(v)
}

/// Pairs of vector indexes (i < j) with their similarity.
type Edges = Vec<(usize, usize, f32)>;

/// Every pair (i < j) at or above `t`, comparing all pairs; with the pairs compared.
fn exact(v: &Vectors, t: f32, progress: &mut Progress) -> (u64, Edges) {
    let n = v.ids.len();
    progress.stage("comparing every pair", n as u64);
    let mut found: Vec<(usize, usize, f32)> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            (i + 1..n).filter_map(move |j| {
                let s = v.dot(i, j);
                (s >= t).then_some((i, j, s))
            })
        })
        .collect();
    found.sort_by_key(|a| (a.0, a.1));
    progress.advance(n as u64);
    progress.finish();
    ((n as u64) * (n.saturating_sub(1) as u64) / 2, found)
}

/// Candidates from the HNSW index, verified exactly.
fn approximate(
    v: &Vectors,
    t: f32,
    cfg: &CosineConfig,
    progress: &mut Progress,
) -> Result<(u64, Edges)> {
    let n = v.ids.len();
    progress.stage("building the HNSW index", n as u64);
    let points: Vec<Unit> = (0..n).map(|i| Unit(v.row(i).to_vec())).collect();
    let query = |i: usize| Unit(v.row(i).to_vec());
    // One thread: instant-distance inserts in parallel otherwise, and the graph (so the
    // candidates, so the report) would depend on thread timing.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .context("cannot start the index builder's thread")?;
    let (index, point_ids) = pool.install(|| {
        instant_distance::Builder::default()
            .ef_construction(cfg.ef_construction)
            .ef_search(cfg.ef_search)
            .seed(HNSW_SEED)
            .build_hnsw(points)
    });
    progress.advance(n as u64);
    // point_ids[i] is the index's id of vector i; map back.
    let mut vector_of = vec![0usize; n];
    for (i, pid) in point_ids.iter().enumerate() {
        vector_of[pid.into_inner() as usize] = i;
    }
    progress.stage("searching neighbours", n as u64);
    let k = cfg.neighbours;
    let per_point: Vec<Vec<(usize, usize, f32)>> = (0..n)
        .into_par_iter()
        .map_init(instant_distance::Search::default, |search, i| {
            index
                .search(&query(i), search)
                .take(k + 1)
                .map(|item| vector_of[item.pid.into_inner() as usize])
                .filter(|&j| j != i)
                .map(|j| {
                    let (a, b) = if i < j { (i, j) } else { (j, i) };
                    (a, b, v.dot(a, b))
                })
                .collect()
        })
        .collect();
    progress.advance(n as u64);
    progress.finish();
    let mut candidates: Vec<(usize, usize, f32)> = per_point.into_iter().flatten().collect();
    candidates.sort_by_key(|a| (a.0, a.1));
    candidates.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let looked_at = candidates.len() as u64;
    candidates.retain(|c| c.2 >= t);
    Ok((looked_at, candidates))
}

/// Finds the semantic near-duplicates of the snapshot, stores them (method `cosine`)
/// and writes the deliverables.
pub fn run(
    conn: &Connection,
    cfg: &CosineConfig,
    threshold: Option<f64>,
    model: Option<&str>,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let threshold = threshold.unwrap_or(cfg.threshold);
    anyhow::ensure!(
        threshold > 0.0 && threshold <= 1.0,
        "the cosine threshold must be above 0 and at most 1 (got {threshold})"
    );
    let models = vectors::models(conn)?;
    let chosen = match model {
        Some(m) => models.iter().find(|r| r.model == m).with_context(|| {
            format!("no vectors of model {m} are stored (models with vectors: {})", names(&models))
        })?,
        None => models
            .iter()
            .max_by(|a, b| a.vectors.cmp(&b.vectors).then_with(|| b.model.cmp(&a.model)))
            .context("no embeddings are stored: `perpetual export embeddings`, run the batch job, then `perpetual import embeddings RESULTS.jsonl`")?,
    };
    let (max_id, pairs) = store::snapshot(conn)?;
    let v = load(conn, &chosen.model, chosen.dimension, max_id, progress)?;
    let n = v.ids.len();
    let search = if n <= cfg.exact_max { "exact" } else { "hnsw" };
    let params = Params {
        method: COSINE,
        model: chosen.model.clone(),
        dimension: chosen.dimension,
        threshold,
        search,
        exact_max: cfg.exact_max,
        neighbours: cfg.neighbours,
        ef_construction: cfg.ef_construction,
        ef_search: cfg.ef_search,
        seed: format!("{HNSW_SEED:#x}"),
        drop_similarity: cfg.drop_similarity,
        rule: RULE,
    };
    let run_id = store::begin_run(
        conn,
        "near_dups",
        &serde_json::to_value(&params)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    // A hair below the threshold in f32, then the exact f64 comparison decides.
    let t32 = threshold as f32 - 1e-6;
    let (candidates, found) = if search == "exact" {
        exact(&v, t32, progress)
    } else {
        approximate(&v, t32, cfg, progress)?
    };
    let verified: Vec<(usize, usize, f64)> = found
        .into_iter()
        .map(|(a, b, _)| (a, b, f64::from(v.dot(a, b))))
        .filter(|(_, _, s)| *s >= threshold - 1e-6)
        .collect();

    // Clusters by union-find over vector indexes; ids ascend with indexes, so each
    // cluster's first member is its lowest id, and clusters come in that order.
    let mut uf = UnionFind::new(n);
    for &(a, b, _) in &verified {
        uf.union(a, b);
    }
    let sets = uf.sets(verified.iter().flat_map(|&(a, b, _)| [a, b]));
    let indicator_of = indicators(conn, sets.iter().flatten().map(|&i| v.ids[i]))?;
    let mut clusters = Vec::new();
    let mut membership = Vec::new();
    for members in &sets {
        let rep = members[0];
        let mut list = Vec::new();
        let mut names = BTreeSet::new();
        for &m in members {
            let similarity = if m == rep {
                1.0
            } else {
                round4(f64::from(v.dot(rep, m)))
            };
            if let Some(Some(name)) = indicator_of.get(&v.ids[m]) {
                names.insert(name.clone());
            }
            list.push(Member {
                id: v.ids[m],
                similarity,
            });
            membership.push(ClusterMember {
                pair_id: v.ids[m],
                representative: v.ids[rep],
                similarity,
            });
        }
        let recommendation =
            crate::dataset::near_dups::recommend(names.len(), &list, cfg.drop_similarity);
        clusters.push(Cluster {
            representative: v.ids[rep],
            size: list.len(),
            indicators: names.into_iter().collect(),
            recommendation,
            members: list,
        });
    }
    store::replace_cluster_members(conn, COSINE, run_id, &membership)?;

    let mut recommendations: BTreeMap<&'static str, u64> =
        ["drop", "keep", "merge"].map(|r| (r, 0)).into();
    for c in &clusters {
        *recommendations.entry(c.recommendation).or_default() += 1;
    }
    let report = Report {
        parameters: params,
        snapshot: Snapshot {
            pairs,
            max_pair_id: max_id,
            pairs_with_vectors: n as u64,
        },
        totals: Totals {
            vectors: n as u64,
            candidates,
            near_duplicate_pairs: verified.len() as u64,
            clusters: clusters.len() as u64,
            pairs_in_clusters: membership.len() as u64,
            recommendations,
        },
        clusters,
    };
    let mut csv_sink = out.create("near_duplicate_pairs_cosine.csv")?;
    {
        let mut w = csv::Writer::from_writer(&mut csv_sink);
        w.write_record(["a", "b", "similarity"])?;
        for &(a, b, s) in &verified {
            w.write_record([
                v.ids[a].to_string(),
                v.ids[b].to_string(),
                format!("{:.4}", round4(s)),
            ])?;
        }
        w.flush()?;
    }
    out.commit(csv_sink)?;
    out.write_json("duplicate_analysis_cosine.json", &report)?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(Summary {
        method: COSINE,
        pairs,
        vectors: n as u64,
        search,
        clusters: report.totals.clusters,
        pairs_in_clusters: report.totals.pairs_in_clusters,
        candidates,
        near_duplicate_pairs: report.totals.near_duplicate_pairs,
        run: run_id,
        files,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

fn names(models: &[vectors::ModelRow]) -> String {
    if models.is_empty() {
        "none".into()
    } else {
        models
            .iter()
            .map(|m| m.model.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The indicator of each of these pairs.
fn indicators(
    conn: &Connection,
    ids: impl Iterator<Item = i64>,
) -> Result<std::collections::HashMap<i64, Option<String>>> {
    let ids: Vec<i64> = ids.collect();
    Ok(store::pairs_by_ids(conn, &ids)?
        .into_iter()
        .map(|r| (r.id, r.indicator.filter(|i| !i.trim().is_empty())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn exact_and_hnsw_find_the_same_close_pairs() {
        // 300 random directions in 16 dimensions, and a near copy of every tenth.
        let mut rng = fastrand::Rng::with_seed(7);
        let dim = 16;
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for i in 0..300 {
            let base: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
            rows.push(unit(&base));
            if i % 10 == 0 {
                let near: Vec<f32> = base.iter().map(|x| x + (rng.f32() - 0.5) * 0.01).collect();
                rows.push(unit(&near));
            }
        }
        let v = Vectors {
            ids: (1..=rows.len() as i64).collect(),
            dim,
            data: rows.concat(),
        };
        let mut p = Progress::hidden();
        let (_, exact_found) = exact(&v, 0.99, &mut p);
        assert_eq!(exact_found.len(), 30, "the 30 planted copies");
        let cfg = CosineConfig {
            ef_construction: 32,
            ef_search: 32,
            ..CosineConfig::default()
        };
        let (_, approx) = approximate(&v, 0.99, &cfg, &mut p).unwrap();
        let key = |f: &[(usize, usize, f32)]| f.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>();
        assert_eq!(key(&approx), key(&exact_found));
        let (_, again) = approximate(&v, 0.99, &cfg, &mut p).unwrap();
        assert_eq!(
            key(&again),
            key(&approx),
            "the same vectors give the same candidates"
        );
    }
}
