//! The dataset workbench's own tables (`crate::dataset` computes, this file reads and
//! writes): the run manifest (`dataset_runs`), quality flags (`quality_flags`), MinHash
//! signatures (`near_dup_signatures`, with the parameters they were made with in
//! `dataset_settings`) and near-duplicate cluster membership (`near_dup_members`).
//!
//! The workbench never changes pairs. Pairs are only ever appended, so "every pair with
//! `id <= max_pair_id`" is a consistent snapshot that needs no long read transaction.
//!
//! The shape other features build on (exports leave flagged pairs out, splits keep a
//! cluster together), kept stable:
//! - [`flagged_pair_ids`], [`quality_flags`], [`flagged_count`]: the latest quality run's
//!   flagged pairs, each with its flag names and score;
//! - [`cluster_members`] for a method ([`MINHASH`]; [`COSINE`] for embeddings): every
//!   pair in a cluster with its cluster's representative and its similarity to it;
//!   [`replace_cluster_members`] writes a method's clusters as a whole.

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The lexical method: MinHash over word shingles, verified by exact Jaccard.
pub const MINHASH: &str = "minhash";
/// The semantic method: cosine similarity of stored embeddings.
pub const COSINE: &str = "cosine";

/// One row of the run manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRun {
    /// Run id.
    pub id: i64,
    /// `quality`, `near_dups`, `coverage`.
    pub command: String,
    /// What it ran with (JSON).
    pub params: serde_json::Value,
    /// The snapshot: pairs with `id <= max_pair_id`.
    pub max_pair_id: i64,
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// When it started.
    pub started_at: String,
    /// When it finished; `None` while it runs or when it died.
    pub finished_at: Option<String>,
    /// The files it wrote, with their sizes and blake3 (JSON).
    pub outputs: Option<serde_json::Value>,
}

/// The snapshot a run reads: the largest pair id and the number of pairs up to it.
pub fn snapshot(conn: &Connection) -> Result<(i64, u64)> {
    let (max, n): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM pairs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((max, n as u64))
}

/// Records the start of a run; returns its id.
pub fn begin_run(
    conn: &Connection,
    command: &str,
    params: &serde_json::Value,
    max_pair_id: i64,
    pairs: u64,
    now: &str,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO dataset_runs (command, params, max_pair_id, pairs, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            command,
            serde_json::to_string(params)?,
            max_pair_id,
            pairs as i64,
            now
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Records the end of a run and the files it wrote.
pub fn finish_run(
    conn: &Connection,
    id: i64,
    outputs: &serde_json::Value,
    now: &str,
) -> Result<()> {
    conn.execute(
        "UPDATE dataset_runs SET finished_at = ?2, outputs = ?3 WHERE id = ?1",
        params![id, now, serde_json::to_string(outputs)?],
    )?;
    Ok(())
}

/// The latest finished run of `command`.
pub fn last_run(conn: &Connection, command: &str) -> Result<Option<DatasetRun>> {
    conn.query_row(
        "SELECT id, command, params, max_pair_id, pairs, started_at, finished_at, outputs
         FROM dataset_runs WHERE command = ?1 AND finished_at IS NOT NULL
         ORDER BY id DESC LIMIT 1",
        [command],
        |r| {
            let params: String = r.get(2)?;
            let outputs: Option<String> = r.get(7)?;
            Ok(DatasetRun {
                id: r.get(0)?,
                command: r.get(1)?,
                params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
                max_pair_id: r.get(3)?,
                pairs: r.get::<_, i64>(4)? as u64,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                outputs: outputs.and_then(|o| serde_json::from_str(&o).ok()),
            })
        },
    )
    .optional()
    .map_err(Into::into)
}

/// A pair as the workbench reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    /// Pair id (the order pairs were stored in).
    pub id: i64,
    /// Its key (blake3 of the normalised question and answer).
    pub key: crate::pair::PairKey,
    /// The question as first received.
    pub question: String,
    /// The answer as first received.
    pub answer: String,
    /// Indicator, when given.
    pub indicator: Option<String>,
    /// Category, when given.
    pub category: Option<String>,
    /// The agent that first delivered it.
    pub agent: String,
    /// Its other fields (a JSON object), when it has any.
    pub extra: Option<String>,
}

const PAIR_COLUMNS: &str = "id, key, question, answer, indicator, category, agent, extra";

fn pair_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PairRow> {
    let key = r.get_ref(1)?.as_blob()?;
    Ok(PairRow {
        id: r.get(0)?,
        key: crate::pair::PairKey::try_from(key).unwrap_or_default(),
        question: r.get(2)?,
        answer: r.get(3)?,
        indicator: r.get(4)?,
        category: r.get(5)?,
        agent: r.get(6)?,
        extra: r.get(7)?,
    })
}

/// Up to `limit` pairs with `after < id <= max_pair_id`, in id order: the workbench
/// reads its snapshot in chunks of these.
pub fn pairs_after(
    conn: &Connection,
    after: i64,
    max_pair_id: i64,
    limit: usize,
) -> Result<Vec<PairRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PAIR_COLUMNS} FROM pairs WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![after, max_pair_id, limit as i64], pair_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The pairs with these ids (those that exist), in the order given.
pub fn pairs_by_ids(conn: &Connection, ids: &[i64]) -> Result<Vec<PairRow>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {PAIR_COLUMNS} FROM pairs WHERE id = ?1"))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = stmt.query_row([id], pair_row).optional()? {
            out.push(row);
        }
    }
    Ok(out)
}

