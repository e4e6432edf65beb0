//! Backfill of archived session exports: which files belong to which session, which
//! sessions of a range are missing, and the metered ingest of the rest, in session
//! order. Files are read in place, never moved or changed.
//!
//! A file's session number comes from its content (`layout::peek_session`) or, failing
//! that, its name (`session_123.json`). Planning reads and hashes every file but
//! parses only those the ledger has not finished, so re-running a finished backfill
//! costs one read and one hash per file.

use crate::engine::ingest::{self, FileEvent, IngestReport, Job, Meter, WriterOptions};
use crate::engine::layout;
use crate::store::ledger;
use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An inclusive range of session numbers, written `101-187` (or `150` for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionRange {
    /// First session.
    pub first: i64,
    /// Last session, inclusive.
    pub last: i64,
}

impl SessionRange {
    /// Whether `n` is in the range.
    pub fn contains(&self, n: i64) -> bool {
        (self.first..=self.last).contains(&n)
    }

    /// How many sessions the range names.
    pub fn len(&self) -> u64 {
        (self.last - self.first + 1) as u64
    }

    /// Never true: a range holds at least one session.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for SessionRange {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<SessionRange> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |x: &str| -> Result<i64> {
            x.trim().parse().with_context(|| {
                format!("invalid session range {s:?}: expected FIRST-LAST, e.g. 101-187")
            })
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            bail!("invalid session range {s:?}: {first} is after {last}");
        }
        Ok(SessionRange { first, last })
    }
}

impl std::fmt::Display for SessionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The session number in a file name: `session_123.json`, `Session-123.jsonl`,
/// `export_session123.json`.
pub fn session_from_name(name: &str) -> Option<i64> {
    let lower = name.to_ascii_lowercase();
    let at = lower.rfind("session")?;
    let digits: String = lower[at + "session".len()..]
        .trim_start_matches(['_', '-', ' ', '#'])
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// One archive file and the session it belongs to.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The file, read in place.
    pub job: Job,
    /// Its session number.
    pub session: i64,
    /// The ledger has finished with it (integrated, duplicate or rejected).
    pub finished: bool,
}

/// What a backfill will do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Files in the range, by session then path.
    pub files: Vec<PlannedFile>,
    /// Sessions of the range with no file.
    pub missing: Vec<i64>,
    /// Files whose session is outside the range (left alone).
    pub outside: usize,
    /// Files with no session number in content or name (left alone).
    pub unnumbered: Vec<PathBuf>,
}

impl Plan {
    /// Sessions in the range that have at least one file.
    pub fn sessions(&self) -> BTreeSet<i64> {
        self.files.iter().map(|f| f.session).collect()
    }

    /// Sessions whose every file the ledger has finished.
    pub fn sessions_done(&self) -> BTreeSet<i64> {
        let mut open: BTreeMap<i64, bool> = BTreeMap::new();
        for f in &self.files {
            *open.entry(f.session).or_insert(true) &= f.finished;
        }
        open.into_iter()
            .filter(|(_, done)| *done)
            .map(|(s, _)| s)
            .collect()
    }

    /// The files still to integrate, in session order.
    pub fn pending(&self) -> Vec<Job> {
        self.files
            .iter()
            .filter(|f| !f.finished)
            .map(|f| f.job.clone())
            .collect()
    }
}

/// Finds the archive's files, their sessions, and what the ledger already has. Each
/// file is opened and read as the engine reads a drop ([`crate::engine::intake`]:
/// never a link, never more than `max_file_bytes + 1` bytes).
pub fn plan(
    conn: &Connection,
    dir: &Path,
    range: Option<SessionRange>,
    agent: &str,
    max_file_bytes: u64,
) -> Result<Plan> {
    let jobs = ingest::discover_paths(&[dir.to_path_buf()], Some(agent))?;
    let finished = ledger::finished_by_path(conn)?;
    let unread = ledger::unread_by_path(conn)?;
    let pool = ingest::prepare_pool();
    let sessions: Vec<(Job, Option<i64>, bool)> = pool.install(|| {
        jobs.into_par_iter()
            .map(|job| {
                let (session, done) = classify(&job, &finished, &unread, max_file_bytes);
                (job, session, done)
            })
            .collect()
    });
    let mut plan = Plan::default();
    let mut found = BTreeSet::new();
    for (job, session, finished) in sessions {
        match session {
            None => plan.unnumbered.push(job.path),
            Some(n) if range.is_some_and(|r| !r.contains(n)) => plan.outside += 1,
            Some(session) => {
                found.insert(session);
                plan.files.push(PlannedFile {
                    job,
                    session,
                    finished,
                });
            }
        }
    }
    plan.files
        .sort_by(|a, b| (a.session, &a.job.path).cmp(&(b.session, &b.job.path)));
    if let Some(r) = range {
        plan.missing = (r.first..=r.last).filter(|n| !found.contains(n)).collect();
    }
    Ok(plan)
}

