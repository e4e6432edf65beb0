//! Writing pairs, and the key index that keeps them distinct.
//!
//! A pair's key is a random-looking blake3 digest. A unique B-tree index on it, updated
//! at every commit (a commit every 500 pairs), touches a different index page for
//! almost every pair: once the index outgrows 500 leaves, each commit writes ~2 MB of
//! index pages to the WAL, ~4 KB per pair, and the rate halved by a million pairs
//! (measured: BENCHMARKS.md). So distinctness is kept in two parts, like a two-level
//! log-structured merge:
//!
//! - **the tail**: keys of pairs stored since the last merge, held in memory by the one
//!   writer ([`PairSink`]) and written to `tail_chunks` as one row per commit (the
//!   commit's pair ids and keys in one blob, [`ENTRY_BYTES`] per pair): one statement
//!   per commit where a row per pair cost a tenth of the writer's time (BENCHMARKS.md,
//!   seventh sitting). A writer that starts reloads the tail from `tail_chunks`, and
//!   then from `pairs` itself beyond the last chunk's id (the watermark), so a key
//!   stored without its chunk is still found; see [`load_tail`];
//! - **the merged index** `pair_keys(key PRIMARY KEY, pair_id) WITHOUT ROWID`: every
//!   older key. The tail is merged into it in key order, in the transaction of a batch,
//!   once it holds a quarter of the merged keys (at least [`MERGE_MIN`], at most
//!   [`MERGE_MAX`]). A merge rewrites most of the index's leaves; because the tail
//!   grows with the index, each pair's share of that work stays the same however large
//!   the table gets.
//!
//! A pair is new when its key is in neither. The merged index is read only when its
//! Bloom filter ([`KeyFilter`], stored by each merge) says the key may be there, which
//! for a fresh key is almost never. The primary key of `pair_keys` is the
//! database's own guard: a duplicate that slipped past would fail the merge. The one
//! rule for callers: [`PairSink::before_commit`] just before every `COMMIT` of a
//! transaction that inserted pairs (it writes the chunk, and merges when due).

use crate::pair::{KeySet, Pair, PairKey};
use crate::store::key_filter::KeyFilter;
use anyhow::{Context, Result};
use rusqlite::{CachedStatement, Connection, params};

/// Appends one pair (no index on `key` is maintained here; see the module docs).
pub const INSERT_PAIR: &str = "INSERT INTO pairs
    (key, question, answer, indicator, category, agent, extra, file_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Appends one commit's tail entries (or, after a merge, the empty watermark row).
pub const INSERT_TAIL_CHUNK: &str = "INSERT INTO tail_chunks (last_id, entries) VALUES (?1, ?2)";

/// Whether a key is in the merged index.
pub const LOOKUP_KEY: &str = "SELECT 1 FROM pair_keys WHERE key = ?1";

/// Bytes per tail entry in a `tail_chunks` blob: the pair id (8 bytes, little-endian),
/// then its key (32 bytes).
pub const ENTRY_BYTES: usize = 40;

/// The tail's length from which, when it must grow, it grows at once to the length it
/// is merged at; smaller runs keep a small set.
const GROW_TO_MERGE_FROM: usize = 1 << 15;

/// The smallest tail that is merged (~8 MB of keys in memory).
pub const MERGE_MIN: usize = 200_000;
/// The largest tail kept unmerged (~40 MB of keys in memory): bounds memory however
/// large the table grows.
pub const MERGE_MAX: usize = 1_000_000;

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

/// The unmerged tail as stored: every entry of `tail_chunks`, then every pair beyond
/// the watermark (the largest `last_id`) read from `pairs` itself. Those are pairs
/// whose transaction committed without its chunk, which [`PairSink::before_commit`]
/// rules out; reading them keeps distinctness whole even so. Calls `each(pair id, key)`
/// once per entry; returns the largest pair id the tail covers (merged or not: the
/// watermark when the tail is empty), and the entries that came from `pairs`.
pub fn load_tail(conn: &Connection, mut each: impl FnMut(i64, PairKey)) -> Result<(i64, Vec<u8>)> {
    let mut mark = 0i64;
    let mut stmt = conn.prepare("SELECT last_id, entries FROM tail_chunks")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        mark = mark.max(r.get(0)?);
        let blob = r.get_ref(1)?.as_blob()?;
        anyhow::ensure!(
            blob.len() % ENTRY_BYTES == 0,
            "a key tail chunk is {} bytes, not a multiple of {ENTRY_BYTES}",
            blob.len()
        );
        for entry in blob.chunks_exact(ENTRY_BYTES) {
            let (id, key) = entry.split_at(8);
            each(
                i64::from_le_bytes(id.try_into().expect("8 bytes")),
                key.try_into().expect("32 bytes"),
            );
        }
    }
    let mut stray = Vec::new();
    let mut stmt = conn.prepare("SELECT id, key FROM pairs WHERE id > ?1 ORDER BY id")?;
    let mut rows = stmt.query([mark])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let key = PairKey::try_from(r.get_ref(1)?.as_blob()?)
            .with_context(|| format!("pair {id}: its key is not 32 bytes"))?;
        each(id, key);
        stray.extend_from_slice(&id.to_le_bytes());
        stray.extend_from_slice(&key);
        mark = id;
    }
    Ok((mark, stray))
}

