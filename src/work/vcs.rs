//! Git, through the `git` command line: is a folder inside a repository, and committing
//! exactly the given outputs (never anything else that happens to be staged, never the
//! database). A machine without a git identity still commits: `user.name` and
//! `user.email` fall back to `perpetual` / `perpetual@localhost` for that one command.
//!
//! **One committer at a time.** Wraps run at once in several processes (the loop's
//! supervisors, agents' own `session wrap`), and git allows one writer of an index: two
//! commits at once fail on `index.lock`. Every commit here holds
//! `<git dir>/perpetual-commit.lock` (an OS file lock, gone with its process) from the
//! first `git add` to the end, and a git command that still meets someone else's lock
//! file (`index.lock`, or `HEAD.lock` and a ref's lock held by the auto gc that an
//! earlier commit detached: it expires reflogs and packs refs in the background) is
//! retried with a growing pause for up to [`LOCK_RETRY_WINDOW`]; a lock left by a killed
//! git (older than 30 s) is removed. A commit that fails in the end leaves nothing
//! staged: what it staged is reset.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a commit waits for another perpetual process's commit to finish.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);
/// How long one git command that meets a foreign lock file is tried again: past
/// [`STALE_LOCK`], so that a lock a killed git left just before is removed within it.
const LOCK_RETRY_WINDOW: Duration = Duration::from_secs(40);

/// The identity used when git has none configured.
pub const FALLBACK_NAME: &str = "perpetual";
/// See [`FALLBACK_NAME`].
pub const FALLBACK_EMAIL: &str = "perpetual@localhost";

/// The top folder of the git work tree containing `dir`, or None when `dir` is not in
/// one (or git is not installed).
pub fn repository(dir: &Path) -> Option<PathBuf> {
    let out = git(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!top.is_empty()).then(|| PathBuf::from(top))
}