/// A file's session and whether the ledger finished it, reading as little as possible.
fn classify(
    job: &Job,
    finished: &ledger::FinishedByPath,
    unread: &ledger::Unread,
    max_file_bytes: u64,
) -> (Option<i64>, bool) {
    use crate::engine::intake;
    let by_name = session_from_name(&job.name());
    let source = job.source();
    // Entries that are never read are done once the ledger says why, for that reason
    // (a link replaced by a file is a new entry).
    if let Some(reason) = &job.skip {
        return (by_name, unread.skipped.contains(&(source, reason.clone())));
    }
    let bytes = match intake::open(&job.path) {
        intake::Opened::Refused(reason) => {
            return (by_name, unread.skipped.contains(&(source, reason)));
        }
        intake::Opened::File(f) if f.size > max_file_bytes => {
            return (
                by_name,
                unread.over_limit.contains(&(source, f.size as i64)),
            );
        }
        intake::Opened::File(mut f) => intake::read_bounded(&mut f.file, f.size, max_file_bytes)
            .ok()
            .flatten(),
        _ => None,
    };
    let Some(bytes) = bytes else {
        // Not a regular file, over the limit or unreadable: the ingest says why.
        return (by_name, false);
    };
    if let Some(rows) = finished.get(&source) {
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some((_, session)) = rows.iter().find(|(h, _)| *h == hash) {
            return (session.or(by_name), true);
        }
    }
    let decoded = crate::engine::decode::decode(&bytes);
    (layout::peek_session(&decoded.text).or(by_name), false)
}

/// The outcome of one metered run over a plan.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What the ingest did.
    pub report: IngestReport,
    /// The budget as spent.
    pub meter: Option<Meter>,
    /// The budget ran out before every file was integrated.
    pub stopped: bool,
}

/// Integrates the plan's pending files in session order under `meter`, marking files
/// finished in `plan` as their commits land. `on_file` sees each finished file.
pub fn run(
    conn: &Connection,
    plan: &mut Plan,
    max_file_bytes: u64,
    opts: WriterOptions,
    meter: Option<Meter>,
    on_file: &mut dyn FnMut(&FileEvent, &Plan),
) -> Result<Outcome> {
    let pending = plan.pending();
    let index: std::collections::HashMap<PathBuf, usize> = plan
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.job.path.clone(), i))
        .collect();
    let (report, meter) =
        ingest::run_metered(conn, pending, max_file_bytes, opts, meter, &mut |event| {
            if event.status.is_some()
                && let Some(&i) = index.get(&event.path)
            {
                plan.files[i].finished = true;
            }
            on_file(event, plan);
        })?;
    let stopped = plan.files.iter().any(|f| !f.finished) && meter.is_some_and(|m| m.exhausted());
    Ok(Outcome {
        report,
        meter,
        stopped,
    })
}

/// What `perpetual backfill` is asked to do.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// The archive folder, read in place.
    pub dir: PathBuf,
    /// Only these sessions (default: every numbered file).
    pub range: Option<SessionRange>,
    /// Whose task and session it is; also the agent the pairs are credited to.
    pub agent: String,
    /// Token budget of the session (default: the agent's `tokens_per_session`).
    pub budget: Option<u64>,
}

