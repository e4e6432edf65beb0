//! `perpetual watch`, driven through the real binary: drops while it runs, writers still
//! at work, bursts, new agent folders, one writer per root, signals and `kill -9`.
//! Tests wait for conditions (with a generous deadline), never for fixed times; speed is
//! measured by `benches/watch_latency.rs`, not asserted here.

mod common;

use common::{Env, PATIENCE, Running, distinct_pairs, wait_until};
use perpetual::generate::{self, DropLayout, GenConfig};
use std::io::Write;
use std::time::Duration;

const WATCHING: &str = "watching";

fn generated(
    seed: u64,
    files: usize,
    pairs: usize,
    duplicates: f64,
) -> Vec<generate::GeneratedFile> {
    generate::generate(&GenConfig {
        seed,
        files,
        pairs_per_file: pairs,
        duplicate_ratio: duplicates,
        layouts: vec![],
        encodings: vec![],
        bad_files: 0,
        session_start: None,
        ..GenConfig::default()
    })
}

fn start(env: &Env, args: &[&str]) -> Running {
    let mut args = args.to_vec();
    args.insert(0, "watch");
    let mut w = env.spawn(&args);
    w.wait_for_log(WATCHING);
    w
}

/// Waits until `n` files of `agent` have left the inbox for processed/ or rejected/.
fn wait_finished(env: &Env, w: &Running, agent: &str, n: usize) {
    wait_until(
        &format!("{n} files of {agent} finished"),
        || {
            env.files_in(&format!("inbox/{agent}/processed")).len()
                + env.files_in(&format!("inbox/{agent}/rejected")).len()
                >= n
                && env.try_count("SELECT COUNT(*) FROM files WHERE status = 'partial'") == Some(0)
        },
        || w.explain(),
    );
}

fn pairs(env: &Env) -> i64 {
    env.try_count("SELECT COUNT(*) FROM pairs").unwrap_or(0)
}

#[test]
fn waiting_files_then_drops_renamed_into_place_are_integrated_with_one_json_log_line_each() {
    let env = Env::new();
    let files = generated(1, 5, 20, 0.0);
    // Three wait from before the watcher starts; two arrive while it runs.
    for f in &files[..3] {
        env.drop_file("droid", &f.name, &f.bytes);
    }
    let mut w = start(&env, &["--log-format", "json"]);
    wait_finished(&env, &w, "droid", 3);
    for f in &files[3..] {
        env.drop_file("droid", &f.name, &f.bytes);
    }
    let want = distinct_pairs(&files) as i64;
    wait_until(
        "every pair queryable",
        || pairs(&env) == want,
        || w.explain(),
    );
    wait_finished(&env, &w, "droid", 5);
    w.stop();

    assert_eq!(
        env.files_in("inbox/droid/processed").len(),
        5,
        "{}",
        w.explain()
    );
    assert!(env.files_in("inbox/droid").is_empty(), "{}", w.explain());
    // One JSON object per line; one line per file, naming agent, file, status, ms.
    let mut per_file = Vec::new();
    for line in w.stderr().lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", w.explain()));
        let fields = &v["fields"];
        if fields["file"].is_string() {
            assert_eq!(fields["agent"], "droid", "{line}");
            assert_eq!(fields["status"], "integrated", "{line}");
            assert!(
                fields["ms"].is_string() || fields["ms"].is_number(),
                "{line}"
            );
            assert!(fields["new"].is_number(), "{line}");
            per_file.push(fields["file"].as_str().unwrap().to_string());
        }
    }
    per_file.sort();
    let mut names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    names.sort();
    assert_eq!(per_file, names, "{}", w.explain());
}

/// A writer that writes its file in place, in chunks with pauses shorter than the settle
/// period: once through one open handle, once reopening the file for each chunk (each
/// close is a close-after-write event on a half-written file). Neither may be read
/// early and rejected as truncated JSON.
#[test]
fn slow_in_place_writers_are_read_once_complete_and_never_rejected_as_truncated() {
    let env = Env::new();
    std::fs::write(env.path("perpetual.toml"), "[watch]\nsettle_ms = 1500\n").unwrap();
    let mut w = start(&env, &[]);
    // JSON documents: no prefix of one parses. (A JSON Lines file appended to through
    // separate opens cannot be told from a finished one; the README says so.)
    let files = generate::generate(&GenConfig {
        seed: 2,
        files: 2,
        pairs_per_file: 30,
        layouts: vec![DropLayout::Flat, DropLayout::Nested],
        ..GenConfig::default()
    });
    let chunks = |bytes: &[u8]| -> Vec<Vec<u8>> {
        bytes
            .chunks(bytes.len() / 6 + 1)
            .map(|c| c.to_vec())
            .collect()
    };
    let pause = Duration::from_millis(100);

    let held = env.path(&format!("inbox/droid/{}", files[0].name));
    let reopened = env.path(&format!("inbox/droid/{}", files[1].name));
    let (a, b) = (chunks(&files[0].bytes), chunks(&files[1].bytes));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::File::create(&held).unwrap();
            for chunk in &a {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(pause);
            }
        });
        s.spawn(|| {
            for chunk in &b {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&reopened)
                    .unwrap();
                f.write_all(chunk).unwrap();
                drop(f);
                std::thread::sleep(pause);
            }
        });
    });
    wait_finished(&env, &w, "droid", 2);
    w.stop();
    assert!(
        env.files_in("inbox/droid/rejected").is_empty(),
        "{}",
        w.explain()
    );
    assert_eq!(
        env.files_in("inbox/droid/processed").len(),
        2,
        "{}",
        w.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'integrated'"),
        2,
        "each file read once it was complete\n{}",
        w.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files"),
        2,
        "{}",
        w.explain()
    );
    assert_eq!(
        pairs(&env),
        distinct_pairs(&files) as i64,
        "{}",
        w.explain()
    );
}

