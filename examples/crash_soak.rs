//! kill -9 soak through the real binary, with hostile entries in the inbox: each round
//! makes a fresh root, drops generated files (with duplicates, every layout, a broken
//! file, a JSON Lines file to salvage) beside a link to /dev/zero, a FIFO and a folder
//! named like a drop, starts `perpetual watch` (odd rounds) or `perpetual ingest`
//! (even rounds), kills it with SIGKILL at a random instant, does that once more, then
//! lets `perpetual ingest --now` finish. A round is exact when the database holds
//! exactly the distinct pairs, every file has exactly one final ledger row, nothing is
//! partial, the ledger's counts add up to the table, every hostile entry is `skipped`
//! once and still where it was, and every kept file is one row's stored path.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example crash_soak -- 100        # rounds (default 20)
//! ```
//! Figures: RELIABILITY.md.

use perpetual::generate::{self, GenConfig};
use rusqlite::{Connection, OpenFlags};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS must be a number"))
        .unwrap_or(20);
    let bin = binary();
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let started = Instant::now();
    let (mut exact, mut killed_mid_way) = (0, 0);
    for round in 0..rounds {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(
            root.join("perpetual.toml"),
            "[ingest]\ncheckpoint_every = 37\n[watch]\nsettle_ms = 50\n",
        )
        .unwrap();
        let files = generate::generate(&GenConfig {
            seed: round as u64,
            files: 40,
            pairs_per_file: 120,
            duplicate_ratio: 0.2,
            bad_files: 2,
            ..GenConfig::default()
        });
        let inbox = root.join("inbox/droid");
        std::fs::create_dir_all(&inbox).unwrap();
        let hostile = hostile_entries(&inbox);
        let watch = round % 2 == 1;
        let mut mid_way = false;
        for kill in 0..2 {
            let args: &[&str] = if watch { &["watch"] } else { &["ingest"] };
            let mut child = Command::new(&bin)
                .args(args)
                .env("PERPETUAL_ROOT", root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if kill == 0 {
                // Dropped while the process starts: some before it lists, some after.
                generate::write_files(&inbox, &files).unwrap();
            }
            std::thread::sleep(Duration::from_millis(rng.u64(5..400)));
            if child.try_wait().unwrap().is_none() {
                mid_way |= inbox_has_drops(&inbox);
            }
            let _ = child.kill();
            child.wait().unwrap();
        }
        let finish = Command::new(&bin)
            .args(["ingest", "--now"])
            .env("PERPETUAL_ROOT", root)
            .output()
            .unwrap();
        let verdict = check(root, &files, &hostile, finish.status.code());
        killed_mid_way += usize::from(mid_way);
        match verdict {
            Ok(()) => exact += 1,
            Err(e) => eprintln!(
                "round {round} ({}): NOT EXACT: {e}",
                if watch { "watch" } else { "ingest" }
            ),
        }
    }
    println!(
        "{exact} of {rounds} rounds exact ({killed_mid_way} killed with drops still waiting), {:.0} s, load {}",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if exact != rounds {
        std::process::exit(1);
    }
}

/// A link to /dev/zero, a FIFO and a folder named like drops: never read, one
/// `skipped` row each.
fn hostile_entries(inbox: &Path) -> Vec<PathBuf> {
    let zero = inbox.join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = inbox.join("fifo.json");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let dir = inbox.join("folder.json");
    std::fs::create_dir(&dir).unwrap();
    vec![zero, fifo, dir]
}

fn inbox_has_drops(inbox: &Path) -> bool {
    std::fs::read_dir(inbox).unwrap().any(|e| {
        let e = e.unwrap();
        e.file_type().unwrap().is_file() && !e.file_name().as_bytes().starts_with(b".")
    })
}

fn check(
    root: &Path,
    files: &[generate::GeneratedFile],
    hostile: &[PathBuf],
    finish: Option<i32>,
) -> Result<(), String> {
    let want_exit = if files.iter().any(|f| f.bad.is_some() && f.pairs == 0) {
        // A rejected file the killed runs did not reach makes the last run exit 3.
        [0, 3]
    } else {
        [0, 0]
    };
    if !finish.is_some_and(|c| want_exit.contains(&c)) {
        return Err(format!("the last ingest exited {finish:?}"));
    }
    let db =
        Connection::open_with_flags(root.join("perpetual.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut keys = std::collections::HashSet::new();
    for f in files {
        for qa in &f.distinct_keys {
            let (q, a) = qa.split_once('\n').unwrap();
            keys.insert(perpetual::pair::pair_key(q, a));
        }
    }
    let pairs = count("SELECT COUNT(*) FROM pairs");
    if pairs != keys.len() as i64 {
        return Err(format!("{pairs} pairs stored, {} distinct", keys.len()));
    }
    if count("SELECT COUNT(DISTINCT key) FROM pairs") != pairs {
        return Err("a pair stored twice".into());
    }
    if count("SELECT COALESCE(SUM(pairs_new), 0) FROM files") != pairs {
        return Err("the ledger's counts do not add up to the table".into());
    }
    if count("SELECT COUNT(*) FROM files WHERE status = 'partial'") != 0 {
        return Err("a partial file left".into());
    }
    let finished =
        count("SELECT COUNT(*) FROM files WHERE status IN ('integrated', 'duplicate', 'rejected')");
    if finished != files.len() as i64 {
        return Err(format!(
            "{finished} finished rows for {} files",
            files.len()
        ));
    }
    for h in hostile {
        let rows: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM files WHERE status = 'skipped' AND source_path = ?1",
                [perpetual::engine::names::render_path(h)],
                |r| r.get(0),
            )
            .unwrap();
        if rows != 1 || h.symlink_metadata().is_err() {
            return Err(format!("{h:?}: {rows} skipped rows"));
        }
    }
    let inbox = root.join("inbox/droid");
    let mut kept = 0;
    for folder in ["processed", "rejected"] {
        for e in std::fs::read_dir(inbox.join(folder)).map_err(|e| e.to_string())? {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "reason") {
                continue;
            }
            kept += 1;
            let rows: i64 = db
                .query_row(
                    "SELECT COUNT(*) FROM files WHERE stored_path = ?1",
                    [perpetual::engine::names::render_path(&p)],
                    |r| r.get(0),
                )
                .unwrap();
            if rows != 1 {
                return Err(format!("{p:?} is the stored path of {rows} rows"));
            }
        }
    }
    if kept != files.len() {
        return Err(format!("{kept} files kept of {}", files.len()));
    }
    Ok(())
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let bin = dir.join("perpetual");
    assert!(
        bin.exists(),
        "build it first: cargo build --release ({})",
        bin.display()
    );
    bin
}