/// How many pairs of the snapshot carry one (indicator, category).
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorCount {
    /// The indicator as stored (`None` when unset).
    pub indicator: Option<String>,
    /// The category as stored.
    pub category: Option<String>,
    /// Pairs.
    pub pairs: u64,
}

/// Pairs per (indicator, category) in the snapshot, by indicator then category
/// (`None` sorts first).
pub fn indicator_counts(conn: &Connection, max_pair_id: i64) -> Result<Vec<IndicatorCount>> {
    let mut stmt = conn.prepare(
        "SELECT indicator, category, COUNT(*) FROM pairs WHERE id <= ?1
         GROUP BY indicator, category ORDER BY indicator, category",
    )?;
    let rows = stmt
        .query_map([max_pair_id], |r| {
            Ok(IndicatorCount {
                indicator: r.get(0)?,
                category: r.get(1)?,
                pairs: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A flagged pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityFlag {
    /// The pair.
    pub pair_id: i64,
    /// Its flags' names (`dataset::quality::Flag::name`), in the documented order.
    pub flags: Vec<String>,
    /// 0..1: 1 minus the weights of its flags, at least 0.
    pub score: f64,
}

/// Removes every quality flag (a quality run replaces them all, in its transaction).
pub fn clear_quality_flags(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM quality_flags", [])?;
    Ok(())
}

/// Stores one flagged pair. Call inside the transaction that cleared the flags.
pub fn insert_quality_flag(
    conn: &Connection,
    run_id: i64,
    pair_id: i64,
    flags: &[&str],
    score: f64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO quality_flags (pair_id, flags, score, run_id) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        pair_id,
        serde_json::to_string(flags)?,
        score,
        run_id
    ])?;
    Ok(())
}

/// Ids of the flagged pairs, ascending (the latest quality run's).
pub fn flagged_pair_ids(conn: &Connection) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT pair_id FROM quality_flags ORDER BY pair_id")?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// Every flagged pair with its flags and score, by pair id.
pub fn quality_flags(conn: &Connection) -> Result<Vec<QualityFlag>> {
    let mut stmt =
        conn.prepare("SELECT pair_id, flags, score FROM quality_flags ORDER BY pair_id")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let pair_id: i64 = r.get(0)?;
        let flags: String = r.get(1)?;
        out.push(QualityFlag {
            pair_id,
            flags: serde_json::from_str(&flags)
                .with_context(|| format!("quality_flags of pair {pair_id}"))?,
            score: r.get(2)?,
        });
    }
    Ok(out)
}

/// How many pairs are flagged (0 before the first quality run).
pub fn flagged_count(conn: &Connection) -> Result<u64> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM quality_flags", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// A setting of the workbench (`dataset_settings`).
pub fn setting(conn: &Connection, name: &str) -> Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM dataset_settings WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(Into::into)
}

/// Sets a workbench setting.
pub fn set_setting(conn: &Connection, name: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO dataset_settings (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// Removes every stored MinHash signature (their parameters changed).
pub fn clear_signatures(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM near_dup_signatures", [])?;
    Ok(())
}

/// The largest pair id that has a stored signature (0 when none): signatures are made
/// in id order, so every pair above it still needs one.
pub fn last_signed_pair(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(pair_id), 0) FROM near_dup_signatures",
        [],
        |r| r.get(0),
    )?)
}

