//! Writing pairs, and the key index that keeps them distinct.
//!
//! A pair's key is a random-looking blake3 digest. A unique B-tree index on it, updated
//! at every commit (a commit every 500 pairs), touches a different index page for
//! almost every pair: once the index outgrows 500 leaves, each commit writes ~2 MB of
//! index pages to the WAL, ~4 KB per pair, and the rate halved by a million pairs
//! (measured: BENCHMARKS.md). So distinctness is kept in two parts, like a two-level
//! log-structured merge:
//!
//! - **the tail**: keys of pairs stored since the last merge, appended to `tail_keys`
//!   (in id order, so each commit writes only the pages at its end) and held in memory
//!   by the one writer ([`PairSink`]), which reloads them from `tail_keys` when it
//!   starts;
//! - **the merged index** `pair_keys(key PRIMARY KEY, pair_id) WITHOUT ROWID`: every
//!   older key. The tail is merged into it in key order, in the transaction of a batch,
//!   once it holds a quarter of the merged keys (at least [`MERGE_MIN`], at most
//!   [`MERGE_MAX`]). A merge rewrites most of the index's leaves; because the tail
//!   grows with the index, each pair's share of that work stays the same however large
//!   the table gets.
//!
//! A pair is new when its key is in neither. The primary key of `pair_keys` is the
//! database's own guard: a duplicate that slipped past would fail the merge.

use crate::pair::{Pair, PairKey};
use anyhow::{Context, Result};
use rusqlite::{CachedStatement, Connection, params};
use std::collections::HashSet;

/// Appends one pair (no index on `key` is maintained here; see the module docs).
pub const INSERT_PAIR: &str = "INSERT INTO pairs
    (key, question, answer, indicator, category, agent, extra, file_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Appends a new pair's key to the tail.
pub const INSERT_TAIL_KEY: &str = "INSERT INTO tail_keys (pair_id, key) VALUES (?1, ?2)";

/// Whether a key is in the merged index.
pub const LOOKUP_KEY: &str = "SELECT 1 FROM pair_keys WHERE key = ?1";

/// The smallest tail that is merged (~8 MB of keys in memory).
pub const MERGE_MIN: usize = 200_000;
/// The largest tail kept unmerged (~40 MB of keys in memory): bounds memory however
/// large the table grows.
pub const MERGE_MAX: usize = 1_000_000;

/// The statements [`PairSink::insert`] uses, prepared once per file.
pub struct Statements<'c> {
    lookup: CachedStatement<'c>,
    insert: CachedStatement<'c>,
    tail: CachedStatement<'c>,
}

impl<'c> Statements<'c> {
    /// Prepares (or fetches from the cache) the lookup and the appends.
    pub fn new(conn: &'c Connection) -> Result<Statements<'c>> {
        Ok(Statements {
            lookup: conn.prepare_cached(LOOKUP_KEY)?,
            insert: conn.prepare_cached(INSERT_PAIR)?,
            tail: conn.prepare_cached(INSERT_TAIL_KEY)?,
        })
    }
}

/// The one writer's view of distinctness: the tail's keys in memory, and how many keys
/// are merged. Valid only while it matches the database: a writer whose transaction
/// rolled back must drop it (see `ingest::Writer::finish_keeping_sink`).
#[derive(Debug, Default)]
pub struct PairSink {
    tail: Option<HashSet<PairKey>>,
    merged: usize,
}

impl PairSink {
    /// A sink that loads the tail on first use.
    pub fn new() -> PairSink {
        PairSink::default()
    }

    /// Keys stored and not merged yet (0 before the first use).
    pub fn tail_len(&self) -> usize {
        self.tail.as_ref().map_or(0, HashSet::len)
    }

    /// Whether the tail is large enough to merge: a quarter of the merged keys,
    /// clamped to [`MERGE_MIN`]..=[`MERGE_MAX`].
    pub fn merge_due(&self) -> bool {
        self.tail_len() >= (self.merged / 4).clamp(MERGE_MIN, MERGE_MAX)
    }

    fn tail(&mut self, conn: &Connection) -> Result<&mut HashSet<PairKey>> {
        if self.tail.is_none() {
            let mut stmt = conn.prepare("SELECT key FROM tail_keys")?;
            let mut keys = HashSet::new();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let key: Vec<u8> = r.get(0)?;
                keys.insert(
                    PairKey::try_from(key.as_slice()).context("a pair key is not 32 bytes")?,
                );
            }
            // Ids are dense (pairs are only appended), so the largest id less the tail
            // is the number of merged keys, without counting the index.
            let last: i64 =
                conn.query_row("SELECT COALESCE(MAX(id), 0) FROM pairs", [], |r| r.get(0))?;
            self.merged = (last as usize).saturating_sub(keys.len());
            self.tail = Some(keys);
            self.size_cache(conn)?;
        }
        Ok(self.tail.as_mut().expect("just loaded"))
    }

    /// Stores `pair` unless its key is stored; returns true when it was new. Call
    /// inside an open transaction: one transaction per pair would be ~100x slower.
    pub fn insert(
        &mut self,
        conn: &Connection,
        stmts: &mut Statements<'_>,
        pair: &Pair,
        agent: &str,
        file_id: i64,
        now: &str,
    ) -> Result<bool> {
        if self.tail(conn)?.contains(&pair.key) {
            return Ok(false);
        }
        // Nothing merged yet: the merged index is empty, and a lookup in it (a B-tree
        // descent and a statement step per pair) would only ever say no.
        if self.merged > 0 && stmts.lookup.exists([&pair.key[..]])? {
            return Ok(false);
        }
        stmts.insert.execute(params![
            &pair.key[..],
            pair.question,
            pair.answer,
            pair.indicator,
            pair.category,
            agent,
            pair.extra,
            file_id,
            now,
        ])?;
        stmts
            .tail
            .execute(params![conn.last_insert_rowid(), &pair.key[..]])?;
        self.tail(conn)?.insert(pair.key);
        Ok(true)
    }

