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
//! **Back** (`perpetual import embeddings RESULTS.jsonl`, or the results file dropped
//! into `inbox/<agent>/`, recognised by [`is_results`]): each line is the key and the
//! embedding (`{"key", "response": {"embedding": {"values": [...]}}}`) or an error
//! (`{"key", "error": {"code", "message", "status"}}`). Vectors are stored as f32 with
//! the model and their dimension; keys that name no pair, errors, dimension mismatches
//! and malformed lines are counted and reported with their line numbers. A vector
//! already stored unchanged is left alone, so an import is idempotent, and the command
//! commits every [`COMMIT_EVERY`] lines, so an interrupted import is resumed by running
//! it again.

use crate::config::EmbeddingsConfig;
use crate::dataset::formats::document_text;
use crate::dataset::output::{Outputs, Progress, WrittenFile};
use crate::pair::PairKey;
use crate::store::dataset as store;
use crate::store::documents::{self, Document};
use crate::store::embeddings::{self as vectors, Stored};
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
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

/// Lines per transaction of `perpetual import embeddings`: what an interrupted import
/// does again at most.
pub const COMMIT_EVERY: usize = 1_000;
/// Problems listed one by one in a report (all are counted).
pub const LISTED: usize = 20;

/// A line that could not be stored, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// 1-based line number.
    pub line: u64,
    /// The line's key, when it has one.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Counted problems of one kind, the first [`LISTED`] listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Problems {
    /// How many.
    pub count: u64,
    /// The first ones.
    pub first: Vec<Problem>,
}

impl Problems {
    fn push(&mut self, line: u64, key: Option<&str>, reason: String) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(Problem {
                line,
                key: key.map(String::from),
                reason,
            });
        }
    }
}

/// What an import did (`perpetual import embeddings --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// The file read.
    pub file: String,
    /// The model the vectors are stored under.
    pub model: String,
    /// The dimension expected (the first vector's, or the batch's requested one).
    pub dimension: Option<usize>,
    /// Non-empty lines read.
    pub lines: u64,
    /// Vectors stored for pairs that had none of this model.
    pub stored: u64,
    /// Vectors that replaced a different stored one.
    pub replaced: u64,
    /// Vectors already stored exactly so.
    pub unchanged: u64,
    /// Lines whose key names no pair.
    pub unknown_keys: Problems,
    /// Lines that carry an error instead of an embedding.
    pub errors: Problems,
    /// Vectors whose length is not the expected dimension.
    pub dimension_mismatches: Problems,
    /// Lines that are not a result at all (not JSON, no key, no values...).
    pub malformed: Problems,
    /// Wall time.
    pub seconds: f64,
}

impl ImportReport {
    /// A one-line account for logs and the ledger.
    pub fn summary(&self) -> String {
        format!(
            "embeddings ({}{}): {} lines, {} stored, {} replaced, {} unchanged, {} unknown keys, {} errors, {} dimension mismatches, {} malformed",
            self.model,
            self.dimension
                .map(|d| format!(", {d} dimensions"))
                .unwrap_or_default(),
            self.lines,
            self.stored,
            self.replaced,
            self.unchanged,
            self.unknown_keys.count,
            self.errors.count,
            self.dimension_mismatches.count,
            self.malformed.count
        )
    }
}

/// Whether the first line of `head` is a result of the batch embeddings API: an object
/// with a `key` and either a `response` object holding an embedding or an `error`
/// object, and none of the fields a question/answer pair has. This is how a results
/// file dropped into an inbox is told from a drop of pairs.
pub fn is_results(head: &[u8]) -> bool {
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let Some(line) = text
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .find(|l| !l.is_empty())
    else {
        return false;
    };
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(line) else {
        return false;
    };
    let has_key = o.get("key").is_some_and(Value::is_string)
        || o.get("metadata")
            .and_then(|m| m.get("key"))
            .is_some_and(Value::is_string);
    let pair_fields = ["question", "q", "prompt", "answer", "a", "qa_pairs"];
    if !has_key || pair_fields.iter().any(|f| o.contains_key(*f)) {
        return false;
    }
    let embedding = o.get("response").is_some_and(|r| {
        r.get("embedding").is_some_and(Value::is_object)
            || r.get("embeddings").is_some_and(Value::is_array)
    });
    let error = o.get("error").is_some_and(Value::is_object);
    embedding || error
}

/// Reads at most `limit` bytes of the first line of a file (for [`is_results`]).
pub fn first_line(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut reader = std::io::BufReader::new(file).take(limit as u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || !line.trim_ascii().is_empty() {
            return Ok(line);
        }
    }
}

/// The embedding values of a result line, or why there are none.
enum Parsed {
    Vector(Vec<f32>),
    Error(String),
}

