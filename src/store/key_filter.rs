//! A Bloom filter over the merged keys (the index `pair_keys` and its runs,
//! `pair_key_runs`: `store::pairs`), so that the writer looks a key up in them only when
//! the filter says it may be there.
//!
//! A fresh pair's key is in neither the tail nor the index, and without the filter
//! proving that took a B-tree descent per pair: with a million keys merged, a quarter
//! of the writer's time, and a page cache the size of the index to keep it from the
//! disk (BENCHMARKS.md, ninth sitting). The filter answers "not there" for all but a
//! fraction of a percent of fresh keys; "maybe" still goes to the index, so a filter
//! can make the writer slower but never wrong, as long as it holds every merged key.
//!
//! That is kept by one rule: only [`crate::store::pairs::PairSink::merge`] adds keys to
//! `pair_keys` or `pair_key_runs`, and it writes the filter (the row of
//! `pair_key_filter`) in the same transaction, stamped with the number of merged keys it
//! covers (a fold of the runs into the index moves keys without changing that set).
//! A writer that starts uses the stored filter only when the stamp equals the merged
//! keys it counts; otherwise (a database older than the filter, or a stamp that does not
//! match) it rebuilds the filter from the merged keys and stores it.
//!
//! The layout is a blocked Bloom filter: the key (a blake3 digest, so its bytes are
//! already uniform) picks one 512-bit block, a cache line, with its first 8 bytes, and
//! [`PROBES`] bits inside the block with the next 9 bytes. A lookup is one cache miss.

use crate::huge_pages::HugePages;
use crate::pair::PairKey;
use allocator_api2::vec::Vec as TableVec;
use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

/// Bits of filter per key at capacity; the filter is rebuilt larger beyond it.
pub const BITS_PER_KEY: usize = 12;
/// Bits set per key, all in the key's block.
pub const PROBES: usize = 8;
/// u64 words per block: 512 bits, one cache line.
const WORDS: usize = 8;
const BLOCK_BITS: usize = WORDS * 64;

/// One 512-bit block, aligned to a cache line so that a key's check reads one line.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(align(64))]
struct Block([u64; WORDS]);

/// The filter: blocks of 512 bits, a power of two of them, on huge pages when large
/// ([`crate::huge_pages`]: each lookup lands in any block).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFilter {
    blocks: TableVec<Block, HugePages>,
    /// Keys added (with repeats, if any were added twice).
    keys: usize,
}

impl KeyFilter {
    /// An empty filter with room for twice `keys` before it reaches capacity, so that
    /// it is rebuilt once per doubling of the index.
    pub fn for_keys(keys: usize) -> KeyFilter {
        let blocks = (2 * keys.max(1) * BITS_PER_KEY)
            .div_ceil(BLOCK_BITS)
            .next_power_of_two();
        let mut zeroed = TableVec::with_capacity_in(blocks, HugePages);
        zeroed.resize(blocks, Block([0; WORDS]));
        KeyFilter {
            blocks: zeroed,
            keys: 0,
        }
    }

