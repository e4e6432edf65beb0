//! Results of the Gemini batch embeddings API, drop → database: each line of a results
//! file is the key of a request and its embedding (`{"key", "response": {"embedding":
//! {"values": [...]}}}`) or an error (`{"key", "error": {"code", "message", "status"}}`).
//! The key is a pair's key in hex, as `crate::dataset::embeddings` writes the requests.
//!
//! Vectors are stored as f32 with their model and dimension (`store::embeddings`); keys
//! that name no pair, errors, dimension mismatches and malformed lines are counted and
//! reported with their line numbers. A vector already stored unchanged is left alone, so
//! an import is idempotent; `perpetual import embeddings` commits every
//! [`COMMIT_EVERY`] lines, so an interrupted import is resumed by running it again.
//!
//! The model a vector is stored under is the one its request batch was made for (the
//! batch records it), unless the caller names one. A results file dropped into
//! `inbox/<agent>/` is recognised by [`is_results`] and imported by the ingest writer
//! in the transaction that records it in the ledger (`crate::engine::ingest`).

use crate::config::EmbeddingsConfig;
use crate::pair::PairKey;
use crate::store::dataset as store;
use crate::store::documents;
use crate::store::embeddings::{self as vectors, Stored};
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Instant;

/// The layout the ledger records for a results file.
pub const LAYOUT: &str = "embeddings_results";

/// Lines per transaction of `perpetual import embeddings`: what an interrupted import
/// does again at most.
pub const COMMIT_EVERY: usize = 1_000;
/// Problems listed one by one in a report (all are counted).
pub const LISTED: usize = 20;

/// What [`import_file`] says of its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The file's size in bytes, first.
    Size(u64),
    /// This many more bytes read.
    Read(u64),
}

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
    /// The model the vectors are stored under (the first one's; `, ...` when several).
    pub model: String,
    /// The dimension of the first vector stored.
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
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
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
    // The first line that is not blank, found with memchr: the line is often the whole
    // head (a one-line drop), and a byte-by-byte split of it was 5% of the prepare
    // stage's time (BENCHMARKS.md, "End to end", fifth sitting).
    let text = text.trim_ascii_start();
    let line = match memchr::memchr(b'\n', text) {
        Some(end) => &text[..end],
        None => text,
    }
    .trim_ascii_end();
    // Most first lines are pairs (a whole one-line drop, up to the limit): tell them
    // apart by their bytes before building a `Value` of them. A result's line is an
    // object naming a `key` and a `response` or an `error`.
    let names = |field: &[u8]| memchr::memmem::find(line, field).is_some();
    if !line.starts_with(b"{")
        || !names(b"\"key\"")
        || !(names(b"\"response\"") || names(b"\"error\""))
    {
        return false;
    }
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

/// Reads at most `limit` bytes of the first non-blank line of an open file (for
/// [`is_results`]), from where the descriptor stands.
pub fn first_line(file: &std::fs::File, limit: usize) -> std::io::Result<Vec<u8>> {
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
    model: Option<String>,
    now: String,
    batched: HashMap<PairKey, (i64, i64)>,
    /// Per batch: the model its requests were made for, and the dimension they asked for.
    batch_params: HashMap<i64, (String, Option<usize>)>,
    /// Per model: the dimension its vectors have (stored, or the first seen here).
    dimensions: HashMap<String, Option<usize>>,
    tail: Option<HashMap<PairKey, i64>>,
    /// The report so far.
    pub report: ImportReport,
}

impl Importer {
    /// An importer reading `file` (named in the report), storing vectors under `model`,
    /// or, when `None`, under the model each key's request batch was made for.
    pub fn new(conn: &Connection, model: Option<&str>, file: &str) -> Result<Importer> {
        let mut batch_params = HashMap::new();
        for b in vectors::batches(conn)? {
            let m = b
                .params
                .get("model")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| EmbeddingsConfig::default().model);
            let d = b
                .params
                .get("output_dimensionality")
                .and_then(Value::as_u64)
                .map(|d| d as usize);
            batch_params.insert(b.batch, (m, d));
        }
        Ok(Importer {
            model: model.map(String::from),
            now: crate::clock::now_rfc3339(),
            batched: vectors::batched_keys(conn)?,
            batch_params,
            dimensions: HashMap::new(),
            tail: None,
            report: ImportReport {
                file: file.to_string(),
                ..ImportReport::default()
            },
        })
    }

    fn pair_of(&mut self, conn: &Connection, key: &PairKey) -> Result<Option<(i64, Option<i64>)>> {
        if let Some((id, batch)) = self.batched.get(key) {
            return Ok(Some((*id, Some(*batch))));
        }
        if let Some(id) = crate::store::pairs::merged_pair_id(conn, key)? {
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
        let from_batch = batch.and_then(|b| self.batch_params.get(&b)).cloned();
        let model = self
            .model
            .clone()
            .or_else(|| from_batch.as_ref().map(|(m, _)| m.clone()))
            .unwrap_or_else(|| EmbeddingsConfig::default().model);
        if !self.dimensions.contains_key(&model) {
            let stored = vectors::dimension_of(conn, &model)?;
            self.dimensions.insert(model.clone(), stored);
        }
        let known = self.dimensions[&model];
        let expected = from_batch.and_then(|(_, d)| d).or(known);
        let r = &mut self.report;
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
        if known.is_none() {
            self.dimensions.insert(model.clone(), Some(values.len()));
        }
        if r.model.is_empty() {
            r.model = model.clone();
            r.dimension = Some(values.len());
        } else if r.model != model && !r.model.ends_with(", ...") {
            r.model.push_str(", ...");
        }
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        match vectors::store_vector_raw(conn, &model, pair_id, values.len(), &bytes, &self.now)? {
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
    model: Option<&str>,
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
/// [`COMMIT_EVERY`] lines; `progress` is told the file's size, then the bytes read.
pub fn import_file(
    conn: &Connection,
    path: &Path,
    model: Option<&str>,
    progress: &mut dyn FnMut(Progress),
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
    progress(Progress::Size(size));
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
            progress(Progress::Read(n as u64));
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
        // Blank lines, a byte-order mark and CRLF before and after the first line.
        assert!(is_results(
            b"\xef\xbb\xbf \r\n\t\r\n{\"key\":\"ab\",\"error\":{\"code\":3}} \r\n{}\r\n"
        ));
        // Only the first line counts: a result on the second is not a results file.
        assert!(!is_results(
            b"{\"question\":\"q?\",\"answer\":\"a\"}\n{\"key\":\"ab\",\"error\":{}}"
        ));
        assert!(!is_results(b" \r\n \n"));
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
