//! Other SQLite databases, read as sources of pairs (`engine::import_db`): recognising
//! one by its header, opening it read-only, listing its tables and columns, reading a
//! table's rows in rowid order after a given rowid. Also the one writer of such a
//! database this program has: [`create_legacy`], the seeds' production layout, for
//! `perpetual generate --db`, tests and benchmarks.

use anyhow::{Context, Result, bail};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, params_from_iter};
use std::path::Path;

/// The first 16 bytes of every SQLite 3 database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether `bytes` (a file's first bytes) begin like an SQLite database.
pub fn has_header(bytes: &[u8]) -> bool {
    bytes.starts_with(HEADER)
}

/// Whether the file at `path` begins with the SQLite header (false when unreadable).
pub fn is_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && has_header(&head)
}

/// Opens a source database read-only. `immutable`: the file is a finished drop that
/// nothing writes, so SQLite takes no locks and creates no `-wal`/`-shm` beside it (a
/// `-wal` beside it would not be read either).
pub fn open(path: &Path, immutable: bool) -> Result<Connection> {
    let conn = if immutable {
        let uri = format!(
            "file:{}?mode=ro&immutable=1",
            uri_path(&path.to_string_lossy())
        );
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
    } else {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }
    .with_context(|| format!("cannot open {} as an SQLite database", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Reading the schema is what fails on a file that only looks like a database.
    conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .with_context(|| format!("{} is not a readable SQLite database", path.display()))?;
    Ok(conn)
}

/// Percent-encodes the three characters an SQLite URI filename gives a meaning to.
fn uri_path(p: &str) -> String {
    p.replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23")
}

/// A table of a source database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// Its name.
    pub name: String,
    /// Its columns, in declaration order.
    pub columns: Vec<String>,
    /// Whether it has a rowid (WITHOUT ROWID tables cannot be read resumably).
    pub rowid: bool,
}

/// Quotes an identifier for SQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The ordinary tables of a source database (not SQLite's own, not views), by name.
pub fn tables(conn: &Connection) -> Result<Vec<SourceTable>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for name in names {
        let columns: Vec<String> = conn
            .prepare(&format!("PRAGMA table_info({})", quote(&name)))?
            .query_map([], |r| r.get(1))?
            .collect::<rusqlite::Result<_>>()?;
        let rowid = conn
            .prepare(&format!("SELECT rowid FROM {} LIMIT 0", quote(&name)))
            .is_ok();
        out.push(SourceTable {
            name,
            columns,
            rowid,
        });
    }
    Ok(out)
}

/// Rows of a table.
pub fn count_rows(conn: &Connection, table: &str) -> Result<u64> {
    Ok(
        conn.query_row(&format!("SELECT COUNT(*) FROM {}", quote(table)), [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Up to `limit` rows of `table` with `rowid > after`, in rowid order: the rowid and
/// the values of `columns`.
pub fn rows_after(
    conn: &Connection,
    table: &str,
    columns: &[String],
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, Vec<Value>)>> {
    if columns.is_empty() {
        bail!("no columns to read from {table}");
    }
    let cols = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rowid, {cols} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        quote(table)
    ))?;
    let n = columns.len();
    let rows = stmt
        .query_map(
            params_from_iter([Value::Integer(after), Value::Integer(limit as i64)]),
            |r| {
                let mut values = Vec::with_capacity(n);
                for i in 0..n {
                    values.push(r.get::<_, Value>(i + 1)?);
                }
                Ok((r.get::<_, i64>(0)?, values))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One row of the seeds' production layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRow {
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// `indicator_name`.
    pub indicator: Option<String>,
    /// `indicator_category`.
    pub category: Option<String>,
    /// `sources`, a JSON array as text.
    pub sources: Option<String>,
}

/// Writes a new database at `path` in the layout the seeds' `crypto_indicators_production.db`
/// uses: table `qa_pairs(id, indicator_name, indicator_category, question, answer,
/// sources, quality_score, created_at)`, one row per element of `rows`, in order. Fails
/// when `path` exists.
pub fn create_legacy(path: &Path, rows: &[LegacyRow]) -> Result<()> {
    anyhow::ensure!(
        !path.exists(),
        "{} exists; generate --db writes a new database",
        path.display()
    );
    append_legacy(path, rows)
}

/// [`create_legacy`], appending to the database when it exists (benchmarks write one in
/// chunks).
pub fn append_legacy(path: &Path, rows: &[LegacyRow]) -> Result<()> {
    let mut conn =
        Connection::open(path).with_context(|| format!("cannot create {}", path.display()))?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS qa_pairs (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            indicator_name     TEXT,
            indicator_category TEXT,
            question           TEXT NOT NULL,
            answer             TEXT NOT NULL,
            sources            TEXT,
            quality_score      REAL,
            created_at         TEXT
        );",
    )?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO qa_pairs (indicator_name, indicator_category, question, answer,
                                   sources, quality_score, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (i, r) in rows.iter().enumerate() {
            stmt.execute(rusqlite::params![
                r.indicator,
                r.category,
                r.question,
                r.answer,
                r.sources,
                0.5 + (i % 50) as f64 / 100.0,
                format!("2025-11-{:02}T00:00:00Z", 1 + i % 28),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}
