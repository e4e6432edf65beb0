//! Regression tests for issue 10, "Every drop accounted for": entries that are not
//! regular files, files over the limit, hostile names, things in the way. Each test is
//! named after the bug it pins and drives the real binary.

mod common;

use common::{Env, PATIENCE, wait_until};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

const GOOD: &str = r#"[{"question": "What is RSI?", "answer": "A momentum oscillator."}]"#;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn status_of(row: &serde_json::Value) -> &str {
    row["status"].as_str().unwrap_or("")
}

fn reason_of(row: &serde_json::Value) -> &str {
    row["reason"].as_str().unwrap_or("")
}

/// `perpetual ingest PATH` on a symlink to /dev/zero read until memory ran out.
#[test]
fn regression_ingest_path_on_a_symlink_to_dev_zero_is_not_followed() {
    let env = Env::new();
    let link = env.path("archive/zero.json");
    symlink("/dev/zero", &link);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", link.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["files_skipped"], 1, "{}", run.explain());
    let rows = env.ledger_of("zero.json");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(status_of(&rows[0]), "skipped");
    assert!(reason_of(&rows[0]).contains("symbolic link"), "{rows:?}");
}

/// `perpetual ingest PATH` on a FIFO hung forever.
#[test]
fn regression_ingest_path_on_a_fifo_returns_at_once() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("archive")).unwrap();
    let fifo = env.path("archive/pipe.json");
    mkfifo(&fifo);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", fifo.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["files_skipped"], 1, "{}", run.explain());
    let rows = env.ledger_of("pipe.json");
    assert_eq!(status_of(&rows[0]), "skipped", "{rows:?}");
    assert!(reason_of(&rows[0]).contains("FIFO"), "{rows:?}");
}

/// An over-limit file was hashed to its end (a 1 GiB sparse file took 4.8 s) although
/// the README says "rejected unread".
#[test]
fn regression_an_over_limit_file_is_rejected_unread() {
    let env = Env::new();
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\nmax_file_bytes = 1000\n",
    )
    .unwrap();
    let path = env.path("inbox/droid/huge.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap(); // sparse: costs no disk
    drop(f);
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert_eq!(run.json()["files_rejected"], 1, "{}", run.explain());
    let rows = env.ledger_of("huge.json");
    assert_eq!(status_of(&rows[0]), "rejected", "{rows:?}");
    assert!(reason_of(&rows[0]).contains("over the limit"), "{rows:?}");
    assert!(rows[0]["content_hash"].is_null(), "never hashed: {rows:?}");
    assert_eq!(rows[0]["size"], 1u64 << 30);
    assert!(env.path("inbox/droid/rejected/huge.json").is_file());
}

/// Symlinks, FIFOs, folders named like drops, a symlinked agent folder and files
/// dropped into inbox/ itself were skipped without a word: no log line, no ledger row.
#[test]
fn regression_entries_that_are_not_regular_files_get_one_warning_and_a_ledger_row() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("outside")).unwrap();
    std::fs::write(env.path("outside/secret.json"), GOOD).unwrap();
    let droid = env.path("inbox/droid");
    std::fs::create_dir_all(&droid).unwrap();
    symlink(env.path("outside/secret.json"), &droid.join("outside.json"));
    symlink(env.path("outside"), &droid.join("to_dir.json"));
    symlink("/nonexistent/target.json", &droid.join("dangling.json"));
    symlink("loop.json", &droid.join("loop.json"));
    symlink("/dev/null", &droid.join("device_link.json"));
    mkfifo(&droid.join("fifo.json"));
    std::fs::create_dir_all(droid.join("folder.json")).unwrap();
    symlink(env.path("outside"), &env.path("inbox/linked_agent"));
    std::fs::write(env.path("inbox/stray.json"), GOOD).unwrap();
    std::fs::write(droid.join("good.json"), GOOD).unwrap();

    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 1, "{}", run.explain());
    assert_eq!(j["files_skipped"], 9, "{}", run.explain());
    let expect = [
        ("outside.json", "symbolic link"),
        ("to_dir.json", "symbolic link"),
        ("dangling.json", "symbolic link"),
        ("loop.json", "symbolic link"),
        ("device_link.json", "symbolic link"),
        ("fifo.json", "FIFO"),
        ("folder.json", "folder"),
        ("linked_agent", "symbolic link"),
        ("stray.json", "inbox/<agent>/"),
    ];
    let stderr = run.stderr();
    for (name, why) in expect {
        let rows = env.ledger_of(name);
        assert_eq!(rows.len(), 1, "{name}: {rows:?}\n{}", run.explain());
        assert_eq!(status_of(&rows[0]), "skipped", "{name}: {rows:?}");
        assert!(reason_of(&rows[0]).contains(why), "{name}: {rows:?}");
        assert_eq!(
            stderr.lines().filter(|l| l.contains(name)).count(),
            1,
            "one warning naming {name}\n{}",
            run.explain()
        );
        assert!(
            env.path(&format!("inbox/droid/{name}"))
                .symlink_metadata()
                .is_ok()
                || env
                    .path(&format!("inbox/{name}"))
                    .symlink_metadata()
                    .is_ok(),
            "{name} left where it was\n{}",
            run.explain()
        );
    }
    // Nothing followed: the file outside the root was never read.
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 1);
    let listing = env.run(&["files"]).expect(0).stdout();
    assert!(listing.contains("skipped"), "{listing}");
    let stats = env.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(stats["files_skipped"], 9, "{stats}");

    // The next run says nothing new and adds no rows.
    let before = env.ledger().len();
    let again = env.run_within(PATIENCE, &["ingest", "--now"]).expect(0);
    assert_eq!(env.ledger().len(), before, "{}", again.explain());
    assert!(
        !again.stderr().contains("fifo.json"),
        "no repeated warning\n{}",
        again.explain()
    );
}