    /// Keys it takes before false positives pass what [`BITS_PER_KEY`] promises.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK_BITS / BITS_PER_KEY
    }

    /// Keys added so far.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether no key was added.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    fn position(&self, key: &PairKey) -> (usize, u128) {
        let block = u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) as usize
            & (self.blocks.len() - 1);
        let mut probes = [0u8; 16];
        probes.copy_from_slice(&key[8..24]);
        (block, u128::from_le_bytes(probes))
    }

    /// Adds a key.
    pub fn insert(&mut self, key: &PairKey) {
        let (block, mut probes) = self.position(key);
        let block = &mut self.blocks[block].0;
        for _ in 0..PROBES {
            let bit = (probes & (BLOCK_BITS as u128 - 1)) as usize;
            block[bit / 64] |= 1 << (bit % 64);
            probes >>= 9;
        }
        self.keys += 1;
    }

    /// Starts loading the key's block into the processor's cache, for a
    /// [`KeyFilter::may_contain`] a little later: a filter of a million keys is larger
    /// than the cache, and the writer asking for each key in turn waited for memory
    /// (4% of its time; BENCHMARKS.md, ninth sitting).
    pub fn prefetch(&self, key: &PairKey) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let (block, _) = self.position(key);
            // SAFETY: a prefetch is only a hint: it never faults and changes no memory,
            // and SSE, which it needs, is part of every x86_64 processor.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.blocks[block].0.as_ptr().cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// False when the key was certainly never added; true when it may have been.
    pub fn may_contain(&self, key: &PairKey) -> bool {
        let (block, mut probes) = self.position(key);
        let block = &self.blocks[block].0;
        for _ in 0..PROBES {
            let bit = (probes & (BLOCK_BITS as u128 - 1)) as usize;
            if block[bit / 64] & (1 << (bit % 64)) == 0 {
                return false;
            }
            probes >>= 9;
        }
        true
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.blocks.len() * BLOCK_BITS / 8);
        for word in self.blocks.iter().flat_map(|b| b.0) {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    fn from_bytes(bytes: &[u8], keys: usize) -> Option<KeyFilter> {
        let block_bytes = BLOCK_BITS / 8;
        let blocks = bytes.len() / block_bytes;
        if !bytes.len().is_multiple_of(block_bytes) || !blocks.is_power_of_two() {
            return None;
        }
        let mut filter = TableVec::with_capacity_in(blocks, HugePages);
        filter.extend(bytes.chunks_exact(block_bytes).map(|block| {
            let mut words = [0u64; WORDS];
            for (word, b) in words.iter_mut().zip(block.chunks_exact(8)) {
                *word = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            Block(words)
        }));
        Some(KeyFilter {
            blocks: filter,
            keys,
        })
    }

    /// The filter of every merged key (`pair_keys` and its runs, `pair_key_runs`), read
    /// from the tables themselves, sized for
    /// `merged` keys (the caller's count; a wrong one costs false positives, never a
    /// key) with room to grow to twice as many. One pass over the index: counting it
    /// first would read every leaf twice.
    pub fn rebuild(conn: &Connection, merged: usize) -> Result<KeyFilter> {
        let mut filter = KeyFilter::for_keys(merged);
        let mut stmt = conn.prepare("SELECT key FROM pair_keys")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key: PairKey = row
                .get_ref(0)?
                .as_blob()?
                .try_into()
                .context("a key in pair_keys is not 32 bytes")?;
            filter.insert(&key);
        }
        crate::store::pairs::for_each_run_entry(conn, |_, key| filter.insert(&key))?;
        Ok(filter)
    }

    /// The stored filter, when it is stamped with `merged` keys (the merged keys the
    /// writer counts); `None` when there is none or it covers another number of keys.
    pub fn load(conn: &Connection, merged: usize) -> Result<Option<KeyFilter>> {
        // Built from the blob as SQLite holds it: no copy of a filter that is tens of MB
        // at ten million keys.
        let filter = conn
            .query_row(
                "SELECT bits FROM pair_key_filter WHERE id = 1 AND keys = ?1",
                [merged as i64],
                |r| Ok(KeyFilter::from_bytes(r.get_ref(0)?.as_blob()?, merged)),
            )
            .optional()
            .context("reading the key filter")?;
        Ok(filter.flatten())
    }

    /// Stores the filter stamped with `merged`, the number of merged keys it covers.
    /// Call in the transaction that made `pair_keys` and its runs hold them.
    pub fn store(&self, conn: &Connection, merged: usize) -> Result<()> {
        conn.prepare_cached(
            "INSERT INTO pair_key_filter (id, keys, bits) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET keys = excluded.keys, bits = excluded.bits",
        )?
        .execute(params![merged as i64, self.to_bytes()])
        .context("storing the key filter")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> PairKey {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn every_added_key_is_found_and_few_others_are() {
        let mut filter = KeyFilter::for_keys(50_000);
        assert!(filter.capacity() >= 100_000);
        let cap = filter.capacity() as u64;
        for i in 0..cap {
            filter.insert(&key(i));
        }
        assert_eq!(filter.len() as u64, cap);
        assert!(
            (0..cap).all(|i| filter.may_contain(&key(i))),
            "no false negative"
        );
        let others = 200_000u64;
        let positives = (cap..cap + others)
            .filter(|i| filter.may_contain(&key(*i)))
            .count();
        let rate = positives as f64 / others as f64;
        // At capacity, 12 bits per key and 8 probes in a 512-bit block: 0.40% measured.
        assert!(rate < 0.01, "false positive rate {rate} at capacity");
        assert!(
            positives > 0,
            "a full filter says maybe to some keys never added"
        );
    }

    #[test]
    fn an_empty_filter_contains_nothing_and_sizes_are_powers_of_two() {
        let filter = KeyFilter::for_keys(0);
        assert!(filter.is_empty());
        assert!(!filter.may_contain(&key(1)));
        for keys in [0, 1, 1000, 200_000, 1_234_567] {
            let filter = KeyFilter::for_keys(keys);
            assert!(filter.blocks.len().is_power_of_two());
            assert!(filter.capacity() >= 2 * keys, "{keys}");
        }
    }

    #[test]
    fn the_stored_filter_is_used_only_with_its_stamp() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::configure(&conn).unwrap();
        crate::store::migrations::migrate(&conn).unwrap();
        assert_eq!(KeyFilter::load(&conn, 0).unwrap(), None, "nothing stored");
        let mut filter = KeyFilter::for_keys(10);
        filter.insert(&key(7));
        filter.store(&conn, 1).unwrap();
        let loaded = KeyFilter::load(&conn, 1).unwrap().expect("stamped 1");
        assert_eq!(loaded, filter);
        assert!(loaded.may_contain(&key(7)));
        assert_eq!(KeyFilter::load(&conn, 2).unwrap(), None, "stamp differs");
        filter.insert(&key(8));
        filter.store(&conn, 2).unwrap();
        assert_eq!(KeyFilter::load(&conn, 2).unwrap(), Some(filter), "replaced");
    }

    #[test]
    fn a_rebuilt_filter_holds_every_merged_key_of_the_index_and_its_runs() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::configure(&conn).unwrap();
        crate::store::migrations::migrate(&conn).unwrap();
        for i in (0..1000).filter(|i| i % 3 == 0) {
            conn.execute(
                "INSERT INTO pair_keys (key, pair_id) VALUES (?1, ?2)",
                params![&key(i)[..], i as i64],
            )
            .unwrap();
        }
        for run in 1..=2 {
            let mut entries: Vec<(PairKey, i64)> = (0..1000)
                .filter(|i| i % 3 == run)
                .map(|i| (key(i), i as i64))
                .collect();
            entries.sort_unstable();
            crate::store::pairs::write_run(&conn, run as i64, &entries).unwrap();
        }
        let filter = KeyFilter::rebuild(&conn, 1000).unwrap();
        assert_eq!(filter.len(), 1000);
        assert!(filter.capacity() >= 2000);
        assert!((0..1000).all(|i| filter.may_contain(&key(i))));
    }
}
