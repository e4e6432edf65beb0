//! The embeddings round trip's tables (`crate::dataset::embeddings` computes, this file
//! reads and writes): which pairs went into which request batch (`embedding_batches`,
//! `embedding_batch_pairs`), and the vectors that came back (`embeddings`: f32,
//! little-endian, with their model and dimension; one per pair and model).

use super::documents::{DOCUMENT_COLUMNS, Document, document_from_row};
use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

/// One request batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRow {
    /// Its number: `embeddings_input_batch_<batch>.jsonl`.
    pub batch: i64,
    /// Pairs in it.
    pub pairs: u64,
    /// Its lowest pair id.
    pub first_pair_id: i64,
    /// Its highest pair id.
    pub last_pair_id: i64,
    /// What its requests were made with (JSON).
    pub params: serde_json::Value,
    /// When it was made.
    pub created_at: String,
}

/// The number the next batch gets (1 for the first).
pub fn next_batch(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(batch), 0) + 1 FROM embedding_batches",
        [],
        |r| r.get(0),
    )?)
}

/// Pairs with `id <= max_pair_id` that are in no batch yet.
pub fn unbatched_count(conn: &Connection, max_pair_id: i64) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM pairs p
         WHERE p.id <= ?1 AND NOT EXISTS (SELECT 1 FROM embedding_batch_pairs b WHERE b.pair_id = p.id)",
        [max_pair_id],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// The first `limit` pairs with `id <= max_pair_id` in no batch yet, in id order.
pub fn unbatched_documents(
    conn: &Connection,
    max_pair_id: i64,
    limit: u64,
) -> Result<Vec<Document>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM pairs p JOIN files f ON f.id = p.file_id
         WHERE p.id <= ?1
           AND NOT EXISTS (SELECT 1 FROM embedding_batch_pairs b WHERE b.pair_id = p.id)
         ORDER BY p.id LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![max_pair_id, limit as i64], document_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The pairs of batch `batch`, in id order.
pub fn batch_documents(conn: &Connection, batch: i64) -> Result<Vec<Document>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM embedding_batch_pairs b
           JOIN pairs p ON p.id = b.pair_id JOIN files f ON f.id = p.file_id
         WHERE b.batch = ?1 ORDER BY p.id"
    ))?;
    let rows = stmt
        .query_map([batch], document_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records batch `batch` and its pairs. Call inside an open transaction; fails (primary
/// key) when a pair is already in a batch.
pub fn insert_batch_raw(
    conn: &Connection,
    batch: i64,
    pair_ids: &[i64],
    params: &serde_json::Value,
    now: &str,
) -> Result<()> {
    anyhow::ensure!(!pair_ids.is_empty(), "a batch needs at least one pair");
    conn.execute(
        "INSERT INTO embedding_batches (batch, pairs, first_pair_id, last_pair_id, params, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            batch,
            pair_ids.len() as i64,
            pair_ids.iter().min(),
            pair_ids.iter().max(),
            serde_json::to_string(params)?,
            now
        ],
    )?;
    let mut stmt =
        conn.prepare_cached("INSERT INTO embedding_batch_pairs (pair_id, batch) VALUES (?1, ?2)")?;
    for id in pair_ids {
        stmt.execute(params![id, batch])?;
    }
    Ok(())
}

/// One batch, if it exists.
pub fn batch(conn: &Connection, batch: i64) -> Result<Option<BatchRow>> {
    Ok(conn
        .query_row(
            "SELECT batch, pairs, first_pair_id, last_pair_id, params, created_at
             FROM embedding_batches WHERE batch = ?1",
            [batch],
            batch_from_row,
        )
        .optional()?)
}

/// Every batch, in order.
pub fn batches(conn: &Connection) -> Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare(
        "SELECT batch, pairs, first_pair_id, last_pair_id, params, created_at
         FROM embedding_batches ORDER BY batch",
    )?;
    let rows = stmt
        .query_map([], batch_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn batch_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRow> {
    let params: String = r.get(4)?;
    Ok(BatchRow {
        batch: r.get(0)?,
        pairs: r.get::<_, i64>(1)? as u64,
        first_pair_id: r.get(2)?,
        last_pair_id: r.get(3)?,
        params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
        created_at: r.get(5)?,
    })
}

/// The keys of every batched pair, with the pair id and the batch: what a results file
/// names.
pub fn batched_keys(conn: &Connection) -> Result<HashMap<[u8; 32], (i64, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT p.key, p.id, b.batch FROM embedding_batch_pairs b JOIN pairs p ON p.id = b.pair_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = HashMap::new();
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(0)?.as_blob()?;
        if let Ok(key) = <[u8; 32]>::try_from(blob) {
            out.insert(key, (r.get(1)?, r.get(2)?));
        }
    }
    Ok(out)
}

/// What storing one vector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The pair had no vector of this model.
    Inserted,
    /// It had a different one, now replaced.
    Replaced,
    /// It had exactly this one.
    Unchanged,
}

