//! Git, through the `git` command line: is a folder inside a repository, and committing
//! exactly the given outputs (never anything else that happens to be staged, never the
//! database). A machine without a git identity still commits: `user.name` and
//! `user.email` fall back to `perpetual` / `perpetual@localhost` for that one command.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
pub fn commit(dir: &Path, paths: &[PathBuf], message: &str) -> Result<Option<String>> {
    let paths: Vec<&PathBuf> = paths.iter().filter(|p| dir.join(p).exists()).collect();
    if paths.is_empty() {
        return Ok(None);
    }
    run(git(dir).args(["add", "-A", "--"]).args(&paths))?;
    let staged = run(git(dir)
        .args(["diff", "--cached", "--name-only", "-z", "--"])
        .args(&paths))?;
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
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(&top);
    for (key, fallback) in [("user.name", FALLBACK_NAME), ("user.email", FALLBACK_EMAIL)] {
        if !has_config(&top, key) {
            cmd.arg("-c").arg(format!("{key}={fallback}"));
        }
    }
    cmd.args(["commit", "--quiet", "-m", message, "--"])
        .args(&changed);
    run(&mut cmd)?;
    let head = run(git(&top).args(["rev-parse", "HEAD"]))?;
    Ok(Some(
        String::from_utf8_lossy(&head.stdout).trim().to_string(),
    ))
}

fn has_config(dir: &Path, key: &str) -> bool {
    git(dir)
        .args(["config", "--get", key])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
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
