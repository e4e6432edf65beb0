//! The working directory (`--root`): where each file lives, creating what is missing,
//! and the writer lock that keeps one writing process per root.

use crate::config::{Config, DEFAULT_TOML};
use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Names of the folders inside `inbox/<agent>/` that hold finished files.
pub const PROCESSED: &str = "processed";
/// See [`PROCESSED`].
pub const REJECTED: &str = "rejected";

/// A perpetual working directory.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// A root at `dir`, which is created when missing. Nothing else is touched.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Root> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create root {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve root {}", dir.display()))?;
        Ok(Root { dir })
    }

    /// An existing root: `dir` must hold `perpetual.toml` or `perpetual.db`. What the
    /// read-only commands open, so a mistyped `--root` is an error, never a new root.
    pub fn existing(dir: impl Into<PathBuf>) -> Result<Root> {
        let dir = dir.into();
        if !Root::is_root(&dir) {
            bail!(
                "{} is not a perpetual root (no perpetual.toml or perpetual.db there); \
                 `perpetual --root {} init` creates one",
                dir.display(),
                dir.display()
            );
        }
        Root::at(dir)
    }

    /// The folder `dir`, which must exist; nothing is created.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Root> {
        let dir = dir.into();
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open root {}", dir.display()))?;
        Ok(Root { dir })
    }

    /// Whether `dir` holds a root (`perpetual.toml` or `perpetual.db`).
    pub fn is_root(dir: &Path) -> bool {
        dir.join("perpetual.toml").is_file() || dir.join("perpetual.db").is_file()
    }

    /// The nearest root at or above `start` (the way git finds its repository), for
    /// commands run from inside a project without `--root`.
    pub fn find(start: &Path) -> Option<Root> {
        let start = start.canonicalize().ok()?;
        start.ancestors().find(|d| Root::is_root(d)).map(|d| Root {
            dir: d.to_path_buf(),
        })
    }

    /// The root directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `perpetual.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("perpetual.toml")
    }
    /// `perpetual.db`.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("perpetual.db")
    }
    /// `inbox/`.
    pub fn inbox(&self) -> PathBuf {
        self.dir.join("inbox")
    }
    /// `inbox/<agent>/`.
    pub fn inbox_of(&self, agent: &str) -> PathBuf {
        self.inbox().join(agent)
    }
    /// `outbox/<agent>/`.
    pub fn outbox_of(&self, agent: &str) -> PathBuf {
        self.dir.join("outbox").join(agent)
    }
    /// `session_handoffs/`.
    pub fn handoffs_dir(&self) -> PathBuf {
        self.dir.join("session_handoffs")
    }
    /// `task_reports/`.
    pub fn reports_dir(&self) -> PathBuf {
        self.dir.join("task_reports")
    }
    /// `backups/`.
    pub fn backups_dir(&self) -> PathBuf {
        self.dir.join("backups")
    }
    /// The writer lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("perpetual.lock")
    }
    /// `.perpetual/`: what `perpetual run` keeps beside the database for the agents it
    /// starts (prompts, wrap requests, the commands' output).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".perpetual")
    }
    /// `.perpetual/wrap_<session>`: present while perpetual asks the session to wrap.
    pub fn wrap_flag(&self, session: &str) -> PathBuf {
        self.state_dir().join(format!("wrap_{session}"))
    }
    /// `.perpetual/prompts/<session>.md`: the prompt the session's command was given.
    pub fn prompt_path(&self, session: &str) -> PathBuf {
        self.state_dir()
            .join("prompts")
            .join(format!("{session}.md"))
    }
    /// `.perpetual/logs/<session>.log`: the session command's stdout and stderr.
    pub fn command_log(&self, session: &str) -> PathBuf {
        self.state_dir().join("logs").join(format!("{session}.log"))
    }

    /// Reads the configuration (defaults when the file is missing).
    pub fn config(&self) -> Result<Config> {
        Config::load(&self.config_path())
    }

    /// Creates the folders the configuration names (inbox and outbox of every agent).
    /// Something else already in an agent folder's place (a file, a link, even a
    /// dangling one) is left alone: the engine reports it, and no command fails for it.
    pub fn ensure_layout(&self, config: &Config) -> Result<()> {
        for agent in config.agents.keys() {
            for dir in [self.inbox_of(agent), self.outbox_of(agent)] {
                if dir.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        Ok(())
    }

    /// Writes the documented default `perpetual.toml` unless one exists.
    /// Returns whether it wrote one.
    pub fn write_default_config(&self) -> Result<bool> {
        let path = self.config_path();
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(DEFAULT_TOML.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// Every agent with an inbox folder, plus every configured agent, sorted.
    pub fn agents(&self, config: &Config) -> Result<Vec<String>> {
        let mut agents: Vec<String> = config.agents.keys().cloned().collect();
        match std::fs::read_dir(self.inbox()) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    if !entry.file_type()?.is_dir() {
                        continue;
                    }
                    if let Some(name) = entry.file_name().to_str()
                        && check_agent_name(name).is_ok()
                    {
                        agents.push(name.to_string());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("cannot list inbox/"),
        }
        agents.sort();
        agents.dedup();
        Ok(agents)
    }

    /// Takes the writer lock, or fails at once naming the process that holds it.
    pub fn lock_writer(&self, command: &str) -> Result<WriterLock> {
        WriterLock::acquire(&self.lock_path(), command)
    }
}

/// Writes a document (handoff, report) whole or not at all: a temporary name beside
/// it, then a rename. Creates the folder.
///
/// The temporary name is `.<name>.<pid>.<n>.tmp`, unique to this writer, so two
/// writers of one document (two sessions wrapping on one task) never write into or
/// rename away each other's temporary file: the last rename wins, whole. Wrap commits
/// leave these names out of `git add` ([`crate::work::vcs`]'s exclude pathspec).
pub fn write_document(path: &Path, text: &str) -> Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Agent names become folder names: keep them to a safe alphabet.
pub fn check_agent_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name != PROCESSED
        && name != REJECTED
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        bail!(
            "invalid agent name {name:?}: use letters, digits, `_`, `-` and `.`, not starting with `.`"
        );
    }
    Ok(())
}

/// Held while a process writes to a root (`watch`, `ingest`, `backfill`, `run`).
/// The lock is an OS file lock, so it disappears with the process, even after `kill -9`.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    fn acquire(path: &Path, command: &str) -> Result<WriterLock> {
        // Not truncating on open: the current holder's description must survive
        // until we actually own the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = holder_of(&mut file);
                bail!(
                    "{} is already being written by {holder}; only one writer per root (stats, files and status still work)",
                    path.parent().unwrap_or(path).display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // Written over the old description, then cut to length: the file is never
        // empty while a loser of a start-up race reads it.
        let text = format!(
            "pid {} (`perpetual {command}`, since {})\n",
            std::process::id(),
            crate::clock::now_rfc3339()
        );
        let described = file
            .rewind()
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.set_len(text.len() as u64))
            .and_then(|()| file.flush());
        described.with_context(|| format!("cannot write the lock file {}", path.display()))?;
        Ok(WriterLock { _file: file })
    }
}