/// What one `perpetual backfill` run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The task (`backfill_sessions_<first>_<last>`).
    pub task: String,
    /// The session the run worked in (none when there was nothing to do).
    pub session: Option<String>,
    /// The range asked for.
    pub range: Option<SessionRange>,
    /// Sessions of the range that have files: the task's total.
    pub sessions_total: u64,
    /// Of those, sessions whose every file is in the ledger.
    pub sessions_done: u64,
    /// Sessions of the range with no file.
    pub sessions_missing: Vec<i64>,
    /// Files whose session is outside the range (left alone).
    pub files_outside: usize,
    /// Files with no session number in content or name (left alone).
    pub files_unnumbered: usize,
    /// Files integrated by this run.
    pub files_integrated: u64,
    /// Files rejected by this run.
    pub files_rejected: u64,
    /// Files whose bytes were integrated before.
    pub files_duplicate: u64,
    /// Pairs stored for the first time.
    pub pairs_new: u64,
    /// Valid pairs already stored.
    pub pairs_duplicate: u64,
    /// Invalid pairs.
    pub pairs_invalid: u64,
    /// Estimated tokens this run spent (characters / 4 of each pair written).
    pub tokens: u64,
    /// The session's tokens after the run.
    pub session_tokens: u64,
    /// The session's token budget.
    pub budget: u64,
    /// Seconds of ingest.
    pub seconds: f64,
    /// Pairs written per second.
    pub pairs_per_second: f64,
    /// The run stopped at the wrap threshold and wrapped; run again to continue.
    pub wrapped: bool,
    /// The task is complete (and graded).
    pub completed: bool,
    /// The grade, when this run completed the task.
    pub grade: Option<String>,
    /// The handoff the wrap wrote.
    pub handoff: Option<PathBuf>,
    /// The wrap's steps (backup, handoff, commit, ...).
    pub wrap_steps: Vec<crate::work::session::Step>,
    /// Peak resident memory of the process (KiB, Linux), filled in by the command.
    pub peak_rss_kb: Option<u64>,
    /// No file of the range was found: nothing was started (no task, no session).
    pub nothing_to_backfill: bool,
}

/// The task a backfill runs as: `backfill_sessions_101_187`, or `backfill_<folder>`
/// without a range.
pub fn task_id(range: Option<SessionRange>, dir: &Path) -> String {
    match range {
        Some(r) => format!("backfill_sessions_{}_{}", r.first, r.last),
        None => {
            let name: String = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("backfill_{}", name.trim_matches('_'))
        }
    }
}