/// Stores one pair's signature. Call inside an open transaction.
pub fn insert_signature(conn: &Connection, pair_id: i64, signature: &[u8]) -> Result<()> {
    conn.prepare_cached("INSERT INTO near_dup_signatures (pair_id, signature) VALUES (?1, ?2)")?
        .execute(params![pair_id, signature])?;
    Ok(())
}

/// Streams the stored signatures of pairs with `id <= max_pair_id`, in id order.
pub fn for_each_signature(
    conn: &Connection,
    max_pair_id: i64,
    f: &mut dyn FnMut(i64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT pair_id, signature FROM near_dup_signatures WHERE pair_id <= ?1 ORDER BY pair_id",
    )?;
    let mut rows = stmt.query([max_pair_id])?;
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(1)?.as_blob()?;
        f(r.get(0)?, blob)?;
    }
    Ok(())
}

/// A pair in a near-duplicate cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// The pair.
    pub pair_id: i64,
    /// Its cluster's representative (the cluster's lowest pair id; it is a member of its
    /// own cluster, with similarity 1).
    pub representative: i64,
    /// Its similarity to the representative (Jaccard for [`MINHASH`], cosine for
    /// [`COSINE`]).
    pub similarity: f64,
}

/// Replaces the clusters of `method` with `members` (every member of every cluster,
/// representatives included), in one transaction of its own.
pub fn replace_cluster_members(
    conn: &Connection,
    method: &str,
    run_id: i64,
    members: &[ClusterMember],
) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = replace_cluster_members_raw(conn, method, run_id, members);
    match result {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// [`replace_cluster_members`] inside the caller's open transaction.
pub fn replace_cluster_members_raw(
    conn: &Connection,
    method: &str,
    run_id: i64,
    members: &[ClusterMember],
) -> Result<()> {
    conn.execute("DELETE FROM near_dup_members WHERE method = ?1", [method])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO near_dup_members (method, pair_id, representative, similarity, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for m in members {
        stmt.execute(params![
            method,
            m.pair_id,
            m.representative,
            m.similarity,
            run_id
        ])?;
    }
    Ok(())
}

/// Every pair in a cluster of `method`, ordered by representative, then pair id. Pairs
/// in no cluster have no row.
pub fn cluster_members(conn: &Connection, method: &str) -> Result<Vec<ClusterMember>> {
    let mut stmt = conn.prepare(
        "SELECT pair_id, representative, similarity FROM near_dup_members
         WHERE method = ?1 ORDER BY representative, pair_id",
    )?;
    let rows = stmt
        .query_map([method], |r| {
            Ok(ClusterMember {
                pair_id: r.get(0)?,
                representative: r.get(1)?,
                similarity: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One indicator of the latest coverage report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageGap {
    /// The plan's name for it.
    pub indicator: String,
    /// Its category in the plan.
    pub category: String,
    /// Pairs wanted.
    pub target: u64,
    /// Pairs matched.
    pub pairs: u64,
    /// `max(0, target - pairs)`.
    pub gap: u64,
    /// Its place in the plan.
    pub position: u64,
}

/// Replaces the coverage gaps with a new report's, in one transaction.
pub fn replace_coverage_gaps(conn: &Connection, run_id: i64, gaps: &[CoverageGap]) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<()> {
        conn.execute("DELETE FROM coverage_gaps", [])?;
        let mut stmt = conn.prepare_cached(
            "INSERT INTO coverage_gaps (indicator, category, target, pairs, gap, position, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for g in gaps {
            stmt.execute(params![
                g.indicator,
                g.category,
                g.target as i64,
                g.pairs as i64,
                g.gap as i64,
                g.position as i64,
                run_id
            ])?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// The latest coverage report's indicators that still have a gap, largest gap first
/// (then plan order).
pub fn coverage_gaps(conn: &Connection) -> Result<Vec<CoverageGap>> {
    let mut stmt = conn.prepare(
        "SELECT indicator, category, target, pairs, gap, position FROM coverage_gaps
         WHERE gap > 0 ORDER BY gap DESC, position",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(CoverageGap {
                indicator: r.get(0)?,
                category: r.get(1)?,
                target: r.get::<_, i64>(2)? as u64,
                pairs: r.get::<_, i64>(3)? as u64,
                gap: r.get::<_, i64>(4)? as u64,
                position: r.get::<_, i64>(5)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(conn: &Connection, n: i64) {
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('t', 't', 't', 0, 'integrated', 'now')",
            [],
        )
        .unwrap();
        for i in 1..=n {
            conn.execute(
                "INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
                 VALUES (?1, 'q', 'a', 't', 1, 'now')",
                [i.to_le_bytes().to_vec()],
            )
            .unwrap();
        }
    }

    #[test]
    fn flags_round_trip_and_are_replaced_by_the_next_run() {
        let conn = crate::store::open_in_memory().unwrap();
        pairs(&conn, 5);
        let run = begin_run(&conn, "quality", &serde_json::json!({}), 5, 5, "t0").unwrap();
        insert_quality_flag(&conn, run, 4, &["short_answer", "no_sources"], 0.65).unwrap();
        insert_quality_flag(&conn, run, 2, &["truncated"], 0.7).unwrap();
        assert_eq!(flagged_pair_ids(&conn).unwrap(), vec![2, 4]);
        assert_eq!(flagged_count(&conn).unwrap(), 2);
        assert_eq!(
            quality_flags(&conn).unwrap()[1],
            QualityFlag {
                pair_id: 4,
                flags: vec!["short_answer".into(), "no_sources".into()],
                score: 0.65
            }
        );
        assert!(
            last_run(&conn, "quality").unwrap().is_none(),
            "not finished"
        );
        finish_run(&conn, run, &serde_json::json!([]), "t1").unwrap();
        assert_eq!(last_run(&conn, "quality").unwrap().unwrap().id, run);
        clear_quality_flags(&conn).unwrap();
        assert!(flagged_pair_ids(&conn).unwrap().is_empty());
    }

    #[test]
    fn cluster_membership_is_kept_per_method() {
        let conn = crate::store::open_in_memory().unwrap();
        pairs(&conn, 6);
        let run = begin_run(&conn, "near_dups", &serde_json::json!({}), 6, 6, "t0").unwrap();
        let m = |pair_id, representative, similarity| ClusterMember {
            pair_id,
            representative,
            similarity,
        };
        replace_cluster_members(&conn, MINHASH, run, &[m(5, 2, 0.9), m(2, 2, 1.0)]).unwrap();
        replace_cluster_members(&conn, COSINE, run, &[m(1, 1, 1.0), m(6, 1, 0.97)]).unwrap();
        assert_eq!(
            cluster_members(&conn, MINHASH).unwrap(),
            vec![m(2, 2, 1.0), m(5, 2, 0.9)]
        );
        // A new minhash run replaces only minhash's clusters.
        replace_cluster_members(&conn, MINHASH, run, &[m(3, 3, 1.0), m(4, 3, 0.85)]).unwrap();
        assert_eq!(
            cluster_members(&conn, MINHASH).unwrap(),
            vec![m(3, 3, 1.0), m(4, 3, 0.85)]
        );
        assert_eq!(cluster_members(&conn, COSINE).unwrap().len(), 2);
    }

    #[test]
    fn tasks_accept_the_workbench_kinds_after_the_migrations() {
        // Migration 3 listed the kinds in a CHECK constraint; a later migration dropped
        // it, so the workbench's kinds need no migration of their own.
        let conn = crate::store::open_in_memory().unwrap();
        conn.execute(
            "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind)
             VALUES ('q', 'zai', 1, 1, 'pending', 'now', 'quality')",
            [],
        )
        .unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'tasks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("'backfill'"), "{sql}");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
