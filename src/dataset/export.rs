//! The RAG export (`perpetual export rag`): every pair of the snapshot as one document,
//! in id order, written to `rag_export/part-00000.<ext>` and following parts of
//! `part_size` documents, with `rag_export/manifest.json` (counts, filters, and each
//! part's documents, size and blake3). Columns: `dataset::formats`.
//!
//! Filters:
//! - `flagged`: leaves out the pairs the latest quality run flagged
//!   (`store::dataset::flagged_pair_ids`);
//! - `near-dups`: keeps one pair per near-duplicate group (`dataset::groups`, of the
//!   counted methods): its representative, the lowest id; when flagged pairs are left
//!   out too and the representative is flagged, the group's first pair that is not.
//!
//! Parts left from an earlier, larger export are removed, so the folder always holds
//! exactly what the manifest lists.

use crate::dataset::formats::{Columns, Format, TableWriter};
use crate::dataset::groups::Groups;
use crate::dataset::output::{Outputs, Progress, WrittenFile};
use crate::store::dataset as store;
use crate::store::documents;
use anyhow::Result;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Instant;

/// The folder the export writes, inside the output folder.
pub const DIR: &str = "rag_export";

/// What to export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RagOptions {
    /// JSON Lines or Parquet.
    pub format: Format,
    /// Leave out the pairs the latest quality run flagged.
    pub exclude_flagged: bool,
    /// Keep one pair per near-duplicate group.
    pub exclude_near_dups: bool,
    /// The near-duplicate methods whose clusters count (`minhash`, `cosine`).
    pub near_dup_methods: Vec<String>,
    /// Documents per part file.
    pub part_size: u64,
}

impl Default for RagOptions {
    fn default() -> Self {
        RagOptions {
            format: Format::Jsonl,
            exclude_flagged: false,
            exclude_near_dups: false,
            near_dup_methods: crate::dataset::groups::METHODS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            part_size: 100_000,
        }
    }
}

/// One part of the export, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// Its name inside `rag_export/`.
    pub file: String,
    /// Documents in it.
    pub documents: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

/// How many pairs went where.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// Documents written.
    pub exported: u64,
    /// Left out: flagged by the latest quality run.
    pub excluded_flagged: u64,
    /// Left out: a near-duplicate of a pair that is kept.
    pub excluded_near_dups: u64,
}

/// The filters as the manifest records them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filters {
    /// `flagged`, `near-dups`, as asked.
    pub exclude: Vec<&'static str>,
    /// The quality run whose flags were used (`dataset_runs` id), when `flagged` is asked.
    pub quality_run: Option<i64>,
    /// The near-duplicate methods counted, when `near-dups` is asked.
    pub near_dup_methods: Vec<String>,
    /// Clusters read per method.
    pub clusters: Vec<(String, u64)>,
    /// How the kept pair of a group is chosen.
    pub near_dup_rule: &'static str,
}

/// `rag_export/manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The file format of the parts.
    pub format: Format,
    /// The pairs read: every pair with `id <= max_pair_id`.
    pub max_pair_id: i64,
    /// Counts.
    pub counts: Counts,
    /// Filters.
    pub filters: Filters,
    /// The columns, in order.
    pub columns: Vec<&'static str>,
    /// How `text` is made.
    pub text: &'static str,
    /// Documents per part.
    pub part_size: u64,
    /// The parts, in order.
    pub parts: Vec<Part>,
}

/// What `perpetual export rag` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct RagSummary {
    /// Counts.
    pub counts: Counts,
    /// The format written.
    pub format: Format,
    /// Parts written.
    pub parts: usize,
    /// Things the user should know (a filter that had nothing to work with).
    pub warnings: Vec<String>,
    /// The run's id in the manifest (`dataset_runs`).
    pub run: i64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// Stale parts of an earlier export that were removed.
    pub removed: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