/// Who holds the lock on `file`: the description the holder wrote. In a start-up race
/// the holder may not have written it yet, so it is read again for a moment; failing
/// that, the kernel's table of locks (`/proc/locks`) names the holder's pid and its
/// command line.
fn holder_of(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            let text = text.trim();
            if !text.is_empty() {
                return text.to_string();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    lock_holder_pid(file)
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            if cmdline.is_empty() {
                format!("pid {pid}")
            } else {
                format!("pid {pid} (`{cmdline}`)")
            }
        })
        .unwrap_or_else(|| "another process (it has not said which yet)".to_string())
}

/// The pid that holds a lock on `file`, from `/proc/locks` (Linux), found by the
/// file's device and inode.
fn lock_holder_pid(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
        let mut id = fields[at].split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && inode == ino)
            .then(|| fields.get(at.checked_sub(1)?)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writers_of_one_document_never_fail_and_leave_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task_reports").join("job.md");
        let texts = ["a".repeat(64 * 1024), "b".repeat(96 * 1024)];
        std::thread::scope(|s| {
            for text in &texts {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..200 {
                        write_document(path, text).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(texts.contains(&last), "a document mixed from two writers");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["job.md"], "temporary files left behind");
    }

    #[test]
    fn a_lock_taken_but_not_yet_described_is_named_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        // The winner of a start-up race, between its lock and its description.
        let held = File::create(root.lock_path()).unwrap();
        held.try_lock().unwrap();
        let err = root.lock_writer("ingest").unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let _held = root.lock_writer("watch").unwrap();
        let err = root.lock_writer("ingest").unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("perpetual watch"), "{err}");
    }

    #[test]
    fn agent_names() {
        for good in ["droid", "claude_code", "zai-2", "a.b"] {
            assert!(check_agent_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "processed", "rejected", "a/b", "a b"] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }
}
