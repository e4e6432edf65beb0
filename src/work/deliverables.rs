//! The task kinds of the workbench's deliverables (part 2): `export_rag`,
//! `export_embeddings`, `import_embeddings`, `split` and `charts`. `perpetual run` runs
//! them in-process in a session of their own, like part 1's kinds (`work::workbench`
//! starts and wraps the session, whose wrap commits `outbox/<agent>/`); each does what
//! its command does, with the task's params instead of flags, and writes to
//! `outbox/<the task's agent>/` unless the params name another `agent`'s outbox or an
//! `out` folder (absolute; not committed by the wrap).
//!
//! Params (JSON in the database; a TOML table in a plan: `params = { format = "parquet" }`),
//! every key optional unless said otherwise:
//!
//! | kind | params |
//! | --- | --- |
//! | `export_rag` | `format` (`jsonl`, `parquet`), `exclude` (`["flagged", "near-dups"]`), `near_dup_methods`, `part_size`, `agent`, `out` |
//! | `export_embeddings` | `batch_size`, `batches`, `agent`, `out` |
//! | `import_embeddings` | `file` (required: the results file), `model` |
//! | `split` | `ratios` (`"80,10,10"`), `stratify`, `formats` (`"jsonl,csv,parquet"`), `seed`, `near_dup_methods`, `agent`, `out` |
//! | `charts` | `agent`, `out` |
//!
//! They are checked when the task is added ([`check_params`]), so a task the loop could
//! not run is refused then, not when its turn comes.

use crate::config::Config;
use crate::dataset::formats::Format;
use crate::dataset::output::{Outputs, Progress};
use crate::dataset::{charts, embeddings, export, groups, split};
use crate::root::Root;
use crate::store::tasks::TaskKind;
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Deserialize;
use std::path::PathBuf;

/// `export_rag` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRagParams {
    /// `jsonl` (default) or `parquet`.
    pub format: Option<String>,
    /// `flagged`, `near-dups`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The near-duplicate methods that count (default both).
    pub near_dup_methods: Option<Vec<String>>,
    /// Documents per part.
    pub part_size: Option<u64>,
    /// Another agent's outbox.
    pub agent: Option<String>,
    /// Another output folder.
    pub out: Option<PathBuf>,
}

/// `export_embeddings` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEmbeddingsParams {
    /// Pairs per batch (default: `embeddings.batch_size`).
    pub batch_size: Option<u64>,
    /// New batches to make (default 1).
    pub batches: Option<u64>,
    /// Another agent's outbox.
    pub agent: Option<String>,
    /// Another output folder.
    pub out: Option<PathBuf>,
}

/// `import_embeddings` params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEmbeddingsParams {
    /// The results file.
    pub file: PathBuf,
    /// The model the vectors are stored under (default: the one each key's batch was made for).
    pub model: Option<String>,
}

/// `split` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    /// `"80,10,10"`.
    pub ratios: Option<String>,
    /// `category`, `indicator`, `agent`, `none`.
    pub stratify: Option<String>,
    /// `"jsonl,csv,parquet"`.
    pub formats: Option<String>,
    /// The seed.
    pub seed: Option<u64>,
    /// The near-duplicate methods whose clusters share a split.
    pub near_dup_methods: Option<Vec<String>>,
    /// Another agent's outbox.
    pub agent: Option<String>,
    /// Another output folder.
    pub out: Option<PathBuf>,
}

/// `charts` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartsParams {
    /// Another agent's outbox.
    pub agent: Option<String>,
    /// Another output folder.
    pub out: Option<PathBuf>,
}

/// Whether `kind` is one of this module's.
pub fn owns(kind: TaskKind) -> bool {
    matches!(
        kind,
        TaskKind::ExportRag
            | TaskKind::ExportEmbeddings
            | TaskKind::ImportEmbeddings
            | TaskKind::Split
            | TaskKind::Charts
    )
}

fn parse<T: for<'de> Deserialize<'de> + Default>(
    id: &str,
    params: Option<&serde_json::Value>,
) -> Result<T> {
    match params {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("task {id}: params do not fit its kind")),
    }
}

fn methods(m: &Option<Vec<String>>) -> Result<Vec<String>> {
    match m {
        Some(list) => groups::parse_methods(&list.join(",")),
        None => Ok(groups::METHODS.iter().map(|m| m.to_string()).collect()),
    }
}

