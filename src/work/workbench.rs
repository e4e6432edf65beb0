//! The workbench's task kinds (`quality`, `near_dups`, `coverage`, `import_db`, and the
//! deliverables `export_rag`, `export_embeddings`, `import_embeddings`, `split`, `charts`
//! whose params and work are `crate::work::deliverables`'): what their params are, and
//! running one as a task inside a session of its agent, the way the loop runs a backfill.
//!
//! A task runs in one session: it starts (the agent's budget gates apply), the work runs
//! in-process, and the session wraps with the task's progress full, which completes and
//! grades it and commits the handoff, the report and `outbox/<agent>/`: the deliverables
//! land there by default (`agent` in the params picks another outbox, `out` a folder,
//! neither of them committed by the wrap). A failure wraps the session and fails the
//! task with the error; an import stopped by a signal wraps unfinished and resumes at its
//! checkpoint in the next session.
//!
//! Params (JSON; paths absolute):
//!
//! | kind | params |
//! | --- | --- |
//! | `quality` | `agent`, `out` (optional) |
//! | `near_dups` | `threshold`, `agent`, `out` (optional) |
//! | `coverage` | `plan` (required), `agent`, `out` |
//! | `import_db` | `path` (required), `table`, `map` (`question=COL,...`), `agent` (credited; default the task's) |

use crate::config::Config;
use crate::dataset::coverage::{self, Plan};
use crate::dataset::near_dups;
use crate::dataset::output::{Outputs, Progress};
use crate::dataset::quality;
use crate::engine::import_db::{self, ColumnMap, ImportOptions};
use crate::root::Root;
use crate::store::tasks::{TaskKind, TaskRow, TaskStatus};
use crate::work::deliverables;
use crate::work::session::{self, StartOptions, StartOutcome, WrapInput};
use crate::work::tasks;
use anyhow::{Context, Result, bail, ensure};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// The params of a workbench task (the fields a kind does not use must be absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `quality`, `near_dups`, `coverage`: the outbox the deliverables go to (default: the
    /// task's agent); `import_db`: the agent the pairs are credited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A folder for the deliverables instead of an outbox (not committed by the wrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// `near_dups`: the Jaccard threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// `coverage`: the master list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PathBuf>,
    /// `import_db`: the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `import_db`: only this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// `import_db`: columns by hand, `question=COL,answer=COL,...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
}

/// Whether `kind` is one of the workbench's (part 1's, or a deliverable of part 2:
/// `crate::work::deliverables`).
pub fn is_workbench(kind: TaskKind) -> bool {
    matches!(
        kind,
        TaskKind::Quality | TaskKind::NearDups | TaskKind::Coverage | TaskKind::ImportDb
    ) || deliverables::owns(kind)
}

impl Params {
    /// A task's params (none means all defaults).
    pub fn of(task: &TaskRow) -> Result<Params> {
        match &task.params {
            None => Ok(Params::default()),
            Some(p) => serde_json::from_value(p.clone())
                .with_context(|| format!("task {}: invalid params", task.id)),
        }
    }
}