/// The one writer's view of distinctness: the tail's keys in memory, how many keys are
/// merged and the filter over them, and the entries of the open transaction not yet
/// written to `tail_chunks`. Valid only while it matches the database: a writer whose
/// transaction rolled back must drop it (see `ingest::Writer::finish_carrying`).
#[derive(Debug, Default)]
pub struct PairSink {
    tail: Option<KeySet>,
    merged: usize,
    /// Every merged key (loaded with the tail; `None` while nothing is merged).
    filter: Option<KeyFilter>,
    /// Lookups in the merged index the filter let through; see [`PairSink::size_cache`].
    lookups: usize,
    /// Tail entries ([`ENTRY_BYTES`] each) stored since the last chunk was written.
    pending: Vec<u8>,
    /// The id of the last entry in `pending`.
    pending_last: i64,
}

impl PairSink {
    /// A sink that loads the tail on first use.
    pub fn new() -> PairSink {
        PairSink::default()
    }

    /// Keys stored and not merged yet (0 before the first use).
    pub fn tail_len(&self) -> usize {
        self.tail.as_ref().map_or(0, KeySet::len)
    }

    /// Whether the tail is large enough to merge: a quarter of the merged keys,
    /// clamped to [`MERGE_MIN`]..=[`MERGE_MAX`].
    pub fn merge_due(&self) -> bool {
        self.tail_len() >= self.merge_at()
    }

    /// The tail's length at which it is merged.
    fn merge_at(&self) -> usize {
        (self.merged / 4).clamp(MERGE_MIN, MERGE_MAX)
    }

    fn tail(&mut self, conn: &Connection) -> Result<&mut KeySet> {
        if self.tail.is_none() {
            let mut keys = KeySet::default();
            let (last, stray) = load_tail(conn, |_, key| {
                keys.insert(key);
            })?;
            if !stray.is_empty() {
                tracing::warn!(
                    "{} stored pairs had no entry in the key tail; taken from the pairs table",
                    stray.len() / ENTRY_BYTES
                );
                // Written with the next chunk.
                self.pending = stray;
                self.pending_last = last;
            }
            // Ids are dense (pairs are only appended), so the largest id less the tail
            // is the number of merged keys, without counting the index.
            let max: i64 =
                conn.query_row("SELECT COALESCE(MAX(id), 0) FROM pairs", [], |r| r.get(0))?;
            self.merged = (max.max(last) as usize).saturating_sub(keys.len());
            self.tail = Some(keys);
            self.size_cache(conn)?;
            if self.merged > 0 {
                self.filter = Some(match KeyFilter::load(conn, self.merged)? {
                    Some(filter) => filter,
                    None => {
                        let filter = KeyFilter::rebuild(conn, self.merged)?;
                        tracing::info!(
                            "key filter built from the {} keys of the merged index",
                            filter.len()
                        );
                        filter.store(conn, self.merged)?;
                        filter
                    }
                });
            }
        }
        Ok(self.tail.as_mut().expect("just loaded"))
    }