fn parse_line(o: &serde_json::Map<String, Value>) -> std::result::Result<Parsed, String> {
    let error = o
        .get("error")
        .or_else(|| o.get("response").and_then(|r| r.get("error")));
    if let Some(e) = error.filter(|e| !e.is_null()) {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| e.to_string());
        let status = e
            .get("status")
            .and_then(Value::as_str)
            .or_else(|| e.get("code").and_then(Value::as_str));
        let code = e.get("code").and_then(Value::as_i64);
        return Ok(Parsed::Error(match (status, code) {
            (Some(s), _) => format!("{s}: {message}"),
            (None, Some(c)) => format!("code {c}: {message}"),
            _ => message,
        }));
    }
    let response = o.get("response").unwrap_or(&Value::Null);
    let values = response
        .pointer("/embedding/values")
        .or_else(|| response.pointer("/embeddings/0/values"))
        .or_else(|| o.get("embedding").and_then(|e| e.get("values")))
        .ok_or("no embedding values (response.embedding.values) and no error")?;
    let Value::Array(values) = values else {
        return Err("embedding values are not an array".into());
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let x = v
            .as_f64()
            .ok_or_else(|| format!("value {i} is not a number"))? as f32;
        if !x.is_finite() {
            return Err(format!("value {i} is not finite as an f32"));
        }
        out.push(x);
    }
    if out.is_empty() {
        return Err("the embedding is empty".into());
    }
    Ok(Parsed::Vector(out))
}

/// Imports results line by line: resolves keys, checks dimensions, stores vectors.
pub struct Importer {
    model: String,
    now: String,
    batched: HashMap<PairKey, (i64, i64)>,
    batch_dims: HashMap<i64, usize>,
    tail: Option<HashMap<PairKey, i64>>,
    /// The report so far.
    pub report: ImportReport,
}

impl Importer {
    /// An importer storing vectors under `model`, reading `file` (for the report).
    pub fn new(conn: &Connection, model: &str, file: &str) -> Result<Importer> {
        let mut batch_dims = HashMap::new();
        for b in vectors::batches(conn)? {
            if let Some(d) = b
                .params
                .get("output_dimensionality")
                .and_then(Value::as_u64)
            {
                batch_dims.insert(b.batch, d as usize);
            }
        }
        Ok(Importer {
            model: model.to_string(),
            now: crate::clock::now_rfc3339(),
            batched: vectors::batched_keys(conn)?,
            batch_dims,
            tail: None,
            report: ImportReport {
                file: file.to_string(),
                model: model.to_string(),
                dimension: vectors::dimension_of(conn, model)?,
                ..ImportReport::default()
            },
        })
    }

    fn pair_of(&mut self, conn: &Connection, key: &PairKey) -> Result<Option<(i64, Option<i64>)>> {
        if let Some((id, batch)) = self.batched.get(key) {
            return Ok(Some((*id, Some(*batch))));
        }
        if let Some(id) = documents::merged_pair_id(conn, key)? {
            return Ok(Some((id, None)));
        }
        if self.tail.is_none() {
            self.tail = Some(documents::tail_key_ids(conn)?);
        }
        Ok(self
            .tail
            .as_ref()
            .and_then(|t| t.get(key))
            .map(|id| (*id, None)))
    }

    /// Handles line `number` (1-based) of the results; call inside an open transaction.
    pub fn line(&mut self, conn: &Connection, number: u64, text: &[u8]) -> Result<()> {
        let text = text.trim_ascii();
        let text = text
            .strip_prefix(b"\xef\xbb\xbf")
            .unwrap_or(text)
            .trim_ascii();
        if text.is_empty() {
            return Ok(());
        }
        self.report.lines += 1;
        let r = &mut self.report;
        let o = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                r.malformed.push(number, None, "not a JSON object".into());
                return Ok(());
            }
            Err(e) => {
                r.malformed.push(number, None, format!("not JSON: {e}"));
                return Ok(());
            }
        };
        let key = o
            .get("key")
            .or_else(|| o.get("metadata").and_then(|m| m.get("key")))
            .and_then(Value::as_str)
            .map(String::from);
        let Some(key) = key else {
            r.malformed.push(number, None, "no key".into());
            return Ok(());
        };
        let parsed = match parse_line(&o) {
            Ok(p) => p,
            Err(why) => {
                r.malformed.push(number, Some(&key), why);
                return Ok(());
            }
        };
        let pair = match parse_key(&key) {
            Some(k) => self.pair_of(conn, &k)?,
            None => None,
        };
        let r = &mut self.report;
        let Some((pair_id, batch)) = pair else {
            r.unknown_keys
                .push(number, Some(&key), "no stored pair has this key".into());
            return Ok(());
        };
        let values = match parsed {
            Parsed::Error(message) => {
                r.errors.push(number, Some(&key), message);
                return Ok(());
            }
            Parsed::Vector(v) => v,
        };
        let expected = batch
            .and_then(|b| self.batch_dims.get(&b).copied())
            .or(r.dimension);
        if let Some(d) = expected
            && values.len() != d
        {
            r.dimension_mismatches.push(
                number,
                Some(&key),
                format!("{} values, expected {d}", values.len()),
            );
            return Ok(());
        }
        if r.dimension.is_none() {
            r.dimension = Some(values.len());
        }
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        match vectors::store_vector_raw(
            conn,
            &self.model,
            pair_id,
            values.len(),
            &bytes,
            &self.now,
        )? {
            Stored::Inserted => r.stored += 1,
            Stored::Replaced => r.replaced += 1,
            Stored::Unchanged => r.unchanged += 1,
        }
        Ok(())
    }
}

