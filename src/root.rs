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
    pub fn ensure_layout(&self, config: &Config) -> Result<()> {
        for agent in config.agents.keys() {
            for dir in [self.inbox_of(agent), self.outbox_of(agent)] {
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
pub fn write_document(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
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
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                };
                bail!(
                    "{} is already being written by {holder}; only one writer per root (stats, files and status still work)",
                    path.parent().unwrap_or(path).display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(
            file,
            "pid {} (`perpetual {command}`, since {})",
            std::process::id(),
            crate::clock::now_rfc3339()
        )?;
        file.flush()?;
        Ok(WriterLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
