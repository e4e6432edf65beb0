//! The embeddings round trip with the Gemini batch embeddings API.
//!
//! **Out** (`perpetual export embeddings`): the first `batch_size` pairs of the snapshot
//! that are in no batch yet become batch N (the next number), written as
//! - `embeddings_input_batch_<N>.jsonl`, the batch job's input file: one request per
//!   line, `{"key": <pair key, hex>, "request": {"content": {"parts": [{"text": "Q: ...\nA: ..."}]},
//!   "task_type": ..., "output_dimensionality": ...}}` (the format of the API's batch
//!   mode for embeddings: `tests/fixtures/gemini_batch_embeddings/` keeps the documented
//!   example and its source);
//! - `embeddings_metadata_batch_<N>.jsonl`: per line the key, the pair id, indicator,
//!   category and the blake3 of the text sent.
//!
//! The batch and its pairs are recorded (`store::embeddings`), so the next call goes on
//! with the pairs not batched yet and pairs stored later join a later batch. A recorded
//! batch can be written again, byte for byte (`--batch N`).
//!
//! **Back**: the job's results file is drop → database, so the engine imports it
//! (`crate::engine::embeddings`), from `perpetual import embeddings` or from an inbox.

use crate::config::EmbeddingsConfig;
use crate::dataset::formats::document_text;
use crate::dataset::output::{Outputs, Progress, WrittenFile};
use crate::store::dataset as store;
use crate::store::documents::Document;
use crate::store::embeddings as vectors;
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::io::Write;
use std::time::Instant;

/// The name of batch `n`'s request file.
pub fn input_name(n: i64) -> String {
    format!("embeddings_input_batch_{n}.jsonl")
}

/// The name of batch `n`'s metadata file.
pub fn metadata_name(n: i64) -> String {
    format!("embeddings_metadata_batch_{n}.jsonl")
}

/// What a batch's requests were made with; stored with the batch, so rewriting it gives
/// the same bytes whatever the configuration says today.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RequestParams {
    /// The model the job is meant for (it is named when the job is created, not per line).
    pub model: String,
    /// `task_type`, when sent.
    pub task_type: Option<String>,
    /// `output_dimensionality`, when sent.
    pub output_dimensionality: Option<usize>,
}

impl RequestParams {
    /// From the `[embeddings]` configuration.
    pub fn from_config(cfg: &EmbeddingsConfig) -> RequestParams {
        RequestParams {
            model: cfg.model.clone(),
            task_type: Some(cfg.task_type.trim().to_string()).filter(|t| !t.is_empty()),
            output_dimensionality: Some(cfg.output_dimensionality).filter(|d| *d > 0),
        }
    }
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Request<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<usize>,
}

#[derive(Serialize)]
struct RequestLine<'a> {
    key: &'a str,
    request: Request<'a>,
}

#[derive(Serialize)]
struct MetadataLine<'a> {
    key: &'a str,
    pair_id: i64,
    indicator: Option<&'a str>,
    category: Option<&'a str>,
    text_blake3: String,
}

/// One batch as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchWritten {
    /// Its number.
    pub batch: i64,
    /// Pairs in it.
    pub pairs: u64,
    /// Its lowest and highest pair id.
    pub pair_ids: (i64, i64),
    /// Whether it was made by this call (false: an existing batch written again).
    pub new: bool,
}

/// What `perpetual export embeddings` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// The batches written.
    pub batches: Vec<BatchWritten>,
    /// Pairs of the snapshot still in no batch after this call.
    pub unbatched: u64,
    /// What the requests ask for.
    pub params: RequestParams,
    /// The run's id (`dataset_runs`).
    pub run: i64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportOptions {
    /// Pairs per batch.
    pub batch_size: u64,
    /// New batches to make (each of `batch_size` pairs, the last one possibly smaller).
    pub batches: u64,
    /// Write this existing batch again instead of making new ones.
    pub rewrite: Option<i64>,
}

/// Writes the next batch(es) of requests, or an existing batch again.
pub fn export(
    conn: &Connection,
    cfg: &EmbeddingsConfig,
    opts: &ExportOptions,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<ExportSummary> {
    anyhow::ensure!(opts.batch_size >= 1, "the batch size must be at least 1");
    let started = Instant::now();
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "export_embeddings",
        &serde_json::to_value(opts)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let mut written = Vec::new();
    let params;
    if let Some(n) = opts.rewrite {
        let row = vectors::batch(conn, n)?.with_context(|| {
            format!(
                "there is no batch {n} (batches so far: {})",
                vectors::next_batch(conn).map(|b| b - 1).unwrap_or(0)
            )
        })?;
        params = serde_json::from_value::<RequestParams>(row.params.clone())
            .with_context(|| format!("batch {n} has unreadable parameters"))?;
        let docs = vectors::batch_documents(conn, n)?;
        progress.stage(&format!("batch {n}"), docs.len() as u64);
        write_batch(out, n, &docs, &params, progress)?;
        written.push(BatchWritten {
            batch: n,
            pairs: docs.len() as u64,
            pair_ids: (row.first_pair_id, row.last_pair_id),
            new: false,
        });
    } else {
        params = RequestParams::from_config(cfg);
        for _ in 0..opts.batches.max(1) {
            let docs = vectors::unbatched_documents(conn, max_id, opts.batch_size)?;
            if docs.is_empty() {
                break;
            }
            let n = vectors::next_batch(conn)?;
            progress.stage(&format!("batch {n}"), docs.len() as u64);
            write_batch(out, n, &docs, &params, progress)?;
            // Recorded once its files are in place: a failure before leaves no batch,
            // and the next call makes the same one.
            let ids: Vec<i64> = docs.iter().map(|d| d.id).collect();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let recorded = vectors::insert_batch_raw(
                conn,
                n,
                &ids,
                &serde_json::to_value(&params)?,
                &crate::clock::now_rfc3339(),
            );
            match recorded {
                Ok(()) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
            written.push(BatchWritten {
                batch: n,
                pairs: ids.len() as u64,
                pair_ids: (ids[0], *ids.last().expect("not empty")),
                new: true,
            });
            if (ids.len() as u64) < opts.batch_size {
                break;
            }
        }
    }
    progress.finish();
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(ExportSummary {
        pairs,
        batches: written,
        unbatched: vectors::unbatched_count(conn, max_id)?,
        params,
        run: run_id,
        files,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

fn write_batch(
    out: &mut Outputs,
    n: i64,
    docs: &[Document],
    params: &RequestParams,
    progress: &mut Progress,
) -> Result<()> {
    let mut input = out.create(&input_name(n))?;
    let mut meta = out.create(&metadata_name(n))?;
    for d in docs {
        let key = crate::pair::hex(&d.key);
        let text = document_text(&d.question, &d.answer);
        serde_json::to_writer(
            &mut input,
            &RequestLine {
                key: &key,
                request: Request {
                    content: Content {
                        parts: [Part { text: &text }],
                    },
                    task_type: params.task_type.as_deref(),
                    output_dimensionality: params.output_dimensionality,
                },
            },
        )?;
        input.write_all(b"\n")?;
        serde_json::to_writer(
            &mut meta,
            &MetadataLine {
                key: &key,
                pair_id: d.id,
                indicator: d.indicator.as_deref(),
                category: d.category.as_deref(),
                text_blake3: blake3::hash(text.as_bytes()).to_hex().to_string(),
            },
        )?;
        meta.write_all(b"\n")?;
        progress.advance(1);
    }
    out.commit(input)?;
    out.commit(meta)?;
    Ok(())
}