    /// Readies the check of a key that [`PairSink::insert`] will see a few pairs later
    /// (see [`KeyFilter::prefetch`]).
    pub fn prefetch(&self, key: &PairKey) {
        if let Some(filter) = &self.filter {
            filter.prefetch(key);
        }
    }

    /// Stores `pair` unless its key is stored; returns true when it was new. Call
    /// inside an open transaction (one transaction per pair would be ~100x slower), and
    /// [`PairSink::before_commit`] before committing it.
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
        // The index is read only when its filter says the key may be there: for a fresh
        // key, almost never (and never while nothing is merged).
        if self
            .filter
            .as_ref()
            .is_some_and(|f| f.may_contain(&pair.key))
        {
            self.lookups += 1;
            if self.lookups == LOOKUPS_FOR_CACHE {
                self.size_cache(conn)?;
            }
            if stmts.lookup.exists([&pair.key[..]])? {
                return Ok(false);
            }
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
        let id = conn.last_insert_rowid();
        self.pending.extend_from_slice(&id.to_le_bytes());
        self.pending.extend_from_slice(&pair.key);
        self.pending_last = id;
        let merge_at = self.merge_at();
        let tail = self.tail(conn)?;
        if tail.len() == tail.capacity() && tail.len() >= GROW_TO_MERGE_FROM {
            // From here on, room for the whole tail at once: each doubling moved every
            // key again into fresh pages (1.5% of the writer's time at 250,000 keys).
            tail.reserve(merge_at.saturating_sub(tail.len()));
        }
        tail.insert(pair.key);
        Ok(true)
    }

    /// Call inside the open transaction, just before its `COMMIT`: writes the tail
    /// entries of the pairs it stored as one `tail_chunks` row, and merges the tail
    /// when it is due.
    pub fn before_commit(&mut self, conn: &Connection) -> Result<bool> {
        if self.merge_due() {
            self.merge(conn).context("merging the key tail failed")?;
            Ok(true)
        } else {
            self.write_chunk(conn)?;
            Ok(false)
        }
    }