/// Checks a workbench task's params before it is stored.
pub fn check_params(id: &str, kind: TaskKind, params: Option<&serde_json::Value>) -> Result<()> {
    if deliverables::owns(kind) {
        return deliverables::check_params(id, kind, params);
    }
    let p: Params = match params {
        None => Params::default(),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("{} task {id}: invalid params", kind.as_str()))?,
    };
    let k = kind.as_str();
    let absolute = |what: &str, p: &Option<PathBuf>| -> Result<()> {
        if let Some(p) = p {
            ensure!(
                p.is_absolute(),
                "{k} task {id}: {what} must be an absolute path, got {}",
                p.display()
            );
        }
        Ok(())
    };
    absolute("out", &p.out)?;
    if let Some(a) = &p.agent {
        crate::root::check_agent_name(a)?;
    }
    ensure!(
        !(p.agent.is_some() && p.out.is_some() && kind != TaskKind::ImportDb),
        "{k} task {id}: give agent or out, not both"
    );
    let unused = |what: &str, present: bool| -> Result<()> {
        ensure!(!present, "{k} task {id}: {what} is not a param of {k}");
        Ok(())
    };
    match kind {
        TaskKind::Quality => {
            unused("threshold", p.threshold.is_some())?;
            unused("plan", p.plan.is_some())?;
            unused("path", p.path.is_some())?;
        }
        TaskKind::NearDups => {
            if let Some(t) = p.threshold {
                ensure!(
                    t > 0.0 && t <= 1.0,
                    "near_dups task {id}: threshold must be above 0 and at most 1"
                );
            }
            unused("plan", p.plan.is_some())?;
            unused("path", p.path.is_some())?;
        }
        TaskKind::Coverage => {
            let Some(plan) = &p.plan else {
                bail!("coverage task {id} needs params: plan (the master list, an absolute path)");
            };
            absolute("plan", &p.plan)?;
            Plan::load(plan)?;
            unused("threshold", p.threshold.is_some())?;
            unused("path", p.path.is_some())?;
        }
        TaskKind::ImportDb => {
            ensure!(
                p.path.is_some(),
                "import_db task {id} needs params: path (the SQLite database, an absolute path)"
            );
            absolute("path", &p.path)?;
            if let Some(m) = &p.map {
                m.parse::<ColumnMap>()?;
            }
            unused("out", p.out.is_some())?;
            unused("threshold", p.threshold.is_some())?;
            unused("plan", p.plan.is_some())?;
        }
        _ => bail!("{k} is not a workbench kind"),
    }
    if kind != TaskKind::ImportDb {
        unused("table", p.table.is_some())?;
        unused("map", p.map.is_some())?;
    }
    Ok(())
}

/// Makes the relative paths of params given on the command line absolute.
pub fn absolute_paths(params: &mut serde_json::Value) -> Result<()> {
    if let Some(map) = params.as_object_mut() {
        for key in ["plan", "path", "out", "file"] {
            if let Some(serde_json::Value::String(s)) = map.get(key) {
                let p = PathBuf::from(s);
                if p.is_relative() {
                    let abs = std::env::current_dir()?.join(&p);
                    map.insert(key.into(), abs.to_string_lossy().into_owned().into());
                }
            }
        }
    }
    Ok(())
}

/// What a workbench task did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The session it ran in; `None` when the agent's budget refused one.
    pub session: Option<String>,
    /// Whether the task completed.
    pub completed: bool,
    /// One line saying what it produced, or why it did not.
    pub detail: String,
}

/// Runs a workbench task in a session of its agent.
pub fn run_task(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    task: &TaskRow,
    stop: Option<&AtomicBool>,
) -> Result<Outcome> {
    // The deliverables' params are their own (`deliverables` reads them).
    let params = if deliverables::owns(task.kind) {
        Params::default()
    } else {
        Params::of(task)?
    };
    // A session of this task still active was left by a loop that died mid-task: the
    // work starts again (its outputs are rewritten whole; an import resumes at its
    // checkpoint), in a new session.
    for left in crate::store::sessions::active(conn, Some(&task.agent))?
        .into_iter()
        .filter(|s| s.task_id.as_deref() == Some(task.id.as_str()))
    {
        session::wrap(
            conn,
            root,
            config,
            &left.id,
            &WrapInput {
                next: Some(format!("{} starts again in a new session", task.id)),
                ..WrapInput::default()
            },
        )?;
    }
    let started = session::start(
        conn,
        config,
        &StartOptions {
            agent: task.agent.clone(),
            task: Some(task.id.clone()),
            token_budget: None,
            loop_run: false,
        },
    )?;
    let brief = match started {
        StartOutcome::Started(b) => b,
        StartOutcome::OverBudget { usage, .. } => {
            return Ok(Outcome {
                session: None,
                completed: false,
                detail: format!(
                    "{} is over budget ({} at {:.1}%): no session started",
                    task.agent,
                    usage.kind.label(),
                    usage.percent
                ),
            });
        }
        StartOutcome::NothingReady { .. } => {
            return Ok(Outcome {
                session: None,
                completed: false,
                detail: format!("{} is not ready", task.id),
            });
        }
    };
    let s = brief.session.id.clone();
    let result = work(conn, root, config, task, &params, stop);
    match result {
        Ok(Some(detail)) => {
            session::wrap(
                conn,
                root,
                config,
                &s,
                &WrapInput {
                    progress: Some((1, Some(1))),
                    ..WrapInput::default()
                },
            )?;
            Ok(Outcome {
                session: Some(s),
                completed: true,
                detail,
            })
        }
        Ok(None) => {
            session::wrap(
                conn,
                root,
                config,
                &s,
                &WrapInput {
                    next: Some(format!(
                        "Continue {}: it stopped at a checkpoint and resumes there",
                        task.id
                    )),
                    ..WrapInput::default()
                },
            )?;
            Ok(Outcome {
                session: Some(s),
                completed: false,
                detail: format!(
                    "{} stopped at a checkpoint; the next session resumes it",
                    task.id
                ),
            })
        }
        Err(e) => {
            let why = format!("{e:#}");
            let wrapped = session::wrap(
                conn,
                root,
                config,
                &s,
                &WrapInput {
                    next: Some(format!("Fix what stopped {}: {why}", task.id)),
                    ..WrapInput::default()
                },
            );
            if let Ok(t) = tasks::get(conn, &task.id)
                && matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress)
            {
                tasks::fail(conn, &task.id, &why)?;
            }
            wrapped?;
            Err(e)
        }
    }
}