/// Writes the RAG export of the snapshot.
pub fn rag(
    conn: &Connection,
    opts: &RagOptions,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<RagSummary> {
    anyhow::ensure!(
        matches!(opts.format, Format::Jsonl | Format::Parquet),
        "the RAG export is written as jsonl or parquet"
    );
    anyhow::ensure!(opts.part_size > 0, "the part size must be at least 1");
    let started = Instant::now();
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "export_rag",
        &serde_json::to_value(opts)?,
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let mut warnings = Vec::new();
    let mut exclude = Vec::new();
    // Ascending ids, merged with the pairs (also in id order) by a cursor.
    let flagged: Vec<i64> = if opts.exclude_flagged {
        exclude.push("flagged");
        if store::last_run(conn, "quality")?.is_none() {
            warnings.push(
                "no quality run yet: nothing is flagged (run `perpetual quality` first)".into(),
            );
        }
        store::flagged_pair_ids(conn)?
    } else {
        Vec::new()
    };
    let mut next_flagged = 0usize;
    let groups = if opts.exclude_near_dups {
        exclude.push("near-dups");
        let g = Groups::load(conn, &opts.near_dup_methods, max_id)?;
        if g.clusters_by_method.iter().all(|(_, n)| *n == 0) {
            warnings.push(format!(
                "no near-duplicate clusters of {} yet: nothing is left out as a near-duplicate (run `perpetual near-dups` first)",
                opts.near_dup_methods.join(", ")
            ));
        }
        g
    } else {
        Groups::default()
    };

    let columns = Columns { text: true };
    let ext = opts.format.extension();
    let mut counts = Counts {
        pairs,
        ..Counts::default()
    };
    let mut kept_groups: HashSet<i64> = HashSet::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut current: Option<(TableWriter, String, u64)> = None;
    progress.stage("exporting pairs", pairs);
    documents::for_each_document(conn, max_id, &mut |d| {
        progress.advance(1);
        while next_flagged < flagged.len() && flagged[next_flagged] < d.id {
            next_flagged += 1;
        }
        if flagged.get(next_flagged) == Some(&d.id) {
            counts.excluded_flagged += 1;
            return Ok(());
        }
        // Flagged pairs are gone by now, so the first pair of a group to get here (in id
        // order) is its representative, or its first pair that is not flagged.
        if opts.exclude_near_dups
            && groups.contains(d.id)
            && !kept_groups.insert(groups.anchor(d.id))
        {
            counts.excluded_near_dups += 1;
            return Ok(());
        }
        if current.is_none() {
            let file = format!("part-{:05}.{ext}", parts.len());
            let sink = out.create(&format!("{DIR}/{file}"))?;
            current = Some((TableWriter::new(opts.format, columns, sink)?, file, 0));
        }
        let (writer, _, n) = current.as_mut().expect("opened above");
        writer.write(&d)?;
        *n += 1;
        counts.exported += 1;
        if *n >= opts.part_size {
            let (writer, file, n) = current.take().expect("open");
            parts.push(close_part(out, writer, file, n)?);
        }
        Ok(())
    })?;
    progress.finish();
    if let Some((writer, file, n)) = current.take() {
        parts.push(close_part(out, writer, file, n)?);
    }
    if parts.is_empty() {
        // An empty export is still an export: one empty part, so readers find a file.
        let file = format!("part-00000.{ext}");
        let sink = out.create(&format!("{DIR}/{file}"))?;
        let writer = TableWriter::new(opts.format, columns, sink)?;
        parts.push(close_part(out, writer, file, 0)?);
    }
    let removed = remove_stale_parts(out, &parts)?;

    let manifest = Manifest {
        format: opts.format,
        max_pair_id: max_id,
        counts: counts.clone(),
        filters: Filters {
            exclude,
            quality_run: if opts.exclude_flagged {
                store::last_run(conn, "quality")?.map(|r| r.id)
            } else {
                None
            },
            near_dup_methods: if opts.exclude_near_dups {
                opts.near_dup_methods.clone()
            } else {
                Vec::new()
            },
            clusters: groups.clusters_by_method.clone(),
            near_dup_rule: "one pair per near-duplicate group (clusters of the counted methods joined where they share a pair): the lowest id, or, when flagged pairs are left out and it is flagged, the group's lowest id that is not",
        },
        columns: columns.names(),
        text: "Q: <question>\\nA: <answer>",
        part_size: opts.part_size,
        parts: parts.clone(),
    };
    out.write_json(&format!("{DIR}/manifest.json"), &manifest)?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(RagSummary {
        counts,
        format: opts.format,
        parts: parts.len(),
        warnings,
        run: run_id,
        files,
        removed,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

fn close_part(
    out: &mut Outputs,
    writer: TableWriter,
    file: String,
    documents: u64,
) -> Result<Part> {
    out.commit(writer.finish()?)?;
    let written = out.files().last().expect("just committed");
    Ok(Part {
        file,
        documents,
        bytes: written.bytes,
        blake3: written.blake3.clone(),
    })
}

/// Removes `part-*` files of `rag_export/` that this export did not write.
fn remove_stale_parts(out: &Outputs, parts: &[Part]) -> Result<Vec<String>> {
    let dir = out.dir().join(DIR);
    let keep: HashSet<&str> = parts.iter().map(|p| p.file.as_str()).collect();
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(removed);
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && (n.ends_with(".jsonl") || n.ends_with(".parquet")))
        .filter(|n| !keep.contains(n.as_str()))
        .collect();
    names.sort();
    for n in names {
        std::fs::remove_file(dir.join(&n))?;
        removed.push(format!("{DIR}/{n}"));
    }
    Ok(removed)
}
