//! One document per pair, as the RAG export and the splits write it: JSON Lines
//! (serde_json), CSV (the `csv` crate) and Parquet (`arrow` + `parquet`). The columns,
//! in this order:
//!
//! | column | type | what |
//! | --- | --- | --- |
//! | `id` | int64 | the pair's id |
//! | `key` | string | its blake3 key, hex |
//! | `question`, `answer` | string | as first received |
//! | `text` | string | `"Q: <question>\nA: <answer>"` (RAG export only: what is embedded) |
//! | `indicator`, `category` | string, null when unset | |
//! | `agent` | string | whose drop first delivered it |
//! | `source_file` | string | the name of that drop |
//! | `created_at` | string | when it was stored (UTC RFC 3339) |
//! | `extra` | JSON object (JSONL) / JSON text (CSV, Parquet), null when none | its other fields |
//!
//! Every writer is given a [`FileSink`], so the bytes are hashed as they are written and
//! land under their final name only once complete. The same rows give the same bytes.

use crate::dataset::output::FileSink;
use crate::store::documents::Document;
use anyhow::{Context, Result};
use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;

/// A file format the exports write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON Lines: one object per line.
    Jsonl,
    /// CSV with a header row (RFC 4180 quoting).
    Csv,
    /// Apache Parquet, Snappy-compressed, row groups of [`ROW_GROUP`] rows.
    Parquet,
}

impl Format {
    /// The file extension (and the name on the command line).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    /// Parses `jsonl`, `json` (the seeds' word for JSON Lines), `csv` or `parquet`.
    pub fn parse(s: &str) -> Result<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jsonl" | "json" | "ndjson" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            other => anyhow::bail!("unknown format {other:?}: expected jsonl, csv or parquet"),
        }
    }

    /// Parses a comma-separated list (`jsonl,csv,parquet`), without repeats, in the
    /// order given.
    pub fn parse_list(s: &str) -> Result<Vec<Format>> {
        let mut out: Vec<Format> = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let f = Format::parse(part)?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        anyhow::ensure!(!out.is_empty(), "no format given");
        Ok(out)
    }
}

/// Rows per Parquet row group: bounds what a writer holds in memory.
pub const ROW_GROUP: usize = 65_536;
/// The most a Parquet row group holds before it is written out (long answers make
/// rows large).
pub const ROW_GROUP_BYTES: usize = 32 << 20;
/// Rows per Arrow record batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8_192;

/// `"Q: <question>\nA: <answer>"`: the one text a pair is retrieved and embedded by.
pub fn document_text(question: &str, answer: &str) -> String {
    format!("Q: {question}\nA: {answer}")
}

/// Which optional columns a table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// The `text` column (RAG export).
    pub text: bool,
}

impl Columns {
    /// The column names, in order.
    pub fn names(self) -> Vec<&'static str> {
        let mut names = vec!["id", "key", "question", "answer"];
        if self.text {
            names.push("text");
        }
        names.extend([
            "indicator",
            "category",
            "agent",
            "source_file",
            "created_at",
            "extra",
        ]);
        names
    }

    /// The Arrow schema of the Parquet files.
    pub fn schema(self) -> SchemaRef {
        let fields: Vec<Field> = self
            .names()
            .into_iter()
            .map(|name| match name {
                "id" => Field::new(name, DataType::Int64, false),
                "indicator" | "category" | "extra" => Field::new(name, DataType::Utf8, true),
                _ => Field::new(name, DataType::Utf8, false),
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

#[derive(Serialize)]
struct JsonRow<'a> {
    id: i64,
    key: String,
    question: &'a str,
    answer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    indicator: Option<&'a str>,
    category: Option<&'a str>,
    agent: &'a str,
    source_file: &'a str,
    created_at: &'a str,
    extra: Option<serde_json::Value>,
}

/// `extra` as a JSON value: the stored object, or the text itself should it not parse
/// (it always does: the engine writes it).
fn extra_value(extra: &Option<String>) -> Option<serde_json::Value> {
    extra.as_deref().map(|e| {
        serde_json::from_str(e).unwrap_or_else(|_| serde_json::Value::String(e.to_string()))
    })
}

/// Writes documents in one format to one file.
pub enum TableWriter {
    /// JSON Lines.
    Jsonl(Columns, Box<FileSink>),
    /// CSV.
    Csv(Columns, Box<csv::Writer<FileSink>>),
    /// Parquet.
    Parquet(Box<ParquetTable>),
}

/// The Parquet side of [`TableWriter`]: rows gathered into Arrow builders, handed to the
/// writer every [`BATCH_ROWS`] rows.
pub struct ParquetTable {
    columns: Columns,
    schema: SchemaRef,
    writer: ArrowWriter<FileSink>,
    id: Int64Builder,
    strings: Vec<StringBuilder>,
    rows: usize,
}

impl TableWriter {
    /// A writer of `format` with `columns` into `sink` (the CSV header is written now).
    pub fn new(format: Format, columns: Columns, sink: FileSink) -> Result<TableWriter> {
        Ok(match format {
            Format::Jsonl => TableWriter::Jsonl(columns, Box::new(sink)),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(sink);
                w.write_record(columns.names())?;
                TableWriter::Csv(columns, Box::new(w))
            }
            Format::Parquet => {
                let schema = columns.schema();
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP))
                    .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
                    .build();
                let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))?;
                let strings = (1..schema.fields().len())
                    .map(|_| StringBuilder::new())
                    .collect();
                TableWriter::Parquet(Box::new(ParquetTable {
                    columns,
                    schema,
                    writer,
                    id: Int64Builder::new(),
                    strings,
                    rows: 0,
                }))
            }
        })
    }

    /// Writes one document.
    pub fn write(&mut self, d: &Document) -> Result<()> {
        match self {
            TableWriter::Jsonl(columns, sink) => {
                let row = JsonRow {
                    id: d.id,
                    key: crate::pair::hex(&d.key),
                    question: &d.question,
                    answer: &d.answer,
                    text: columns.text.then(|| document_text(&d.question, &d.answer)),
                    indicator: d.indicator.as_deref(),
                    category: d.category.as_deref(),
                    agent: &d.agent,
                    source_file: &d.source_file,
                    created_at: &d.created_at,
                    extra: extra_value(&d.extra),
                };
                serde_json::to_writer(&mut **sink, &row)?;
                sink.write_all(b"\n")?;
            }
            TableWriter::Csv(columns, w) => {
                let id = d.id.to_string();
                let key = crate::pair::hex(&d.key);
                let text = columns.text.then(|| document_text(&d.question, &d.answer));
                let mut record: Vec<&str> = vec![&id, &key, &d.question, &d.answer];
                if let Some(t) = &text {
                    record.push(t);
                }
                record.extend([
                    d.indicator.as_deref().unwrap_or(""),
                    d.category.as_deref().unwrap_or(""),
                    &d.agent,
                    &d.source_file,
                    &d.created_at,
                    d.extra.as_deref().unwrap_or(""),
                ]);
                w.write_record(&record)?;
            }
            TableWriter::Parquet(p) => p.push(d)?,
        }
        Ok(())
    }

    /// Finishes the file (Parquet footer, CSV buffer) and hands back its sink.
    pub fn finish(self) -> Result<FileSink> {
        match self {
            TableWriter::Jsonl(_, sink) => Ok(*sink),
            TableWriter::Csv(_, w) => w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("cannot finish the CSV file: {}", e.error())),
            TableWriter::Parquet(mut p) => {
                p.flush()?;
                Ok(p.writer.into_inner()?)
            }
        }
    }
}