/// The work itself; `None` when it stopped at a checkpoint (a signal).
fn work(
    conn: &Connection,
    root: &Root,
    config: &Config,
    task: &TaskRow,
    p: &Params,
    stop: Option<&AtomicBool>,
) -> Result<Option<String>> {
    let outputs = || {
        Outputs::new(
            root,
            Some(p.agent.as_deref().unwrap_or(&task.agent)),
            p.out.as_deref(),
        )
    };
    let files = |f: &[crate::dataset::output::WrittenFile]| {
        f.iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut progress = Progress::hidden();
    if deliverables::owns(task.kind) {
        return deliverables::run_task(
            conn,
            root,
            config,
            &task.agent,
            &task.id,
            task.kind,
            task.params.as_ref(),
        )
        .map(Some);
    }
    Ok(Some(match task.kind {
        TaskKind::Quality => {
            let mut out = outputs()?;
            let s = quality::run(conn, &config.quality, &mut out, &mut progress)?;
            format!(
                "{} pairs, {} flagged; wrote {}",
                s.pairs,
                s.flagged,
                files(&s.files)
            )
        }
        TaskKind::NearDups => {
            let mut out = outputs()?;
            let s = near_dups::run(
                conn,
                &config.near_dups,
                p.threshold,
                &mut out,
                &mut progress,
            )?;
            format!(
                "{} pairs, {} clusters holding {} pairs; wrote {}",
                s.pairs,
                s.clusters,
                s.pairs_in_clusters,
                files(&s.files)
            )
        }
        TaskKind::Coverage => {
            let path = p
                .plan
                .as_ref()
                .context("a coverage task needs params.plan")?;
            let plan = Plan::load(path)?;
            let mut out = outputs()?;
            let s = coverage::run(conn, &plan, &path.to_string_lossy(), &mut out)?;
            format!(
                "{} indicators: {} complete, {} partial, {} missing; wrote {}",
                s.indicators,
                s.complete,
                s.partial,
                s.missing,
                files(&s.files)
            )
        }
        TaskKind::ImportDb => {
            let path = p
                .path
                .as_ref()
                .context("an import_db task needs params.path")?;
            let opts = ImportOptions {
                table: p.table.clone(),
                map: p
                    .map
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or_default(),
                agent: p.agent.clone().unwrap_or_else(|| task.agent.clone()),
                checkpoint_every: config.ingest.checkpoint_every,
            };
            let r = import_db::import_path(
                conn,
                path,
                &opts,
                &mut crate::store::pairs::PairSink::new(),
                stop,
                &mut |_, _| {},
            )?;
            if r.interrupted {
                return Ok(None);
            }
            format!(
                "{}: {} rows read, {} new, {} duplicate, {} invalid",
                path.display(),
                r.pairs_seen,
                r.pairs_new,
                r.pairs_duplicate,
                r.pairs_invalid
            )
        }
        other => bail!("{} is not a workbench kind", other.as_str()),
    }))
}