fn rag_options(id: &str, p: &ExportRagParams) -> Result<export::RagOptions> {
    let mut o = export::RagOptions {
        format: Format::parse(p.format.as_deref().unwrap_or("jsonl"))?,
        near_dup_methods: methods(&p.near_dup_methods)?,
        part_size: p
            .part_size
            .unwrap_or(export::RagOptions::default().part_size),
        ..export::RagOptions::default()
    };
    anyhow::ensure!(
        matches!(o.format, Format::Jsonl | Format::Parquet),
        "task {id}: the RAG export is jsonl or parquet"
    );
    for e in &p.exclude {
        match e.as_str() {
            "flagged" => o.exclude_flagged = true,
            "near-dups" | "near_dups" => o.exclude_near_dups = true,
            other => anyhow::bail!("task {id}: exclude {other:?}: expected flagged or near-dups"),
        }
    }
    Ok(o)
}

fn split_options(p: &SplitParams) -> Result<split::SplitOptions> {
    let d = split::SplitOptions::default();
    Ok(split::SplitOptions {
        ratios: match &p.ratios {
            Some(r) => split::parse_ratios(r)?,
            None => d.ratios,
        },
        stratify: match &p.stratify {
            Some(s) => split::Stratify::parse(s)?,
            None => d.stratify,
        },
        formats: match &p.formats {
            Some(f) => Format::parse_list(f)?,
            None => d.formats,
        },
        seed: p.seed.unwrap_or(d.seed),
        near_dup_methods: methods(&p.near_dup_methods)?,
    })
}

/// `agent` names an agent, `out` is absolute, and not both are given.
fn check_destination(id: &str, agent: &Option<String>, out: &Option<PathBuf>) -> Result<()> {
    if let Some(a) = agent {
        crate::root::check_agent_name(a)?;
    }
    if let Some(o) = out {
        anyhow::ensure!(
            o.is_absolute(),
            "task {id}: out must be an absolute path, got {}",
            o.display()
        );
    }
    anyhow::ensure!(
        agent.is_none() || out.is_none(),
        "task {id}: give agent or out, not both"
    );
    Ok(())
}

/// Checks the params of one of this module's kinds.
pub fn check_params(id: &str, kind: TaskKind, params: Option<&serde_json::Value>) -> Result<()> {
    match kind {
        TaskKind::ExportRag => {
            let p: ExportRagParams = parse(id, params)?;
            check_destination(id, &p.agent, &p.out)?;
            rag_options(id, &p).map(|_| ())
        }
        TaskKind::ExportEmbeddings => {
            let p: ExportEmbeddingsParams = parse(id, params)?;
            check_destination(id, &p.agent, &p.out)?;
            anyhow::ensure!(
                p.batch_size != Some(0),
                "task {id}: batch_size must be at least 1"
            );
            Ok(())
        }
        TaskKind::ImportEmbeddings => {
            let v = params.with_context(|| {
                format!("task {id}: an import_embeddings task needs params = {{ file = \"results.jsonl\" }}")
            })?;
            let p: ImportEmbeddingsParams = serde_json::from_value(v.clone())
                .with_context(|| format!("task {id}: params do not fit import_embeddings"))?;
            anyhow::ensure!(
                p.file.is_absolute(),
                "task {id}: file must be an absolute path (the loop runs in the root): {}",
                p.file.display()
            );
            Ok(())
        }
        TaskKind::Split => {
            let p: SplitParams = parse(id, params)?;
            check_destination(id, &p.agent, &p.out)?;
            split_options(&p)
                .with_context(|| format!("task {id}"))
                .map(|_| ())
        }
        TaskKind::Charts => {
            let p: ChartsParams = parse(id, params)?;
            check_destination(id, &p.agent, &p.out)
        }
        other => anyhow::bail!("{} is not a deliverables kind", other.as_str()),
    }
}

