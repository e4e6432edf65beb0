//! Writing pairs, and the key index that keeps them distinct.
//!
//! A pair's key is a random-looking blake3 digest. A unique B-tree index on it, updated
//! at every commit (a commit every 500 pairs), touches a different index page for
//! almost every pair: once the index outgrows 500 leaves, each commit writes ~2 MB of
//! index pages to the WAL, ~4 KB per pair, and the rate halves by a million pairs
//! (measured: BENCHMARKS.md). So the index is split in two:
//!
//! - **the tail**: pairs appended since the last merge (`pairs.id > key_merge.merged_upto`).
//!   They are written as plain appends (sequential pages); their keys are held in
//!   memory by the one writer ([`PairSink`]), bounded by [`MERGE_EVERY`] plus a batch,
//!   and reloaded from `pairs` when a writer starts (e.g. after a crash);
//! - **the merged index** `pair_keys(key PRIMARY KEY, pair_id) WITHOUT ROWID`: every
//!   older key. The tail is merged into it in key order, in the same transaction as a
//!   batch, when it reaches [`MERGE_EVERY`] keys and whenever a writer finishes, so
//!   each index page is written about once per merge instead of once per commit.
//!
//! A pair is new when its key is in neither. The primary key of `pair_keys` is the
//! database's own guard: a duplicate that slipped past would fail the merge.

use crate::pair::{Pair, PairKey};
use anyhow::{Context, Result};
use rusqlite::{CachedStatement, Connection, OptionalExtension, params};
use std::collections::HashSet;

/// Appends one pair (no index on `key` is maintained here; see the module docs).
pub const INSERT_PAIR: &str = "INSERT INTO pairs
    (key, question, answer, indicator, category, agent, extra, file_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Whether a key is in the merged index.
pub const LOOKUP_KEY: &str = "SELECT 1 FROM pair_keys WHERE key = ?1";

/// Adds one key to the merged index (the bare-insert benchmark's second statement).
pub const INSERT_KEY: &str = "INSERT INTO pair_keys (key, pair_id) VALUES (?1, ?2)";

/// The tail is merged into `pair_keys` once it holds this many keys (~8 MB of memory).
/// A merge rewrites most leaves of the index, so the larger the tail, the cheaper each
/// pair's share: at a million pairs stored, 200,000 ran 11% faster than 50,000.
pub const MERGE_EVERY: usize = 200_000;

/// The statements [`PairSink::insert`] uses, prepared once per file.
pub struct Statements<'c> {
    lookup: CachedStatement<'c>,
    insert: CachedStatement<'c>,
}

impl<'c> Statements<'c> {
    /// Prepares (or fetches from the cache) the lookup and the append.
    pub fn new(conn: &'c Connection) -> Result<Statements<'c>> {
        Ok(Statements {
            lookup: conn.prepare_cached(LOOKUP_KEY)?,
            insert: conn.prepare_cached(INSERT_PAIR)?,
        })
    }
}

/// The one writer's view of the key index: the tail's keys, in memory.
#[derive(Debug, Default)]
pub struct PairSink {
    tail: Option<HashSet<PairKey>>,
}

impl PairSink {
    /// A sink that loads the tail on first use.
    pub fn new() -> PairSink {
        PairSink::default()
    }

    /// Keys appended and not merged yet.
    pub fn tail_len(&self) -> usize {
        self.tail.as_ref().map_or(0, HashSet::len)
    }

    fn tail(&mut self, conn: &Connection) -> Result<&mut HashSet<PairKey>> {
        if self.tail.is_none() {
            let merged = merged_upto(conn)?;
            let mut stmt = conn.prepare("SELECT key FROM pairs WHERE id > ?1")?;
            let mut keys = HashSet::new();
            let mut rows = stmt.query([merged])?;
            while let Some(r) = rows.next()? {
                let key: Vec<u8> = r.get(0)?;
                keys.insert(
                    PairKey::try_from(key.as_slice()).context("a pair key is not 32 bytes")?,
                );
            }
            self.tail = Some(keys);
        }
        Ok(self.tail.as_mut().expect("just loaded"))
    }

    /// Appends `pair` unless its key is stored; returns true when it was new. Call
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
        if stmts.lookup.exists([&pair.key[..]])? {
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
        self.tail(conn)?.insert(pair.key);
        Ok(true)
    }

    /// Moves the tail into `pair_keys`, in key order. Call inside the transaction that
    /// commits the tail's last pairs, so the index and the marker move together.
    pub fn merge(&mut self, conn: &Connection) -> Result<()> {
        let merged = merged_upto(conn)?;
        let last: Option<i64> = conn.query_row("SELECT MAX(id) FROM pairs", [], |r| r.get(0))?;
        let Some(last) = last.filter(|&l| l > merged) else {
            return Ok(());
        };
        conn.prepare_cached(
            "INSERT INTO pair_keys (key, pair_id)
             SELECT key, id FROM pairs WHERE id > ?1 AND id <= ?2 ORDER BY key",
        )?
        .execute([merged, last])
        .context("merging new pair keys into the key index")?;
        conn.prepare_cached("UPDATE key_merge SET merged_upto = ?1")?
            .execute([last])?;
        if let Some(tail) = &mut self.tail {
            tail.clear();
        }
        Ok(())
    }
}

fn merged_upto(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row("SELECT merged_upto FROM key_merge", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

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

    #[test]
    fn new_once_across_tail_merge_and_a_fresh_sink() {
        let conn = crate::store::open_in_memory().unwrap();
        let f = file(&conn);
        let mut sink = PairSink::new();
        let mut stmts = Statements::new(&conn).unwrap();
        assert!(
            sink.insert(&conn, &mut stmts, &pair("q1"), "t", f, "now")
                .unwrap()
        );
        assert!(
            !sink
                .insert(&conn, &mut stmts, &pair("q1"), "t", f, "now")
                .unwrap(),
            "in the tail"
        );
        sink.merge(&conn).unwrap();
        assert_eq!(sink.tail_len(), 0);
        assert!(
            !sink
                .insert(&conn, &mut stmts, &pair("q1"), "t", f, "now")
                .unwrap(),
            "merged"
        );
        assert!(
            sink.insert(&conn, &mut stmts, &pair("q2"), "t", f, "now")
                .unwrap()
        );
        // A new writer (after a crash, say) reloads the unmerged tail from the table.
        let mut fresh = PairSink::new();
        assert!(
            !fresh
                .insert(&conn, &mut stmts, &pair("q2"), "t", f, "now")
                .unwrap(),
            "reloaded tail"
        );
        assert_eq!(fresh.tail_len(), 1);
        fresh.merge(&conn).unwrap();
        let keys: i64 = conn
            .query_row("SELECT COUNT(*) FROM pair_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 2);
        assert_eq!(count(&conn).unwrap(), 2);
    }
}