/// Runs (or resumes) a backfill as a task inside a session of `opts.agent`: creates the
/// task if missing (progress = sessions done / sessions of the range that have files),
/// starts a session (or continues the agent's active one on this task), integrates the
/// pending files in session order, charging each pair its estimated tokens, records a
/// session checkpoint every `checkpoint_every` pairs, and wraps the session (backup,
/// handoff, commit): either at the wrap threshold of the token budget, after the
/// current batch (`wrapped`), or when every file is in, which completes and grades the
/// task (`completed`). `on_file` sees each finished file.
pub fn run_task(
    conn: &mut Connection,
    root: &crate::root::Root,
    config: &crate::config::Config,
    opts: &TaskOptions,
    on_file: &mut dyn FnMut(&FileEvent, &Plan),
) -> Result<Summary> {
    use crate::store::tasks::TaskStatus;
    use crate::work::session::{self, CheckpointInput, StartOptions, StartOutcome, WrapInput};

    let id = task_id(opts.range, &opts.dir);
    let mut plan = plan(
        conn,
        &opts.dir,
        opts.range,
        &opts.agent,
        config.ingest.max_file_bytes,
    )?;
    let total = plan.sessions().len() as u64;
    let mut summary = Summary {
        task: id.clone(),
        session: None,
        range: opts.range,
        sessions_total: total,
        sessions_done: plan.sessions_done().len() as u64,
        sessions_missing: plan.missing.clone(),
        files_outside: plan.outside,
        files_unnumbered: plan.unnumbered.len(),
        files_integrated: 0,
        files_rejected: 0,
        files_duplicate: 0,
        pairs_new: 0,
        pairs_duplicate: 0,
        pairs_invalid: 0,
        tokens: 0,
        session_tokens: 0,
        budget: 0,
        seconds: 0.0,
        pairs_per_second: 0.0,
        wrapped: false,
        completed: false,
        grade: None,
        handoff: None,
        wrap_steps: Vec::new(),
        peak_rss_kb: None,
        nothing_to_backfill: false,
    };
    if total == 0 {
        // No file in the range (or no numbered file at all): nothing to do, so no
        // task and no session either.
        summary.nothing_to_backfill = true;
        return Ok(summary);
    }

    match crate::store::tasks::get(conn, &id)? {
        None => {
            // Characters / 4 ≈ bytes / 4 for the mostly ASCII text of an archive.
            let bytes: u64 = plan
                .files
                .iter()
                .filter(|f| !f.finished)
                .filter_map(|f| std::fs::metadata(&f.job.path).ok())
                .map(|m| m.len())
                .sum();
            crate::work::tasks::add(
                conn,
                &crate::work::tasks::AddTask {
                    id: id.clone(),
                    agent: opts.agent.clone(),
                    priority: Some(1),
                    after: Vec::new(),
                    description: Some(format!(
                        "Backfill {} from {}",
                        opts.range
                            .map_or("every session".to_string(), |r| format!("sessions {r}")),
                        opts.dir.display()
                    )),
                    estimated_tokens: Some(bytes.div_ceil(4)),
                    total: Some(total),
                    // What `perpetual run` needs to run it again (Params).
                    kind: crate::store::tasks::TaskKind::Backfill,
                    params: Some(
                        Params {
                            dir: std::path::absolute(&opts.dir)?,
                            sessions: opts.range,
                            budget: opts.budget,
                        }
                        .to_json(),
                    ),
                },
                |id, _, params| check_params(id, params),
            )?;
        }
        Some(t) if t.agent != opts.agent => bail!(
            "task {id} belongs to agent {}, not {}; pass --agent {}",
            t.agent,
            opts.agent,
            t.agent
        ),
        Some(t) if t.status == TaskStatus::Completed => {
            let pending = plan.files.iter().filter(|f| !f.finished).count();
            if pending > 0 {
                bail!(
                    "task {id} is completed, but {pending} file(s) of its range are not in the ledger; \
                     back them up under a new range or a new folder"
                );
            }
            summary.completed = true;
            summary.grade = t.grade.map(|g| g.letter.to_string());
            return Ok(summary);
        }
        Some(t) if t.status == TaskStatus::Failed => bail!(
            "task {id} failed ({}); `perpetual task retry {id}` queues it again",
            t.fail_reason.as_deref().unwrap_or("no reason recorded")
        ),
        Some(_) => {}
    }

    // The agent's active session on this task (a run killed before its wrap), else a new one.
    let active = crate::store::sessions::active(conn, Some(&opts.agent))?
        .into_iter()
        .find(|s| s.task_id.as_deref() == Some(id.as_str()));
    let session_id = match active {
        Some(s) => s.id,
        None => match session::start(
            conn,
            config,
            &StartOptions {
                agent: opts.agent.clone(),
                task: Some(id.clone()),
                token_budget: opts.budget,
                loop_run: false,
            },
        )? {
            StartOutcome::Started(brief) => brief.session.id,
            StartOutcome::NothingReady { pending, .. } => {
                let why = pending
                    .iter()
                    .find(|t| t.task.id == id)
                    .and_then(|t| t.why.clone())
                    .unwrap_or_else(|| "it is not ready".to_string());
                bail!("cannot start a session on {id}: {why}")
            }
            StartOutcome::OverBudget {
                usage, resets_at, ..
            } => bail!(
                "agent {} is over budget ({:?} at {:.1}%){}",
                opts.agent,
                usage.kind,
                usage.percent,
                resets_at.map_or(String::new(), |r| format!("; it resets at {r}"))
            ),
        },
    };
    summary.session = Some(session_id.clone());
    let started = session::get(conn, &session_id)?;
    let budget = started.budget.tokens_per_session;
    let wrap_at = (budget as f64
        * config
            .thresholds_of(&started.agent)
            .of(crate::budget::Kind::Tokens)
            .wrap
        / 100.0)
        .floor() as u64;
    summary.budget = budget;

    // A budget of 0 is no limit, as everywhere: the meter only counts.
    let meter = Meter {
        limit: if budget == 0 {
            u64::MAX
        } else {
            wrap_at.saturating_sub(started.tokens_used)
        },
        used: 0,
    };
    let ledger_before = crate::store::ledger::mark(conn)?;
    let outcome = if meter.limit == 0 {
        // Already at the wrap threshold: wrap without writing.
        None
    } else {
        // Session checkpoints go through a second connection: the writer holds this
        // one, and calls back between its transactions.
        let mut book = crate::store::open(&root.db_path())?;
        let every = config.ingest.checkpoint_every as u64;
        let (mut since, mut spent) = (0u64, 0u64);
        Some(run(
            conn,
            &mut plan,
            config.ingest.max_file_bytes,
            WriterOptions {
                checkpoint_every: config.ingest.checkpoint_every,
            },
            Some(meter),
            &mut |event, plan| {
                spent += event.tokens;
                since += event.new + event.duplicate + event.invalid;
                on_file(event, plan);
                if since >= every {
                    since = 0;
                    let done = plan.sessions_done().len() as u64;
                    let checkpoint = session::checkpoint(
                        &mut book,
                        config,
                        &session_id,
                        &CheckpointInput {
                            progress: Some((done, Some(total))),
                            tokens: Some(started.tokens_used + spent),
                            api_calls: 0,
                            note: Some(format!("{done}/{total} sessions backfilled")),
                        },
                    );
                    if let Err(e) = checkpoint {
                        tracing::warn!("cannot record a session checkpoint: {e:#}");
                    }
                }
            },
        )?)
    };

    // The files this run integrated are the session's: its pairs, counted exactly.
    crate::store::ledger::tag_session(conn, &session_id, &ledger_before)?;
    let used = outcome.as_ref().and_then(|o| o.meter).map_or(0, |m| m.used);
    let done = plan.sessions_done();
    summary.sessions_done = done.len() as u64;
    summary.tokens = used;
    summary.session_tokens = started.tokens_used + used;
    if let Some(o) = &outcome {
        let r = &o.report;
        summary.files_integrated = r.files_integrated;
        summary.files_rejected = r.files_rejected;
        summary.files_duplicate = r.files_duplicate;
        summary.pairs_new = r.pairs_new;
        summary.pairs_duplicate = r.pairs_duplicate;
        summary.pairs_invalid = r.pairs_invalid;
        summary.seconds = r.seconds;
        summary.pairs_per_second = r.pairs_per_second;
    }
    let left: Vec<i64> = plan
        .sessions()
        .into_iter()
        .filter(|s| !done.contains(s))
        .collect();
    let missing = if plan.missing.is_empty() {
        String::new()
    } else {
        format!(" Sessions with no file: {}.", compact(&plan.missing))
    };
    let next = match left.first() {
        None => format!("Backfill of {id} complete.{missing}"),
        Some(first) => format!(
            "Run `perpetual backfill {}{} --agent {}` again: {} of {total} sessions left, from session {first}.{missing}",
            opts.dir.display(),
            opts.range
                .map_or(String::new(), |r| format!(" --sessions {r}")),
            opts.agent,
            left.len()
        ),
    };
    let wrap = session::wrap(
        conn,
        root,
        config,
        &session_id,
        &WrapInput {
            tokens: Some(summary.session_tokens),
            progress: Some((summary.sessions_done, Some(total))),
            next: Some(next),
        },
    )?;
    summary.wrapped =
        !left.is_empty() && (meter.limit == 0 || outcome.as_ref().is_some_and(|o| o.stopped));
    summary.completed = wrap.completed.is_some();
    summary.grade = wrap.completed.as_ref().map(|c| c.grade.letter.to_string());
    summary.handoff = wrap.handoff.clone();
    summary.wrap_steps = wrap.steps;
    Ok(summary)
}