/// Runs a task of one of this module's kinds; returns the line its log shows.
pub fn run_task(
    conn: &Connection,
    root: &Root,
    config: &Config,
    agent: &str,
    id: &str,
    kind: TaskKind,
    params: Option<&serde_json::Value>,
) -> Result<String> {
    let mut progress = Progress::hidden();
    let outputs = |to: &Option<String>, out: &Option<PathBuf>| {
        Outputs::new(root, Some(to.as_deref().unwrap_or(agent)), out.as_deref())
    };
    match kind {
        TaskKind::ExportRag => {
            let p: ExportRagParams = parse(id, params)?;
            let mut out = outputs(&p.agent, &p.out)?;
            let s = export::rag(conn, &rag_options(id, &p)?, &mut out, &mut progress)?;
            Ok(format!(
                "RAG export: {} of {} pairs in {} part(s) to {}",
                s.counts.exported,
                s.counts.pairs,
                s.parts,
                out.dir().display()
            ))
        }
        TaskKind::ExportEmbeddings => {
            let p: ExportEmbeddingsParams = parse(id, params)?;
            let mut out = outputs(&p.agent, &p.out)?;
            let opts = embeddings::ExportOptions {
                batch_size: p.batch_size.unwrap_or(config.embeddings.batch_size),
                batches: p.batches.unwrap_or(1),
                rewrite: None,
            };
            let s = embeddings::export(conn, &config.embeddings, &opts, &mut out, &mut progress)?;
            Ok(format!(
                "embeddings requests: batch(es) {} ({} pairs), {} pairs not batched yet",
                s.batches
                    .iter()
                    .map(|b| b.batch.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.batches.iter().map(|b| b.pairs).sum::<u64>(),
                s.unbatched
            ))
        }
        TaskKind::ImportEmbeddings => {
            let v = params.context("an import_embeddings task needs params")?;
            let p: ImportEmbeddingsParams = serde_json::from_value(v.clone())?;
            let r = crate::engine::embeddings::import_file(
                conn,
                &p.file,
                p.model.as_deref(),
                &mut |_| {},
            )?;
            Ok(r.summary())
        }
        TaskKind::Split => {
            let p: SplitParams = parse(id, params)?;
            let mut out = outputs(&p.agent, &p.out)?;
            let s = split::run(conn, &split_options(&p)?, &mut out, &mut progress)?;
            Ok(format!(
                "split: train {}, val {}, test {} ({} placed now, {} moved)",
                s.totals[0], s.totals[1], s.totals[2], s.newly_assigned, s.moved
            ))
        }
        TaskKind::Charts => {
            let p: ChartsParams = parse(id, params)?;
            let mut out = outputs(&p.agent, &p.out)?;
            let s = charts::run(conn, config.goal, &mut out, &mut progress)?;
            Ok(format!(
                "charts: {} to {}",
                s.charts.join(", "),
                out.dir().display()
            ))
        }
        other => anyhow::bail!("{} is not a deliverables kind", other.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_checked_when_the_task_is_added() {
        assert!(check_params("t", TaskKind::ExportRag, None).is_ok());
        assert!(
            check_params(
                "t",
                TaskKind::ExportRag,
                Some(&json!({"format": "parquet", "exclude": ["flagged", "near-dups"]}))
            )
            .is_ok()
        );
        assert!(check_params("t", TaskKind::ExportRag, Some(&json!({"format": "csv"}))).is_err());
        assert!(check_params("t", TaskKind::ExportRag, Some(&json!({"colour": 1}))).is_err());
        assert!(check_params("t", TaskKind::ImportEmbeddings, None).is_err());
        assert!(
            check_params(
                "t",
                TaskKind::ImportEmbeddings,
                Some(&json!({"file": "relative.jsonl"}))
            )
            .is_err()
        );
        assert!(
            check_params(
                "t",
                TaskKind::ImportEmbeddings,
                Some(&json!({"file": "/abs/results.jsonl"}))
            )
            .is_ok()
        );
        assert!(check_params("t", TaskKind::Split, Some(&json!({"ratios": "70,20,20"}))).is_err());
        assert!(
            check_params(
                "t",
                TaskKind::Split,
                Some(&json!({"ratios": "70,15,15", "stratify": "indicator"}))
            )
            .is_ok()
        );
        assert!(
            check_params(
                "t",
                TaskKind::ExportEmbeddings,
                Some(&json!({"batch_size": 0}))
            )
            .is_err()
        );
        assert!(check_params("t", TaskKind::Charts, None).is_ok());
    }
}