/// Without events (`--poll`, as on NFS), completeness comes from size and modification
/// time staying still for the settle period.
#[test]
fn polling_finds_drops_and_waits_for_a_slow_writer_to_settle() {
    let env = Env::new();
    std::fs::write(
        env.path("perpetual.toml"),
        "[watch]\nsettle_ms = 1500\npoll_interval_ms = 50\n",
    )
    .unwrap();
    let mut w = start(&env, &["--poll"]);
    assert!(
        w.stderr().contains("polling every 50 ms"),
        "{}",
        w.explain()
    );
    let files = generated(3, 2, 25, 0.0);
    env.drop_file("zai", &files[0].name, &files[0].bytes);
    let slow = env.path(&format!("inbox/zai/{}", files[1].name));
    let mut f = std::fs::File::create(&slow).unwrap();
    for chunk in files[1].bytes.chunks(files[1].bytes.len() / 5 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(f);
    wait_finished(&env, &w, "zai", 2);
    w.stop();
    assert!(
        env.files_in("inbox/zai/rejected").is_empty(),
        "{}",
        w.explain()
    );
    assert_eq!(
        pairs(&env),
        distinct_pairs(&files) as i64,
        "{}",
        w.explain()
    );
}

#[test]
fn a_burst_of_files_is_integrated_exactly_once() {
    let env = Env::new();
    let mut w = start(&env, &[]);
    let files = generated(4, 300, 20, 0.2);
    for f in &files {
        env.drop_file("droid", &f.name, &f.bytes);
    }
    wait_finished(&env, &w, "droid", files.len());
    w.stop();
    assert_eq!(
        pairs(&env),
        distinct_pairs(&files) as i64,
        "{}",
        w.explain()
    );
    assert_eq!(env.files_in("inbox/droid/processed").len(), files.len());
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'integrated'"),
        files.len() as i64
    );
    assert_eq!(
        env.count("SELECT SUM(pairs_new + pairs_duplicate + pairs_invalid) FROM files"),
        files.iter().map(|f| f.pairs as i64).sum::<i64>()
    );
}

#[test]
fn agent_folders_created_or_moved_in_while_watching_are_followed() {
    let env = Env::new();
    let mut w = start(&env, &[]);
    let files = generated(5, 4, 10, 0.0);
    // Created, then a drop at once: the watch on the new folder may not exist yet.
    std::fs::create_dir(env.path("inbox/newcomer")).unwrap();
    env.drop_file("newcomer", &files[0].name, &files[0].bytes);
    // A folder prepared elsewhere, with drops inside, moved in whole.
    let outside = env.path("staging/moved_in");
    generate::write_files(&outside, &files[1..3]).unwrap();
    std::fs::rename(&outside, env.path("inbox/moved_in")).unwrap();
    wait_finished(&env, &w, "newcomer", 1);
    wait_finished(&env, &w, "moved_in", 2);
    // And the new folder keeps being followed.
    env.drop_file("newcomer", &files[3].name, &files[3].bytes);
    wait_finished(&env, &w, "newcomer", 2);
    w.stop();
    assert_eq!(
        pairs(&env),
        distinct_pairs(&files) as i64,
        "{}",
        w.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE agent = 'newcomer'"),
        2
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE agent = 'moved_in'"),
        2
    );
}

#[test]
fn a_second_writer_is_refused_naming_the_watcher_while_stats_and_files_work() {
    let env = Env::new();
    let mut w = start(&env, &[]);
    let f = &generated(6, 1, 10, 0.0)[0];
    env.drop_file("droid", &f.name, &f.bytes);
    wait_finished(&env, &w, "droid", 1);
    for cmd in ["watch", "ingest"] {
        let run = env.run(&[cmd]).expect(1);
        let holder = format!("pid {} (`perpetual watch`", w.pid());
        assert!(
            run.stderr().contains(&holder),
            "wanted {holder:?}\n{}",
            run.explain()
        );
    }
    let stats = env.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(
        stats["pairs"],
        distinct_pairs(std::slice::from_ref(f)) as u64
    );
    let listing = env.run(&["files"]).expect(0);
    assert!(listing.stdout().contains(&f.name), "{}", listing.explain());
    w.stop();
}