    fn write_chunk(&mut self, conn: &Connection) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        conn.prepare_cached(INSERT_TAIL_CHUNK)?
            .execute(params![self.pending_last, &self.pending[..]])
            .context("writing the key tail")?;
        self.pending.clear();
        Ok(())
    }

    /// Moves the tail into `pair_keys`, in key order, and leaves the watermark (the
    /// last merged id) as the only `tail_chunks` row. Call inside an open transaction
    /// (the writer merges in the transaction of the batch that made it due).
    pub fn merge(&mut self, conn: &Connection) -> Result<()> {
        self.write_chunk(conn)?;
        let mut entries = Vec::with_capacity(self.tail_len());
        let (last, _) = load_tail(conn, |id, key| entries.push((key, id)))?;
        entries.sort_unstable();
        {
            let mut insert =
                conn.prepare_cached("INSERT INTO pair_keys (key, pair_id) VALUES (?1, ?2)")?;
            for (key, id) in &entries {
                insert
                    .execute(params![&key[..], id])
                    .context("merging new pair keys into the key index")?;
            }
        }
        conn.prepare_cached("DELETE FROM tail_chunks")?
            .execute([])?;
        conn.prepare_cached(INSERT_TAIL_CHUNK)?
            .execute(params![last, &[] as &[u8]])?;
        self.merged += entries.len();
        let filter = match self.filter.take() {
            Some(mut filter) if filter.len() + entries.len() <= filter.capacity() => {
                for (key, _) in &entries {
                    filter.insert(key);
                }
                filter
            }
            // Past its capacity (or the first merge): a larger one, from the index.
            _ => KeyFilter::rebuild(conn, self.merged)?,
        };
        filter.store(conn, self.merged)?;
        self.filter = Some(filter);
        if let Some(tail) = &mut self.tail {
            tail.clear();
        }
        self.size_cache(conn)
    }

    /// Sizes the connection's page cache. A writer whose keys are fresh reads the merged
    /// index only for the filter's rare false positives, and works with
    /// [`CACHE_MIN_KIB`], which stays in the processor's caches: a quarter less of the
    /// writer's CPU than 64 MiB of fresh pages (BENCHMARKS.md, "The writer's side").
    /// Once [`LOOKUPS_FOR_CACHE`] keys went to the index (pairs stored before, sent
    /// again), the cache grows to hold it: [`CACHE_BYTES_PER_KEY`] per merged key, at
    /// most [`CACHE_MAX_KIB`] (the 64 MiB that `store::configure` gives every connection).
    fn size_cache(&self, conn: &Connection) -> Result<()> {
        let kib = if self.lookups >= LOOKUPS_FOR_CACHE {
            (self.merged as u64 * CACHE_BYTES_PER_KEY / 1024).clamp(CACHE_MIN_KIB, CACHE_MAX_KIB)
        } else {
            CACHE_MIN_KIB
        };
        conn.execute_batch(&format!("PRAGMA cache_size = -{kib}"))?;
        Ok(())
    }
}