/// A valid drop whose name is not UTF-8 was never integrated.
#[test]
fn regression_a_drop_whose_name_is_not_utf8_integrates() {
    let env = Env::new();
    let droid = env.path("inbox/droid");
    std::fs::create_dir_all(&droid).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.json");
    std::fs::write(droid.join(name), GOOD).unwrap();
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(0);
    assert_eq!(run.json()["files_integrated"], 1, "{}", run.explain());
    assert!(
        droid.join("processed").join(name).is_file(),
        "{}",
        run.explain()
    );
    let rows = env.ledger_of("caf\\xe9.json");
    assert_eq!(
        rows.len(),
        1,
        "lossless rendering in the ledger: {:?}",
        env.ledger()
    );
    assert_eq!(status_of(&rows[0]), "integrated");
}

/// A name of about 249 bytes or more made `<name>.reason` (or the `.1` collision suffix)
/// longer than 255 bytes: the move failed, the ledger recorded a path that did not exist
/// and the file stayed in the inbox with an error every 30 s.
#[test]
fn regression_a_name_near_the_length_limit_is_moved_under_a_name_that_fits() {
    let env = Env::new();
    let long = format!("{}.json", "x".repeat(250));
    assert_eq!(long.len(), 255);
    // Written in place: `.<name>.tmp` would itself be too long.
    env.write(&format!("inbox/droid/{long}"), "[{\"question\": ");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    let rows = env.ledger_of(&long);
    assert_eq!(rows.len(), 1);
    let stored = rows[0]["stored_path"].as_str().unwrap();
    assert!(Path::new(stored).is_file(), "{stored}\n{}", run.explain());
    let reason = format!("{stored}.reason");
    assert!(Path::new(&reason).is_file(), "{reason}\n{}", run.explain());
    // The same name again: the collision suffix fits too.
    env.write(&format!("inbox/droid/{long}"), "[{\"question\": 1");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    for row in env.ledger_of(&long) {
        let stored = row["stored_path"].as_str().unwrap();
        assert!(Path::new(stored).is_file(), "{stored}\n{}", run.explain());
    }
    assert_eq!(
        env.files_in("inbox/droid/rejected").len(),
        4,
        "{}",
        run.explain()
    );
}

/// A plain file named `processed` in an agent folder jammed every move of that agent.
#[test]
fn regression_a_file_in_the_way_of_processed_is_moved_aside() {
    let env = Env::new();
    env.write("inbox/droid/processed", "not a folder");
    env.write("inbox/droid/rejected", "not a folder either");
    env.drop_file("droid", "good.json", GOOD);
    env.drop_file("droid", "bad.json", "[");
    let run = env
        .run_within(PATIENCE, &["ingest", "--json", "--now"])
        .expect(3);
    assert!(
        env.path("inbox/droid/processed/good.json").is_file(),
        "{}",
        run.explain()
    );
    assert!(
        env.path("inbox/droid/rejected/bad.json").is_file(),
        "{}",
        run.explain()
    );
    assert!(run.stderr().contains("moved aside"), "{}", run.explain());
    let aside: Vec<String> = env
        .files_in("inbox/droid")
        .into_iter()
        .filter(|n| n.starts_with("processed") || n.starts_with("rejected"))
        .collect();
    assert_eq!(
        aside.len(),
        2,
        "both kept, renamed: {aside:?}\n{}",
        run.explain()
    );
    for row in env.ledger() {
        if let Some(stored) = row["stored_path"].as_str() {
            assert!(Path::new(stored).exists(), "{row}");
        }
    }
}

/// The watcher followed a symlink to /dev/zero swapped in after the close-write event
/// and grew to 2.1 GB. It must skip the link, say so once, and stay alive.
#[test]
fn regression_watch_skips_a_symlink_to_dev_zero_and_keeps_integrating() {
    let env = Env::new();
    let mut w = env.spawn(&["watch"]);
    w.wait_for_log("watching");
    let droid = env.path("inbox/droid");
    symlink("/dev/zero", &droid.join(".zero.tmp"));
    std::fs::rename(droid.join(".zero.tmp"), droid.join("zero.json")).unwrap();
    mkfifo(&droid.join("fifo.json"));
    env.drop_file("droid", "canary.json", GOOD);
    wait_until(
        "the canary integrated",
        || env.path("inbox/droid/processed/canary.json").is_file(),
        || w.explain(),
    );
    wait_until(
        "both skipped in the ledger",
        || env.try_count("SELECT COUNT(*) FROM files WHERE status = 'skipped'") == Some(2),
        || w.explain(),
    );
    std::thread::sleep(Duration::from_millis(100));
    w.stop();
    assert_eq!(
        w.stderr().matches("zero.json").count(),
        1,
        "{}",
        w.explain()
    );
}
