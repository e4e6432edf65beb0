//! Pairs read back as the workbench's deliverables show them: one [`Document`] per pair
//! (its row, with the name of the file it first came from), and the lighter rows the
//! split and the charts need. Every read is in id order and bounded by a snapshot
//! (`id <= max_pair_id`, see `store::dataset::snapshot`), so the same database always
//! gives the same rows in the same order.

use anyhow::Result;
use rusqlite::{Connection, Row};

/// One pair as the exports write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `pairs.id`.
    pub id: i64,
    /// The pair's blake3 key.
    pub key: [u8; 32],
    /// As first received.
    pub question: String,
    /// As first received.
    pub answer: String,
    /// The indicator, when the pair names one.
    pub indicator: Option<String>,
    /// The category, when the pair names one.
    pub category: Option<String>,
    /// The agent whose drop first delivered it.
    pub agent: String,
    /// The name of that drop (`files.name`).
    pub source_file: String,
    /// When it was stored (UTC RFC 3339).
    pub created_at: String,
    /// Unrecognised and inherited fields, a JSON object as stored.
    pub extra: Option<String>,
}

/// The columns [`document_from_row`] reads, for `FROM pairs p JOIN files f ON f.id = p.file_id`.
pub const DOCUMENT_COLUMNS: &str = "p.id, p.key, p.question, p.answer, p.indicator, p.category, \
     p.agent, f.name, p.created_at, p.extra";

/// Reads a row selected with [`DOCUMENT_COLUMNS`].
pub fn document_from_row(r: &Row<'_>) -> rusqlite::Result<Document> {
    let key_ref = r.get_ref(1)?;
    let blob = key_ref.as_blob()?;
    let mut key = [0u8; 32];
    if blob.len() == 32 {
        key.copy_from_slice(blob);
    }
    Ok(Document {
        id: r.get(0)?,
        key,
        question: r.get(2)?,
        answer: r.get(3)?,
        indicator: r.get(4)?,
        category: r.get(5)?,
        agent: r.get(6)?,
        source_file: r.get(7)?,
        created_at: r.get(8)?,
        extra: r.get(9)?,
    })
}

/// Rows read per statement: each chunk is its own short read, so a long export never
/// holds one read transaction open (which would keep the WAL from being checkpointed
/// while the watcher writes).
pub const CHUNK: usize = 10_000;

/// Up to `limit` documents with `after < id <= max_pair_id`, in id order.
pub fn documents_after(
    conn: &Connection,
    after: i64,
    max_pair_id: i64,
    limit: usize,
) -> Result<Vec<Document>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM pairs p JOIN files f ON f.id = p.file_id
         WHERE p.id > ?1 AND p.id <= ?2 ORDER BY p.id LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            rusqlite::params![after, max_pair_id, limit as i64],
            document_from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Streams every pair with `id <= max_pair_id` as a [`Document`], in id order, read in
/// chunks of [`CHUNK`].
pub fn for_each_document(
    conn: &Connection,
    max_pair_id: i64,
    f: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<()> {
    let mut after = 0;
    loop {
        let chunk = documents_after(conn, after, max_pair_id, CHUNK)?;
        let Some(last) = chunk.last() else {
            return Ok(());
        };
        after = last.id;
        for d in chunk {
            f(d)?;
        }
    }
}

/// What the split decides on: a pair's id, key and the fields it may be stratified by.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    /// `pairs.id`.
    pub id: i64,
    /// The pair's blake3 key.
    pub key: [u8; 32],
    /// The indicator, when named.
    pub indicator: Option<String>,
    /// The category, when named.
    pub category: Option<String>,
    /// The agent that first delivered it.
    pub agent: String,
}

/// Streams every pair with `id <= max_pair_id` as [`Labels`] (no text), in id order.
pub fn for_each_labels(
    conn: &Connection,
    max_pair_id: i64,
    f: &mut dyn FnMut(Labels) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT id, key, indicator, category, agent FROM pairs WHERE id <= ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([max_pair_id])?;
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(1)?.as_blob()?;
        let mut key = [0u8; 32];
        if blob.len() == 32 {
            key.copy_from_slice(blob);
        }
        f(Labels {
            id: r.get(0)?,
            key,
            indicator: r.get(2)?,
            category: r.get(3)?,
            agent: r.get(4)?,
        })?;
    }
    Ok(())
}

/// What the charts count: a pair's labels, its text lengths and when it was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// `pairs.id`.
    pub id: i64,
    /// The indicator, when named.
    pub indicator: Option<String>,
    /// The category, when named.
    pub category: Option<String>,
    /// The agent that first delivered it.
    pub agent: String,
    /// The answer's length in characters.
    pub answer_chars: u64,
    /// When it was stored (UTC RFC 3339).
    pub created_at: String,
}

/// Streams every pair with `id <= max_pair_id` as a [`Shape`], in id order.
pub fn for_each_shape(
    conn: &Connection,
    max_pair_id: i64,
    f: &mut dyn FnMut(Shape) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT id, indicator, category, agent, length(answer), created_at
         FROM pairs WHERE id <= ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([max_pair_id])?;
    while let Some(r) = rows.next()? {
        f(Shape {
            id: r.get(0)?,
            indicator: r.get(1)?,
            category: r.get(2)?,
            agent: r.get(3)?,
            answer_chars: r.get::<_, i64>(4)? as u64,
            created_at: r.get(5)?,
        })?;
    }
    Ok(())
}

/// Streams the latest quality run's flagged pairs with `id <= max_pair_id`, in id order:
/// the pair and its flag names (`quality_flags`, `store::dataset` owns the table; this
/// read holds one row at a time, for a million flagged pairs).
pub fn for_each_flagged(
    conn: &Connection,
    max_pair_id: i64,
    f: &mut dyn FnMut(i64, Vec<String>) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn
        .prepare("SELECT pair_id, flags FROM quality_flags WHERE pair_id <= ?1 ORDER BY pair_id")?;
    let mut rows = stmt.query([max_pair_id])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let text: String = r.get(1)?;
        let names: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("quality_flags of pair {id}: {e}"))?;
        f(id, names)?;
    }
    Ok(())
}

/// Every key of the unmerged tail with its pair id (at most `store::pairs::MERGE_MAX`).
pub fn tail_key_ids(conn: &Connection) -> Result<std::collections::HashMap<[u8; 32], i64>> {
    let mut out = std::collections::HashMap::new();
    crate::store::pairs::load_tail(conn, |id, key| {
        out.insert(key, id);
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_come_in_id_order_with_their_file_name() {
        let conn = crate::store::open_in_memory().unwrap();
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('droid', 'batch_1.json', '/x/batch_1.json', 0, 'integrated', 'now')",
            [],
        )
        .unwrap();
        for (i, q) in ["b?", "a?"].iter().enumerate() {
            conn.execute(
                "INSERT INTO pairs (key, question, answer, category, agent, file_id, created_at)
                 VALUES (?1, ?2, 'ans', 'momentum', 'droid', 1, 't')",
                rusqlite::params![vec![i as u8; 32], q],
            )
            .unwrap();
        }
        let mut seen = Vec::new();
        for_each_document(&conn, 2, &mut |d| {
            seen.push((d.id, d.question.clone(), d.source_file.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (1, "b?".to_string(), "batch_1.json".to_string()),
                (2, "a?".to_string(), "batch_1.json".to_string())
            ]
        );
        let mut n = 0;
        for_each_document(&conn, 1, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1, "the snapshot bounds the read");
    }
}
