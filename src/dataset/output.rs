//! Where the workbench's deliverables go and how they are written, and the progress a
//! person sees while it works.
//!
//! - **Where**: `outbox/<agent>/` (the agent defaults to [`DEFAULT_AGENT`], the seeds'
//!   worker for data work), or a folder given with `--out`. The wrap of a session
//!   commits `outbox/<agent>/`, so deliverables made in a session are committed with it.
//! - **How**: each file is written under a temporary name beside its final one and
//!   renamed into place, so a reader never sees half a report; its size and blake3 are
//!   recorded for the run manifest. The same database gives the same bytes: rows are
//!   read in id order, every map is ordered, seeds are fixed, and timestamps go only in
//!   the manifest (`dataset_runs`), never in a deliverable.
//! - **Progress**: a bar on a terminal (indicatif), a plain line on stderr every two
//!   seconds otherwise, nothing inside `perpetual run`.

use crate::root::Root;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The agent whose outbox receives deliverables when none is named.
pub const DEFAULT_AGENT: &str = "zai";

/// One file a run wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrittenFile {
    /// Its path: relative to the root when it is inside it, else absolute.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

/// The folder a run writes into, and what it wrote there.
#[derive(Debug)]
pub struct Outputs {
    root: PathBuf,
    dir: PathBuf,
    written: Vec<WrittenFile>,
}

impl Outputs {
    /// `out` when given, else `outbox/<agent>/` (agent default [`DEFAULT_AGENT`]); created
    /// when missing.
    pub fn new(root: &Root, agent: Option<&str>, out: Option<&Path>) -> Result<Outputs> {
        let dir = match out {
            Some(dir) => {
                if dir.is_absolute() {
                    dir.to_path_buf()
                } else {
                    std::env::current_dir()?.join(dir)
                }
            }
            None => {
                let agent = agent.unwrap_or(DEFAULT_AGENT);
                crate::root::check_agent_name(agent)?;
                root.outbox_of(agent)
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        Ok(Outputs {
            root: root.dir().to_path_buf(),
            dir,
            written: Vec::new(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` (which may contain `/`) with `bytes`.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let mut sink = self.create(name)?;
        sink.write_all(bytes)?;
        self.commit(sink)
    }

    /// Writes `value` as pretty JSON with a final newline.
    pub fn write_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<PathBuf> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        self.write(name, &bytes)
    }

    /// Starts writing `name` under a temporary name; [`Outputs::commit`] puts it in place.
    pub fn create(&self, name: &str) -> Result<FileSink> {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.partial"));
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(FileSink {
            out: BufWriter::with_capacity(1 << 16, file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
            tmp,
            path,
        })
    }

    /// Flushes a file begun with [`Outputs::create`] and renames it into place.
    pub fn commit(&mut self, sink: FileSink) -> Result<PathBuf> {
        let FileSink {
            out,
            hasher,
            bytes,
            tmp,
            path,
        } = sink;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        let shown = path
            .strip_prefix(&self.root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        self.written.push(WrittenFile {
            path: shown,
            bytes,
            blake3: hasher.finalize().to_hex().to_string(),
        });
        Ok(path)
    }

    /// Every file written so far, in the order written.
    pub fn files(&self) -> &[WrittenFile] {
        &self.written
    }
}

/// A file being written: buffered, hashed as it goes.
pub struct FileSink {
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    bytes: u64,
    tmp: PathBuf,
    path: PathBuf,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Progress of a long step, as a person sees it: a bar on a terminal, a plain line on
/// stderr every two seconds otherwise, or nothing ([`Progress::hidden`]).
pub struct Progress {
    label: String,
    visible: bool,
    bar: Option<ProgressBar>,
    stage: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// Progress shown on stderr for the command `label`.
    pub fn shown(label: &str) -> Progress {
        Progress::new(label, true)
    }

    /// No progress at all (the loop runs the workbench in-process, logging one line).
    pub fn hidden() -> Progress {
        Progress::new("", false)
    }

    fn new(label: &str, visible: bool) -> Progress {
        Progress {
            label: label.to_string(),
            visible,
            bar: None,
            stage: String::new(),
            total: 0,
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Starts a step of `total` units (pairs, candidates...).
    pub fn stage(&mut self, name: &str, total: u64) {
        self.finish();
        self.stage = name.to_string();
        self.total = total;
        self.done = 0;
        self.started = Instant::now();
        self.last_line = Instant::now();
        if self.visible && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:30} {human_pos}/{human_len} {per_sec}  ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(format!("{}: {name}", self.label));
            self.bar = Some(bar);
        }
    }

    /// `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if self.visible && self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "{}: {} {}/{} ({}/s)",
                self.label,
                self.stage,
                crate::human::thousands(self.done),
                crate::human::thousands(self.total),
                crate::human::thousands(rate as u64)
            );
        }
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Rounds to 4 decimals, the precision every similarity and score is shown with, so the
/// same inputs always print the same digits.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_whole_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let mut out = Outputs::new(&root, None, None).unwrap();
        assert!(out.dir().ends_with("outbox/zai"));
        out.write("a/b.txt", b"hello").unwrap();
        let f = &out.files()[0];
        assert_eq!(f.path, "outbox/zai/a/b.txt");
        assert_eq!(f.bytes, 5);
        assert_eq!(f.blake3, blake3::hash(b"hello").to_hex().to_string());
        let names: Vec<_> = std::fs::read_dir(out.dir().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b.txt"], "no temporary file left");
        assert!(Outputs::new(&root, Some("../x"), None).is_err());
    }
}