impl ParquetTable {
    fn push(&mut self, d: &Document) -> Result<()> {
        self.id.append_value(d.id);
        let key = crate::pair::hex(&d.key);
        let text = self
            .columns
            .text
            .then(|| document_text(&d.question, &d.answer));
        let mut values: Vec<Option<&str>> = vec![Some(&key), Some(&d.question), Some(&d.answer)];
        if let Some(t) = &text {
            values.push(Some(t));
        }
        values.extend([
            d.indicator.as_deref(),
            d.category.as_deref(),
            Some(&d.agent),
            Some(&d.source_file),
            Some(&d.created_at),
            d.extra.as_deref(),
        ]);
        for (b, v) in self.strings.iter_mut().zip(values) {
            b.append_option(v);
        }
        self.rows += 1;
        if self.rows >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.id.finish())];
        for b in &mut self.strings {
            columns.push(Arc::new(b.finish()));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .context("cannot build a Parquet record batch")?;
        self.writer.write(&batch)?;
        self.rows = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::output::Outputs;
    use crate::root::Root;

    fn doc(id: i64, extra: Option<&str>) -> Document {
        Document {
            id,
            key: [id as u8; 32],
            question: "What is RSI?".into(),
            answer: "A momentum oscillator, \"bounded\", 0-100.".into(),
            indicator: Some("RSI".into()),
            category: None,
            agent: "droid".into(),
            source_file: "b.json".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            extra: extra.map(String::from),
        }
    }

    #[test]
    fn each_format_round_trips_through_its_reader() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let mut out = Outputs::new(&root, None, None).unwrap();
        let columns = Columns { text: true };
        for format in [Format::Jsonl, Format::Csv, Format::Parquet] {
            let name = format!("t.{}", format.extension());
            let mut w = TableWriter::new(format, columns, out.create(&name).unwrap()).unwrap();
            w.write(&doc(1, Some(r#"{"sources":["a"]}"#))).unwrap();
            w.write(&doc(2, None)).unwrap();
            out.commit(w.finish().unwrap()).unwrap();
        }
        let jsonl = std::fs::read_to_string(out.dir().join("t.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert_eq!(
            first["text"],
            "Q: What is RSI?\nA: A momentum oscillator, \"bounded\", 0-100."
        );
        assert_eq!(first["extra"]["sources"][0], "a");
        assert_eq!(first["category"], serde_json::Value::Null);

        let mut csv = csv::Reader::from_path(out.dir().join("t.csv")).unwrap();
        assert_eq!(csv.headers().unwrap().len(), 11);
        let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][3], "A momentum oscillator, \"bounded\", 0-100.");

        let file = std::fs::File::open(out.dir().join("t.parquet")).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(batches[0].schema(), columns.schema());
    }

    #[test]
    fn format_lists_parse_in_order_without_repeats() {
        assert_eq!(
            Format::parse_list("parquet, jsonl,parquet").unwrap(),
            vec![Format::Parquet, Format::Jsonl]
        );
        assert!(Format::parse_list("xml").is_err());
    }
}