/// Lookups in the merged index after which the writer's page cache grows to hold it.
pub const LOOKUPS_FOR_CACHE: usize = 1000;
/// Page cache per key of the merged index: a `pair_keys` entry is ~40 bytes, its
/// leaves about two-thirds full after merges, and a quarter more for the pages of the
/// tables being appended to.
pub const CACHE_BYTES_PER_KEY: u64 = 80;
/// The writer's page cache while it reads the index little (SQLite's own default).
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

    /// An in-memory database with one ledger row for the pairs to come from.
    struct Db {
        conn: Connection,
        file: i64,
    }

    impl Db {
        fn new() -> Db {
            let conn = crate::store::open_in_memory().unwrap();
            conn.execute(
                "INSERT INTO files (agent, name, source_path, size, status, started_at)
                 VALUES ('t', 't', 't', 0, 'partial', 'now')",
                [],
            )
            .unwrap();
            let file = conn.last_insert_rowid();
            Db { conn, file }
        }

        /// [`PairSink::insert`] of the pair asked `q`, as the writer calls it.
        fn put(&self, sink: &mut PairSink, q: &str) -> bool {
            let mut stmts = Statements::new(&self.conn).unwrap();
            sink.insert(&self.conn, &mut stmts, &pair(q), "t", self.file, "now")
                .unwrap()
        }
    }

    fn count_of(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn watermark(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT last_id FROM tail_chunks WHERE length(entries) = 0",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn new_once_across_tail_merge_and_a_fresh_sink() {
        let db = Db::new();
        let conn = &db.conn;
        let mut sink = PairSink::new();
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        assert!(put(&mut sink, "q1"));
        assert!(!put(&mut sink, "q1"), "in the tail");
        sink.before_commit(conn).unwrap();
        // The empty database's watermark, and the chunk of the "commit".
        assert_eq!(count_of(conn, "tail_chunks"), 2);
        sink.merge(conn).unwrap();
        assert_eq!(sink.tail_len(), 0);
        assert_eq!((count_of(conn, "tail_chunks"), watermark(conn)), (1, 1));
        assert!(!put(&mut sink, "q1"), "merged");
        assert!(put(&mut sink, "q2"));
        assert!(put(&mut sink, "q3"));
        sink.before_commit(conn).unwrap();
        // A new writer (after a crash, say) reloads the tail from tail_chunks.
        let mut fresh = PairSink::new();
        assert!(!put(&mut fresh, "q2"), "reloaded tail");
        assert!(!put(&mut fresh, "q3"), "reloaded tail");
        assert_eq!((fresh.tail_len(), fresh.merged), (2, 1));
        assert!(fresh.pending.is_empty(), "nothing stray");
        fresh.merge(conn).unwrap();
        assert_eq!(count_of(conn, "pair_keys"), 3);
        assert_eq!((count_of(conn, "tail_chunks"), watermark(conn)), (1, 3));
        assert_eq!(count(conn).unwrap(), 3);
    }

    #[test]
    fn a_pair_committed_without_its_chunk_is_still_distinct() {
        let db = Db::new();
        let conn = &db.conn;
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        let mut first = PairSink::new();
        assert!(put(&mut first, "q1"));
        first.before_commit(conn).unwrap();
        // Stored, and "committed" without before_commit: no chunk holds q2.
        assert!(put(&mut first, "q2"));
        let mut second = PairSink::new();
        assert!(
            !put(&mut second, "q2"),
            "found in pairs beyond the watermark"
        );
        assert!(!put(&mut second, "q1"), "found in its chunk");
        assert_eq!((second.tail_len(), second.merged), (2, 0));
        // The stray entry goes into the next chunk; a third writer finds it there.
        second.before_commit(conn).unwrap();
        let (last, stray) = load_tail(conn, |_, _| {}).unwrap();
        assert_eq!((last, stray.len()), (2, 0));
        second.merge(conn).unwrap();
        assert_eq!(count_of(conn, "pair_keys"), 2, "each key merged once");
    }

    #[test]
    fn each_merge_stores_the_key_filter_and_a_writer_rebuilds_one_that_does_not_match() {
        let db = Db::new();
        let conn = &db.conn;
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        let stamp = |conn: &Connection| -> Option<i64> {
            conn.query_row("SELECT keys FROM pair_key_filter", [], |r| r.get(0))
                .ok()
        };
        let mut first = PairSink::new();
        assert!(put(&mut first, "q1") && put(&mut first, "q2"));
        assert_eq!(stamp(conn), None, "nothing merged, no filter");
        first.merge(conn).unwrap();
        assert_eq!(stamp(conn), Some(2), "written by the merge");
        let merged_keys = [pair("q1").key, pair("q2").key];
        let stored = KeyFilter::load(conn, 2).unwrap().expect("stamped 2");
        assert!(merged_keys.iter().all(|k| stored.may_contain(k)));

        // A writer that starts uses it: merged keys are duplicates, a new one is new.
        let mut second = PairSink::new();
        assert!(!put(&mut second, "q1"));
        assert!(put(&mut second, "q3"));
        assert_eq!(second.filter.as_ref().map(KeyFilter::len), Some(2));
        second.merge(conn).unwrap();
        assert_eq!(stamp(conn), Some(3));
        assert!(
            KeyFilter::load(conn, 3)
                .unwrap()
                .expect("stamped 3")
                .may_contain(&pair("q3").key),
            "the merged key went into the stored filter"
        );

        // No filter (a database from before it) or a stamp that does not match: the
        // writer rebuilds it from the index and stores it.
        for damage in [
            "DELETE FROM pair_key_filter",
            "UPDATE pair_key_filter SET keys = 7, bits = zeroblob(64)",
        ] {
            conn.execute_batch(damage).unwrap();
            let mut next = PairSink::new();
            for q in ["q1", "q2", "q3"] {
                assert!(!put(&mut next, q), "{q} after {damage}");
            }
            assert!(put(&mut next, &format!("new after {damage}")));
            assert_eq!(stamp(conn), Some(3), "rebuilt after {damage}");
            assert_eq!(next.filter.as_ref().map(KeyFilter::len), Some(3));
        }
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
                ..PairSink::default()
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