#[test]
fn sigterm_and_sigint_exit_0_with_the_last_drop_committed() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let env = Env::new();
        let mut w = start(&env, &[]);
        let files = generated(7, 2, 15, 0.0);
        env.drop_file("droid", &files[0].name, &files[0].bytes);
        wait_finished(&env, &w, "droid", 1);
        // The signal comes while the second drop may be anywhere in the pipeline.
        env.drop_file("droid", &files[1].name, &files[1].bytes);
        w.signal(signal);
        let (status, _) = w.wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(0), "signal {signal}\n{}", w.explain());
        assert!(w.stderr().contains("stopped after"), "{}", w.explain());
        // What committed is whole: the first drop, and the second either done or untouched.
        let first = distinct_pairs(&files[..1]) as i64;
        let both = distinct_pairs(&files) as i64;
        let stored = env.count("SELECT COUNT(*) FROM pairs");
        assert!(
            stored == first || stored == both,
            "{stored}\n{}",
            w.explain()
        );
        assert_eq!(
            env.count("SELECT COUNT(*) FROM files WHERE status = 'partial'"),
            0
        );
        // Every committed drop left the inbox before the exit (the watcher moves a
        // batch's files when idle or stopping, not at the end of each batch).
        assert_eq!(
            env.files_in("inbox/droid/processed").len(),
            if stored == both { 2 } else { 1 },
            "{}",
            w.explain()
        );
        // Whatever was left is picked up by the next run.
        let mut again = start(&env, &[]);
        wait_finished(&env, &again, "droid", 2);
        again.stop();
        assert_eq!(
            env.count("SELECT COUNT(*) FROM pairs"),
            both,
            "{}",
            again.explain()
        );
    }
}

/// A signal in the middle of a large file stops at the next checkpoint: exit 0, the
/// file left partial, and the next run resumes where it stopped.
#[test]
fn a_signal_mid_file_stops_at_a_checkpoint_and_the_next_run_resumes_there() {
    let env = Env::new();
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\ncheckpoint_every = 50\n",
    )
    .unwrap();
    let cfg = GenConfig {
        seed: 8,
        files: 1,
        pairs_per_file: 40_000,
        duplicate_ratio: 0.0,
        layouts: vec![DropLayout::JsonLines],
        encodings: vec![],
        bad_files: 0,
        session_start: None,
        ..GenConfig::default()
    };
    let files = generate::generate(&cfg);
    let mut w = start(&env, &[]);
    env.drop_file("droid", &files[0].name, &files[0].bytes);
    wait_until("the first checkpoint", || pairs(&env) > 0, || w.explain());
    w.signal(libc::SIGTERM);
    let (status, _) = w.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", w.explain());
    let stored = env.count("SELECT COUNT(*) FROM pairs");
    let want = distinct_pairs(&files) as i64;
    if stored < want {
        // Stopped inside the file: the ledger says where, and the file is still waiting.
        assert_eq!(
            env.count("SELECT resume_at FROM files WHERE status = 'partial'"),
            stored,
            "{}",
            w.explain()
        );
        assert_eq!(env.files_in("inbox/droid"), [files[0].name.clone()]);
    }
    let mut again = start(&env, &[]);
    wait_finished(&env, &again, "droid", 1);
    again.stop();
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want,
        "{}",
        again.explain()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM files"), 1);
}

#[test]
fn kill_9_during_a_burst_then_restart_ends_with_exactly_the_distinct_pairs() {
    let env = Env::new();
    // Small checkpoints so kills land between checkpoints inside files too.
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\ncheckpoint_every = 37\n",
    )
    .unwrap();
    let files = generated(9, 120, 300, 0.2);
    let want = distinct_pairs(&files) as i64;
    let mut killed_mid_way = 0;
    for (round, delay_ms) in [40u64, 100, 180, 300].into_iter().enumerate() {
        let mut w = start(&env, &[]);
        if round == 0 {
            // The burst arrives while the watcher runs.
            for f in &files {
                env.drop_file("droid", &f.name, &f.bytes);
            }
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if !env.files_in("inbox/droid").is_empty() {
            killed_mid_way += 1;
        }
        w.kill9();
    }
    let mut w = start(&env, &[]);
    wait_finished(&env, &w, "droid", files.len());
    w.stop();
    assert!(killed_mid_way > 0, "at least one kill landed mid-burst");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want,
        "{}",
        w.explain()
    );
    // Every file ends in processed/ exactly once, with one integrated ledger row.
    assert_eq!(
        env.files_in("inbox/droid/processed").len(),
        files.len(),
        "{}",
        w.explain()
    );
    assert!(env.files_in("inbox/droid").is_empty(), "{}", w.explain());
    assert!(
        env.files_in("inbox/droid/rejected").is_empty(),
        "{}",
        w.explain()
    );
    common::assert_ledger_exact(&env, &files, want);
}
