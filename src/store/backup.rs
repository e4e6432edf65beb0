//! Consistent copies of the live database through SQLite's online backup API, and
//! their rotation. Copying `perpetual.db` with the file system while a writer runs
//! could catch a half-checkpointed WAL; the backup API instead copies the pages of one
//! read snapshot. In WAL mode that read snapshot does not block the writer, so a
//! backup can run while `ingest` writes.

use anyhow::{Context, Result, bail};
use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Backups made by [`backup_into`] are named `perpetual_<stamp>.db`.
pub const PREFIX: &str = "perpetual_";
/// See [`PREFIX`].
pub const SUFFIX: &str = ".db";

/// Copies the database `src` is connected to into `dest` (a new file), consistently.
/// Writes to a temporary name beside `dest` and renames it into place, so `dest`
/// exists only once complete.
pub fn backup(src: &Connection, dest: &Path) -> Result<()> {
    let name = dest
        .file_name()
        .with_context(|| format!("backup path {} has no file name", dest.display()))?;
    // The pid in the name: a copy cut short by a kill is recognised and deleted by the
    // next rotation (its process is gone), never mistaken for one still being written.
    let tmp = dest.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = copy(src, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}

fn copy(src: &Connection, tmp: &Path) -> Result<()> {
    let mut dst =
        Connection::open(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    {
        let backup = Backup::new(src, &mut dst).context("cannot start the online backup")?;
        // All pages in one step: one read snapshot of the source, so a writer that
        // commits meanwhile cannot make the copy restart (it would with small steps).
        let mut waits = 0;
        loop {
            match backup.step(-1).context("online backup failed")? {
                StepResult::Done => break,
                StepResult::More => {}
                // Busy, Locked (the enum is non-exhaustive): wait and try again.
                _ => {
                    waits += 1;
                    if waits > 400 {
                        bail!("the database stayed locked for 20 s; backup abandoned");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    // The copy carries the source's WAL flag; a backup is better as one self-contained
    // file that opens read-only anywhere, so switch it to a rollback journal.
    let _mode: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    dst.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// Backs the database up into `dir` as `perpetual_<stamp>.db` and deletes all but the
/// newest `keep` backups there (by name, which sorts by stamp). Returns the new path.
pub fn backup_into(src: &Connection, dir: &Path, stamp: &str, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    backup(src, &dest)?;
    rotate(dir, keep)?;
    Ok(dest)
}

/// Deletes the oldest `perpetual_*.db` files in `dir` until at most `keep` remain.
/// Returns the paths this call deleted. Two wraps may rotate at once (agents with slots
/// wrap together): a backup the other one deleted first is gone, as it should be, not
/// an error (the 2-hour soak of session 4 saw one wrap's backup step fail on it).
pub fn rotate(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut backups = list(dir)?;
    let excess = backups.len().saturating_sub(keep);
    let mut old = Vec::new();
    for path in backups.drain(..excess) {
        match std::fs::remove_file(&path) {
            Ok(()) => old.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot delete {}", path.display()));
            }
        }
    }
    // Temporary copies whose writer died (killed mid-backup) would pile up otherwise.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
            old.push(entry.path());
        }
    }
    Ok(old)
}

/// The backups in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        // Where the directory does not give the type, it is asked of the file, which
        // another wrap's rotation may have deleted since: gone is not a backup.
        match entry.file_type() {
            Ok(t) if t.is_file() => out.push(entry.path()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_is_complete_and_rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::store::open(&dir.path().join("perpetual.db")).unwrap();
        src.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        let backups = dir.path().join("backups");
        for stamp in ["20250101_000001", "20250101_000002", "20250101_000003"] {
            backup_into(&src, &backups, stamp, 2).unwrap();
        }
        let kept = list(&backups).unwrap();
        let names: Vec<_> = kept
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "perpetual_20250101_000002.db",
                "perpetual_20250101_000003.db"
            ]
        );
        // Nothing but the kept backups is left behind (no temporary or -wal files).
        assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 2);
        let copy = Connection::open(&kept[1]).unwrap();
        let n: i64 = copy
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let ok: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn two_rotations_at_once_never_fail_on_a_backup_the_other_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::thread::scope(|scope| {
            let rotations: Vec<_> = (0..2)
                .map(|t| {
                    scope.spawn(move || {
                        for i in 0..400 {
                            let name = format!("{PREFIX}2026{i:05}_{t}{SUFFIX}");
                            std::fs::write(dir.join(name), b"x").unwrap();
                            rotate(dir, 2)?;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for r in rotations {
                r.join().unwrap().unwrap();
            }
        });
        assert_eq!(list(dir).unwrap().len(), 2);
    }
}
