//! Writing pairs. One statement does the deduplication: `INSERT OR IGNORE` against
//! the unique key, and the number of changed rows says whether the pair was new.
//! The benchmark's "bare insert" uses this same statement, so the ratio it reports
//! is the pipeline's overhead and nothing else.

use crate::pair::Pair;
use anyhow::Result;
use rusqlite::{CachedStatement, Connection, Statement, params};

/// The statement every pair goes through.
pub const INSERT_PAIR: &str = "INSERT OR IGNORE INTO pairs
    (key, question, answer, indicator, category, agent, extra, file_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The prepared [`INSERT_PAIR`], to reuse across a file's pairs.
pub fn insert_statement(conn: &Connection) -> Result<CachedStatement<'_>> {
    Ok(conn.prepare_cached(INSERT_PAIR)?)
}

/// Inserts `pair` unless its key is stored; returns true when it was new.
/// Call inside an open transaction: one transaction per pair would be ~100x slower.
pub fn insert(
    stmt: &mut Statement<'_>,
    pair: &Pair,
    agent: &str,
    file_id: i64,
    now: &str,
) -> Result<bool> {
    let changed = stmt.execute(params![
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
    Ok(changed == 1)
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