/// Stores `vector` (little-endian f32s) as pair `pair_id`'s embedding by `model`. Call
/// inside an open transaction.
pub fn store_vector_raw(
    conn: &Connection,
    model: &str,
    pair_id: i64,
    dimension: usize,
    vector: &[u8],
    now: &str,
) -> Result<Stored> {
    let existing: Option<Vec<u8>> = conn
        .prepare_cached("SELECT vector FROM embeddings WHERE model = ?1 AND pair_id = ?2")?
        .query_row(params![model, pair_id], |r| r.get(0))
        .optional()?;
    match existing {
        Some(v) if v == vector => Ok(Stored::Unchanged),
        Some(_) => {
            conn.prepare_cached(
                "UPDATE embeddings SET dimension = ?3, vector = ?4, imported_at = ?5
                 WHERE model = ?1 AND pair_id = ?2",
            )?
            .execute(params![model, pair_id, dimension as i64, vector, now])?;
            Ok(Stored::Replaced)
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO embeddings (model, pair_id, dimension, vector, imported_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![model, pair_id, dimension as i64, vector, now])?;
            Ok(Stored::Inserted)
        }
    }
}

/// The dimension of `model`'s stored vectors (the most common one), if it has any.
pub fn dimension_of(conn: &Connection, model: &str) -> Result<Option<usize>> {
    Ok(conn
        .query_row(
            "SELECT dimension FROM embeddings WHERE model = ?1
             GROUP BY dimension ORDER BY COUNT(*) DESC, dimension LIMIT 1",
            [model],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|d| d as usize))
}

/// A model with stored vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    /// The model's name.
    pub model: String,
    /// Its vectors' dimension (the most common, when they differ).
    pub dimension: usize,
    /// Vectors stored.
    pub vectors: u64,
}

/// Every model with stored vectors, by name.
pub fn models(conn: &Connection) -> Result<Vec<ModelRow>> {
    let mut stmt = conn.prepare("SELECT DISTINCT model FROM embeddings ORDER BY model")?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for model in names {
        let vectors: i64 = conn.query_row(
            "SELECT COUNT(*) FROM embeddings WHERE model = ?1",
            [&model],
            |r| r.get(0),
        )?;
        out.push(ModelRow {
            dimension: dimension_of(conn, &model)?.unwrap_or(0),
            model,
            vectors: vectors as u64,
        });
    }
    Ok(out)
}

/// Streams `model`'s vectors of dimension `dimension` for pairs with `id <= max_pair_id`,
/// in pair id order.
pub fn for_each_vector(
    conn: &Connection,
    model: &str,
    dimension: usize,
    max_pair_id: i64,
    f: &mut dyn FnMut(i64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT pair_id, vector FROM embeddings
         WHERE model = ?1 AND dimension = ?2 AND pair_id <= ?3 ORDER BY pair_id",
    )?;
    let mut rows = stmt.query(params![model, dimension as i64, max_pair_id])?;
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(1)?.as_blob()?;
        f(r.get(0)?, blob)?;
    }
    Ok(())
}

/// How many vectors `model` has.
pub fn vector_count(conn: &Connection, model: &str) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM embeddings WHERE model = ?1",
        [model],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(conn: &Connection, n: i64) {
        conn.execute(
            "INSERT INTO files (agent, name, source_path, size, status, started_at)
             VALUES ('t', 't.json', 't', 0, 'integrated', 'now')",
            [],
        )
        .unwrap();
        for i in 1..=n {
            conn.execute(
                "INSERT INTO pairs (key, question, answer, agent, file_id, created_at)
                 VALUES (?1, 'q', 'a', 't', 1, 'now')",
                [vec![i as u8; 32]],
            )
            .unwrap();
        }
    }

    #[test]
    fn batches_take_unbatched_pairs_in_order_and_never_twice() {
        let conn = crate::store::open_in_memory().unwrap();
        pairs(&conn, 5);
        assert_eq!(next_batch(&conn).unwrap(), 1);
        let first: Vec<i64> = unbatched_documents(&conn, 5, 2)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(first, [1, 2]);
        insert_batch_raw(&conn, 1, &first, &serde_json::json!({}), "t").unwrap();
        assert_eq!(unbatched_count(&conn, 5).unwrap(), 3);
        let second: Vec<i64> = unbatched_documents(&conn, 5, 10)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(second, [3, 4, 5]);
        assert!(insert_batch_raw(&conn, 2, &[2], &serde_json::json!({}), "t").is_err());
        assert_eq!(batch(&conn, 1).unwrap().unwrap().last_pair_id, 2);
        assert_eq!(batched_keys(&conn).unwrap()[&[2u8; 32]], (2, 1));
    }

    #[test]
    fn storing_the_same_vector_twice_changes_nothing() {
        let conn = crate::store::open_in_memory().unwrap();
        pairs(&conn, 1);
        let v = [1u8, 0, 0, 0, 2, 0, 0, 0];
        let w = [9u8, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(
            store_vector_raw(&conn, "m", 1, 2, &v, "t").unwrap(),
            Stored::Inserted
        );
        assert_eq!(
            store_vector_raw(&conn, "m", 1, 2, &v, "t").unwrap(),
            Stored::Unchanged
        );
        assert_eq!(
            store_vector_raw(&conn, "m", 1, 2, &w, "t").unwrap(),
            Stored::Replaced
        );
        assert_eq!(vector_count(&conn, "m").unwrap(), 1);
        assert_eq!(dimension_of(&conn, "m").unwrap(), Some(2));
        assert_eq!(models(&conn).unwrap()[0].vectors, 1);
    }
}