/// `101-103, 105, 110-112`: a sorted list of numbers with runs collapsed.
pub fn compact(numbers: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        while i + 1 < numbers.len() && numbers[i + 1] == numbers[i] + 1 {
            i += 1;
        }
        parts.push(if numbers[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", numbers[i])
        });
        i += 1;
    }
    parts.join(", ")
}

/// What a `backfill` task records in its `params` (JSON), so that `perpetual run` can
/// call [`run_task`] with the same options `perpetual backfill` had:
///
/// ```json
/// {"dir": "/abs/path/to/archive", "sessions": "101-187", "budget": 50000}
/// ```
///
/// `dir` is absolute; `sessions` (a [`SessionRange`]) and `budget` (the session's token
/// budget) may be left out. The agent is the task's agent, and the task's id must be
/// [`task_id`] of the range and folder, because that is the task
/// `run_task` works on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The archive folder, absolute.
    pub dir: PathBuf,
    /// Only these sessions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "range_text::serialize",
        deserialize_with = "range_text::deserialize"
    )]
    pub sessions: Option<SessionRange>,
    /// The session's token budget (default: the agent's `tokens_per_session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u64>,
}

impl Params {
    /// The params as stored.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    /// Reads a task's params.
    pub fn of(task: &crate::store::tasks::TaskRow) -> Result<Params> {
        let p = task
            .params
            .clone()
            .with_context(|| format!("backfill task {} has no params (dir, sessions)", task.id))?;
        serde_json::from_value(p)
            .with_context(|| format!("backfill task {}: invalid params", task.id))
    }