fn parse_key(key: &str) -> Option<PairKey> {
    let key = key.trim();
    if key.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(key.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Imports every line of `reader` inside the caller's transaction (the engine's writer
/// does this for a results file dropped into an inbox, in the transaction that records
/// the file in the ledger).
pub fn import_raw(
    conn: &Connection,
    reader: &mut dyn BufRead,
    model: &str,
    file: &str,
) -> Result<ImportReport> {
    let started = Instant::now();
    let mut importer = Importer::new(conn, model, file)?;
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        importer.line(conn, number, &line)?;
    }
    let mut report = importer.report;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// `perpetual import embeddings FILE`: imports every line, committing every
/// [`COMMIT_EVERY`] lines.
pub fn import_file(
    conn: &Connection,
    path: &Path,
    model: &str,
    progress: &mut Progress,
) -> Result<ImportReport> {
    let started = Instant::now();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "import_embeddings",
        &serde_json::json!({"file": path.display().to_string(), "model": model}),
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut importer = Importer::new(conn, model, &path.display().to_string())?;
    progress.stage("importing embeddings (bytes)", size);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut in_txn = 0usize;
    let result = (|| -> Result<()> {
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            number += 1;
            if in_txn == 0 {
                conn.execute_batch("BEGIN IMMEDIATE")?;
            }
            importer.line(conn, number, &line)?;
            in_txn += 1;
            if in_txn >= COMMIT_EVERY {
                conn.execute_batch("COMMIT")?;
                in_txn = 0;
            }
            progress.advance(n as u64);
        }
        if in_txn > 0 {
            conn.execute_batch("COMMIT")?;
            in_txn = 0;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if in_txn > 0 {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(e.context(format!(
            "{}: import stopped at line {number}; lines before it are stored, run it again to go on",
            path.display()
        )));
    }
    progress.finish();
    let mut report = importer.report;
    anyhow::ensure!(
        report.lines == 0 || report.malformed.count < report.lines,
        "{}: no line is a result of the batch embeddings API (first problem: line {}: {})",
        path.display(),
        report.malformed.first.first().map(|p| p.line).unwrap_or(0),
        report
            .malformed
            .first
            .first()
            .map(|p| p.reason.as_str())
            .unwrap_or("")
    );
    report.seconds = started.elapsed().as_secs_f64();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&report)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_told_from_pairs_by_their_content() {
        assert!(is_results(
            br#"{"key":"ab","response":{"embedding":{"values":[0.1,0.2]}}}"#
        ));
        assert!(is_results(
            b"\n{\"key\":\"ab\",\"error\":{\"code\":3,\"message\":\"too long\"}}\n{}"
        ));
        // A pair whose answer field is called "response" is a pair.
        assert!(!is_results(br#"{"prompt":"What?","response":"This."}"#));
        assert!(!is_results(
            br#"{"key":"k","question":"q?","response":{"embedding":{}}}"#
        ));
        assert!(!is_results(br#"[{"question":"q?","answer":"a"}]"#));
        assert!(!is_results(b""));
    }

    #[test]
    fn result_lines_parse_to_values_or_errors() {
        let o = |s: &str| match serde_json::from_str::<Value>(s).unwrap() {
            Value::Object(o) => o,
            _ => unreachable!(),
        };
        match parse_line(&o(
            r#"{"key":"k","response":{"embedding":{"values":[1,0.5]}}}"#,
        )) {
            Ok(Parsed::Vector(v)) => assert_eq!(v, vec![1.0, 0.5]),
            _ => panic!("a vector"),
        }
        match parse_line(&o(
            r#"{"key":"k","error":{"code":3,"message":"Request too long","status":"INVALID_ARGUMENT"}}"#,
        )) {
            Ok(Parsed::Error(m)) => assert_eq!(m, "INVALID_ARGUMENT: Request too long"),
            _ => panic!("an error"),
        }
        assert!(parse_line(&o(r#"{"key":"k","response":{}}"#)).is_err());
        assert!(
            parse_line(&o(
                r#"{"key":"k","response":{"embedding":{"values":["x"]}}}"#
            ))
            .is_err()
        );
        assert_eq!(parse_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_key("zz"), None);
    }
}