    /// Moves the tail into `pair_keys`, in key order. Call inside an open transaction
    /// (the writer merges in the transaction of the batch that made it due).
    pub fn merge(&mut self, conn: &Connection) -> Result<()> {
        let n = conn
            .prepare_cached(
                "INSERT INTO pair_keys (key, pair_id) SELECT key, pair_id FROM tail_keys ORDER BY key",
            )?
            .execute([])
            .context("merging new pair keys into the key index")?;
        conn.prepare_cached("DELETE FROM tail_keys")?.execute([])?;
        self.merged += n;
        if let Some(tail) = &mut self.tail {
            tail.clear();
        }
        self.size_cache(conn)
    }

    /// Sizes the connection's page cache to the merged index, the one structure the
    /// writer reads at random (one lookup per pair): [`CACHE_BYTES_PER_KEY`] per merged
    /// key, at least [`CACHE_MIN_KIB`] and at most [`CACHE_MAX_KIB`] (the 64 MiB that
    /// `store::configure` gives every connection). A writer on a young database works
    /// with the small cache, which stays in the processor's caches: a quarter less of
    /// the writer's CPU than 64 MiB of fresh pages (BENCHMARKS.md, "The writer's side").
    fn size_cache(&self, conn: &Connection) -> Result<()> {
        let kib =
            (self.merged as u64 * CACHE_BYTES_PER_KEY / 1024).clamp(CACHE_MIN_KIB, CACHE_MAX_KIB);
        conn.execute_batch(&format!("PRAGMA cache_size = -{kib}"))?;
        Ok(())
    }
}

/// Page cache per key of the merged index: a `pair_keys` entry is ~40 bytes, its
/// leaves about two-thirds full after merges, and a quarter more for the pages of the
/// tables being appended to.
pub const CACHE_BYTES_PER_KEY: u64 = 80;
/// The writer's page cache while little or nothing is merged (SQLite's own default).
pub const CACHE_MIN_KIB: u64 = 2000;
/// The writer's page cache at most, as `store::configure` sets for every connection.
pub const CACHE_MAX_KIB: u64 = 65536;

/// Number of distinct pairs stored.
pub fn count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM pairs", [], |r| r.get::<_, i64>(0))? as u64)
}

/// Pairs first stored at or after `from` and at or before `to` (timestamps in the
/// clock's format, which sort as text): what a session integrated.
pub fn count_created_between(conn: &Connection, from: &str, to: &str) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM pairs WHERE created_at >= ?1 AND created_at <= ?2",
        params![from, to],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Pairs first stored at or after `from`, counted by the first `prefix` characters of
/// their timestamp (13: by hour, 15: by ten minutes, 16: by minute), in time order: the
/// web faucet's growth chart.
pub fn created_since_by(
    conn: &Connection,
    from: &str,
    prefix: usize,
) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(created_at, 1, ?2) AS t, COUNT(*) FROM pairs
         WHERE created_at >= ?1 GROUP BY t ORDER BY t",
    )?;
    let rows = stmt
        .query_map(params![from, prefix as i64], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(q: &str) -> Pair {
        Pair {
            key: crate::pair::pair_key(q, "a"),
            question: q.to_string(),
            answer: "a".to_string(),
            indicator: None,
            category: None,
            extra: None,
        }
    }

    fn file(conn: &Connection) -> i64 {
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('t', 't', 't', 0, 'partial', 'now')",
            [],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    fn count_of(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn new_once_across_tail_merge_and_a_fresh_sink() {
        let conn = crate::store::open_in_memory().unwrap();
        let f = file(&conn);
        let mut sink = PairSink::new();
        let mut stmts = Statements::new(&conn).unwrap();
        let mut put = |sink: &mut PairSink, q: &str| {
            sink.insert(&conn, &mut stmts, &pair(q), "t", f, "now")
                .unwrap()
        };
        assert!(put(&mut sink, "q1"));
        assert!(!put(&mut sink, "q1"), "in the tail");
        sink.merge(&conn).unwrap();
        assert_eq!(sink.tail_len(), 0);
        assert!(!put(&mut sink, "q1"), "merged");
        assert!(put(&mut sink, "q2"));
        // A new writer (after a crash, say) reloads the tail from tail_keys.
        let mut fresh = PairSink::new();
        assert!(!put(&mut fresh, "q2"), "reloaded tail");
        assert_eq!((fresh.tail_len(), fresh.merged), (1, 1));
        fresh.merge(&conn).unwrap();
        assert_eq!(count_of(&conn, "pair_keys"), 2);
        assert_eq!(count_of(&conn, "tail_keys"), 0);
        assert_eq!(count(&conn).unwrap(), 2);
    }

    #[test]
    fn the_tail_grows_with_the_index_within_bounds() {
        let due = |merged, tail: u64| {
            PairSink {
                tail: Some(
                    (0..tail)
                        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
                        .collect(),
                ),
                merged,
            }
            .merge_due()
        };
        assert!(!due(0, MERGE_MIN as u64 - 1));
        assert!(due(0, MERGE_MIN as u64));
        assert!(!due(4_000_000, 999_999), "a quarter of 4M");
        assert!(due(4_000_000, 1_000_000));
        assert!(due(40_000_000, MERGE_MAX as u64), "capped");
    }
}
