//! Backfill of archived session exports: which files belong to which session, which
//! sessions of a range are missing, and the metered ingest of the rest, in session
//! order. Files are read in place, never moved or changed.
//!
//! A file's session number comes from its content (`layout::peek_session`) or, failing
//! that, its name (`session_123.json`). Planning reads and hashes every file but
//! parses only those the ledger has not finished, so re-running a finished backfill
//! costs one read and one hash per file.

use crate::ingest::{self, FileEvent, IngestReport, Job, Meter, WriterOptions};
use crate::layout;
use crate::store::ledger;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
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

/// Finds the archive's files, their sessions, and what the ledger already has.
pub fn plan(
    conn: &Connection,
    dir: &Path,
    range: Option<SessionRange>,
    agent: &str,
) -> Result<Plan> {
    let jobs = ingest::discover_paths(&[dir.to_path_buf()], Some(agent))?;
    let finished = ledger::finished_by_path(conn)?;
    let pool = ingest::prepare_pool();
    let sessions: Vec<(Job, Option<i64>, bool)> = pool.install(|| {
        jobs.into_par_iter()
            .map(|job| {
                let (session, done) = classify(&job, &finished);
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
fn classify(job: &Job, finished: &ledger::FinishedByPath) -> (Option<i64>, bool) {
    let by_name = session_from_name(&job.name());
    let Ok(bytes) = std::fs::read(&job.path) else {
        // Unreadable now: the ingest will say why.
        return (by_name, false);
    };
    let source = job.path.to_string_lossy();
    if let Some(rows) = finished.get(source.as_ref()) {
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some((_, session)) = rows.iter().find(|(h, _)| *h == hash) {
            return (session.or(by_name), true);
        }
    }
    let decoded = crate::decode::decode(&bytes);
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
}