    /// The options `backfill::run_task` takes, for `agent`.
    pub fn task_options(&self, agent: &str) -> TaskOptions {
        TaskOptions {
            dir: self.dir.clone(),
            range: self.sessions,
            agent: agent.to_string(),
            budget: self.budget,
        }
    }
}

/// A session range as its text, `101-187`, in JSON.
mod range_text {
    use super::SessionRange;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Option<SessionRange>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Some(r) => s.serialize_str(&r.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SessionRange>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Checks a backfill task's params before it is stored: complete, an absolute folder,
/// and the id [`task_id`] gives, because that is the task `run_task` works on.
pub fn check_params(id: &str, params: Option<&serde_json::Value>) -> Result<()> {
    let p: Params = serde_json::from_value(
        params
            .cloned()
            .with_context(|| format!("backfill task {id} needs params: dir (and sessions)"))?,
    )
    .with_context(|| format!("backfill task {id}: invalid params"))?;
    ensure!(
        p.dir.is_absolute(),
        "backfill task {id}: dir must be absolute, got {}",
        p.dir.display()
    );
    let want = task_id(p.sessions, &p.dir);
    ensure!(
        id == want,
        "a backfill task's id follows its range (or folder): call it {want}, not {id}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            "101-187".parse::<SessionRange>().unwrap(),
            SessionRange {
                first: 101,
                last: 187
            }
        );
        assert_eq!("150".parse::<SessionRange>().unwrap().len(), 1);
        assert!("187-101".parse::<SessionRange>().is_err());
        assert!("a-b".parse::<SessionRange>().is_err());
    }

    #[test]
    fn compact_runs() {
        assert_eq!(
            compact(&[101, 102, 103, 105, 110, 111]),
            "101-103, 105, 110-111"
        );
        assert_eq!(compact(&[]), "");
    }

    #[test]
    fn task_ids() {
        let r = SessionRange {
            first: 101,
            last: 187,
        };
        assert_eq!(
            task_id(Some(r), Path::new("/x")),
            "backfill_sessions_101_187"
        );
        assert_eq!(
            task_id(None, Path::new("/a/Old Sessions")),
            "backfill_old_sessions"
        );
    }

    #[test]
    fn names() {
        for (name, want) in [
            ("session_123.json", Some(123)),
            ("Session-7.jsonl", Some(7)),
            ("export_session150_final.json", Some(150)),
            ("batch_12.json", None),
            ("session_.json", None),
        ] {
            assert_eq!(session_from_name(name), want, "{name}");
        }
    }

    #[test]
    fn backfill_params_round_trip_and_name_the_task() {
        let p = Params {
            dir: PathBuf::from("/archive/old"),
            sessions: Some("101-187".parse().unwrap()),
            budget: None,
        };
        let json = p.to_json();
        assert_eq!(
            json,
            serde_json::json!({"dir": "/archive/old", "sessions": "101-187"})
        );
        assert_eq!(serde_json::from_value::<Params>(json).unwrap(), p);
        let mut conn = crate::store::open_in_memory().unwrap();
        let add = |conn: &mut Connection, id: &str, params: Option<serde_json::Value>| {
            crate::work::tasks::add(
                conn,
                &crate::work::tasks::AddTask {
                    id: id.into(),
                    agent: "a".into(),
                    kind: crate::store::tasks::TaskKind::Backfill,
                    params,
                    ..Default::default()
                },
                |id, _, params| check_params(id, params),
            )
        };
        let err = add(&mut conn, "mine", Some(p.to_json())).unwrap_err();
        assert!(
            err.to_string().contains("backfill_sessions_101_187"),
            "{err}"
        );
        assert!(add(&mut conn, "backfill_sessions_101_187", None).is_err());
        add(&mut conn, "backfill_sessions_101_187", Some(p.to_json())).unwrap();
        let t = crate::work::tasks::get(&conn, "backfill_sessions_101_187").unwrap();
        assert_eq!(t.kind, crate::store::tasks::TaskKind::Backfill);
        assert_eq!(Params::of(&t).unwrap(), p);
    }
}