/// Stages `paths` (relative to `dir`; missing ones are left out) and commits only them
/// with `message`. Returns the new commit's id, or None when they hold no change.
///
/// Changes already staged under `sweep` (folders relative to `dir`) join the commit:
/// what a wrap that was killed between its `git add` and its commit left staged.
pub fn commit(
    dir: &Path,
    paths: &[PathBuf],
    sweep: &[PathBuf],
    message: &str,
) -> Result<Option<String>> {
    let mut paths: Vec<PathBuf> = paths
        .iter()
        .filter(|p| dir.join(p).exists())
        .cloned()
        .collect();
    if paths.is_empty() {
        return Ok(None);
    }
    let _lock = CommitLock::acquire(dir)?;
    let sweep: Vec<&PathBuf> = sweep.iter().filter(|p| dir.join(p).exists()).collect();
    if !sweep.is_empty() {
        let staged = run(git(dir)
            .args(["diff", "--cached", "--name-only", "--relative", "-z", "--"])
            .args(&sweep))?;
        paths.extend(
            String::from_utf8_lossy(&staged.stdout)
                .split('\0')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
        paths.sort();
        paths.dedup();
    }
    let paths: Vec<&PathBuf> = paths.iter().collect();
    retrying(|| {
        run(git(dir)
            .args(["add", "-A", "--"])
            .args(&paths)
            .arg(UNFINISHED_DOCUMENTS))
    })?;
    let result = commit_staged(dir, &paths, message);
    if result.is_err() {
        // Leave nothing staged behind a failed commit.
        let _ = retrying(|| run(git(dir).args(["reset", "-q", "--"]).args(&paths)));
    }
    result
}

fn commit_staged(dir: &Path, paths: &[&PathBuf], message: &str) -> Result<Option<String>> {
    let staged = run(git(dir)
        .args(["diff", "--cached", "--name-only", "-z", "--"])
        .args(paths))?;
    let changed: Vec<String> = String::from_utf8_lossy(&staged.stdout)
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if changed.is_empty() {
        return Ok(None);
    }
    // Names from `diff --name-only` are relative to the top of the work tree.
    let top = repository(dir).context("not inside a git repository")?;
    retrying(|| {
        let mut cmd = git(&top);
        for (key, fallback) in [("user.name", FALLBACK_NAME), ("user.email", FALLBACK_EMAIL)] {
            if !has_config(&top, key) {
                cmd.arg("-c").arg(format!("{key}={fallback}"));
            }
        }
        cmd.args(["commit", "--quiet", "-m", message, "--"])
            .args(&changed);
        run(&mut cmd)
    })?;
    let head = run(git(&top).args(["rev-parse", "HEAD"]))?;
    Ok(Some(
        String::from_utf8_lossy(&head.stdout).trim().to_string(),
    ))
}

/// Runs a git command again while it fails on someone else's lock file
/// ([`busy_lock`]: `index.lock`, `HEAD.lock`, a ref's lock) or on a file that vanished
/// under `git add` ([`vanished_under_add`]), pausing 50 ms, 100 ms, ... up to 2 s in
/// between, for up to [`LOCK_RETRY_WINDOW`]. A lock older than [`STALE_LOCK`] was left by
/// a git that was killed (SIGKILL gives it no chance to remove it, and git never does
/// later): it is removed, once, and the command tried again. Perpetual's own commits
/// hold the commit lock meanwhile, so the stale lock is not theirs.
fn retrying(f: impl FnMut() -> Result<Output>) -> Result<Output> {
    retrying_for(LOCK_RETRY_WINDOW, f)
}

fn retrying_for(window: Duration, mut f: impl FnMut() -> Result<Output>) -> Result<Output> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut cleared = false;
    loop {
        match f() {
            Err(e) => {
                let message = format!("{e:#}");
                if !busy_lock(&message) && !vanished_under_add(&message) {
                    return Err(e);
                }
                if !cleared && let Some(lock) = stale_lock(&message) {
                    tracing::warn!(
                        "removing {}: left by a git that was killed (older than {} s)",
                        lock.display(),
                        STALE_LOCK.as_secs()
                    );
                    let _ = std::fs::remove_file(&lock);
                    cleared = true;
                    continue;
                }
                if started.elapsed() + pause > window {
                    return Err(e);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            ok @ Ok(_) => return ok,
        }
    }
}

/// Git could not take a lock file another git holds: "Unable to create
/// '/repo/.git/index.lock': File exists." (and the same for `HEAD.lock` or
/// `refs/heads/main.lock` under "cannot lock ref 'HEAD'"). The 2-hour soak met
/// `HEAD.lock` held by the auto gc an earlier commit detached, expiring reflogs.
fn busy_lock(error: &str) -> bool {
    error.contains("index.lock") || error.contains(".lock': File exists")
}

/// `git add -A` met a file that vanished between its directory scan and its `stat`:
/// another writer's temporary file, renamed into place meanwhile (a concurrent wrap
/// writing `task_reports/.<name>.tmp`). Nothing is wrong; the same add a moment later
/// sees the renamed file, so it is retried like a busy `index.lock`.
fn vanished_under_add(error: &str) -> bool {
    error.contains("unable to stat") && error.contains("No such file or directory")
}

/// Leaves documents still being written out of `git add`: the temporary files of
/// [`crate::root::write_document`] (`.<name>.<pid>.<n>.tmp`). The pathspec is matched
/// while git reads the folders, so such a file is never staged and never `stat`ed,
/// whether it is renamed away meanwhile or not.
const UNFINISHED_DOCUMENTS: &str = ":(exclude,glob)**/.*.tmp";

/// A lock file older than this is taken for one a killed git left.
const STALE_LOCK: Duration = Duration::from_secs(30);

/// The lock file git's error names, when it is older than [`STALE_LOCK`].
fn stale_lock(error: &str) -> Option<PathBuf> {
    // "fatal: Unable to create '/repo/.git/index.lock': File exists."
    let start = error.find("Unable to create '")? + "Unable to create '".len();
    let path = PathBuf::from(&error[start..start + error[start..].find('\'')?]);
    if path.extension().is_none_or(|e| e != "lock") {
        return None;
    }
    let age = path.metadata().ok()?.modified().ok()?.elapsed().ok()?;
    (age > STALE_LOCK).then_some(path)
}

/// `<git dir>/perpetual-commit.lock`, held while one perpetual process commits.
struct CommitLock {
    _file: std::fs::File,
}

impl CommitLock {
    fn acquire(dir: &Path) -> Result<CommitLock> {
        let out = run(git(dir).args(["rev-parse", "--absolute-git-dir"]))?;
        let git_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let path = git_dir.join("perpetual-commit.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(CommitLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => bail!(
                    "another perpetual process held {} for {} s",
                    path.display(),
                    LOCK_PATIENCE.as_secs()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
    }
}

fn has_config(dir: &Path, key: &str) -> bool {
    git(dir)
        .args(["config", "--get", key])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Marks the git perpetual runs (`run::procs::LOOP_CHILD`): what it leaves behind
/// (git's auto gc detaches with `setsid`) is not a session's stray, and the loop never
/// counts it among a session's processes, so the signals that end a session do not
/// reach a commit under way.
const LOOP_CHILD: &str = "PERPETUAL_LOOP_CHILD";

/// A git command on `dir`.
///
/// A git that a session's own wrap starts (its environment names the session) runs in a
/// process group of its own, out of reach of the loop's `killpg` of the agent's group:
/// the 2-hour soak saw a session SIGKILLed in the middle of its own wrap take its git
/// with it, leaving `.git/index.lock` behind. And git gets SIGTERM and SIGINT back at
/// their default before its `exec`: `session wrap` ignores them, and git, which
/// installs its own handler while it holds a lock file, then deleted its lock files on
/// such a signal and carried on without them ("unable to write new index file").
/// Signalled by someone else, it now dies the way git means to, its locks removed.
fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).env(LOOP_CHILD, "1");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("PERPETUAL_SESSION").is_some() {
            cmd.process_group(0);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_still_being_written_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sh = |args: &[&str]| run(git(d).args(args)).unwrap();
        sh(&["init", "-q"]);
        sh(&["config", "user.email", "t@example.com"]);
        sh(&["config", "user.name", "t"]);
        std::fs::create_dir(d.join("task_reports")).unwrap();
        std::fs::write(d.join("task_reports/job.md"), "done\n").unwrap();
        // Another wrap's report, between its write and its rename.
        std::fs::write(d.join("task_reports/.other.md.77.0.tmp"), "half").unwrap();
        let id = commit(
            d,
            &[PathBuf::from("task_reports")],
            &[PathBuf::from("task_reports")],
            "wrap",
        )
        .unwrap()
        .expect("a commit");
        let files = sh(&["show", "--name-only", "--format=", &id]);
        assert_eq!(
            String::from_utf8_lossy(&files.stdout),
            "task_reports/job.md\n"
        );
        let staged = sh(&["diff", "--cached", "--name-only"]);
        assert!(staged.stdout.is_empty());
    }

    #[test]
    fn locks_held_by_another_git_are_busy_and_a_stale_one_is_named() {
        // The third 2-hour soak's failed wrap commits, met while an auto gc ran.
        let soak = "[\"commit\"] failed: fatal: cannot lock ref 'HEAD': Unable to create '/work/soakroot/.git/HEAD.lock': File exists.";
        assert!(busy_lock(soak));
        assert!(busy_lock(
            "fatal: Unable to create '/r/.git/refs/heads/main.lock': File exists."
        ));
        assert!(!busy_lock("fatal: not a git repository"));
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("HEAD.lock");
        std::fs::write(&lock, "").unwrap();
        let error = format!("Unable to create '{}': File exists.", lock.display());
        assert_eq!(stale_lock(&error), None, "a fresh lock is another git's");
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(stale_lock(&error), Some(lock.clone()));
        // A busy lock is tried again for the whole window, then reported.
        let started = Instant::now();
        let mut calls = 0;
        let out = retrying_for(Duration::from_millis(400), || {
            calls += 1;
            anyhow::bail!("fatal: Unable to create '/nowhere/.git/HEAD.lock': File exists.")
        });
        assert!(out.is_err());
        assert!(calls >= 3, "{calls} calls");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_file_that_vanished_under_git_add_is_retried_and_other_failures_are_not() {
        // The message of the CI soak's failed wrap commit (another wrap renamed its temp file).
        let soak = "git add failed: fatal: unable to stat 'task_reports/.well_job_1.md.tmp': No such file or directory";
        assert!(vanished_under_add(soak));
        let mut calls = 0;
        let out = retrying(|| {
            calls += 1;
            if calls < 3 {
                anyhow::bail!("{soak}")
            }
            Ok(std::process::Command::new("true").output()?)
        });
        assert!(out.is_ok());
        assert_eq!(calls, 3);
        assert!(!vanished_under_add(
            "fatal: pathspec 'outbox/zai' did not match any files"
        ));
        let mut calls = 0;
        let out = retrying(|| {
            calls += 1;
            anyhow::bail!("fatal: not a git repository")
        });
        assert!(out.is_err());
        assert_eq!(calls, 1);
    }
}
