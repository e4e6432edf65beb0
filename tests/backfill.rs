//! `perpetual backfill`, driven through the real binary.

mod common;

use common::{Env, distinct_pairs};
use perpetual::generate::{self, GenConfig, GeneratedFile};

/// Sessions 99..=190 as nested exports named session_<n>.json, with 102 and 150 missing.
fn archive(env: &Env, pairs_per_file: usize) -> (std::path::PathBuf, Vec<(i64, GeneratedFile)>) {
    let files = generate::generate(&GenConfig {
        seed: 11,
        files: 92,
        pairs_per_file,
        duplicate_ratio: 0.1,
        session_start: Some(99),
        ..GenConfig::default()
    });
    let dir = env.path("archive");
    let mut kept = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let session = 99 + i as i64;
        if session == 102 || session == 150 {
            continue;
        }
        kept.push((session, f));
    }
    let only: Vec<GeneratedFile> = kept.iter().map(|(_, f)| f.clone()).collect();
    generate::write_files(&dir, &only).unwrap();
    (dir, kept)
}

fn in_range(files: &[(i64, GeneratedFile)]) -> Vec<GeneratedFile> {
    files
        .iter()
        .filter(|(s, _)| (101..=187).contains(s))
        .map(|(_, f)| f.clone())
        .collect()
}

fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_range_with_missing_sessions_integrates_in_place_and_leaves_the_rest_alone() {
    let env = Env::new();
    let (dir, files) = archive(&env, 20);
    let before = snapshot(&dir);
    let run = env
        .run(&[
            "backfill",
            dir.to_str().unwrap(),
            "--sessions",
            "101-187",
            "--budget",
            "100000000",
            "--json",
        ])
        .expect(0);
    let j = run.json();
    assert_eq!(
        j["sessions_missing"],
        serde_json::json!([102, 150]),
        "{}",
        run.explain()
    );
    assert_eq!(j["sessions_total"], 85, "{}", run.explain());
    assert_eq!(j["sessions_done"], 85, "{}", run.explain());
    assert_eq!(
        j["files_outside"],
        5,
        "99, 100, 188, 189, 190\n{}",
        run.explain()
    );
    assert_eq!(j["completed"], true, "{}", run.explain());
    assert_eq!(j["wrapped"], false, "{}", run.explain());
    let want = distinct_pairs(&in_range(&files)) as i64;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want,
        "{}",
        run.explain()
    );
    // Files outside the range: not read into the ledger, not moved, not changed.
    for outside in [99, 100, 188, 189, 190] {
        let n: i64 = env
            .db()
            .query_row(
                "SELECT COUNT(*) FROM files WHERE session = ?1",
                [outside],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "session {outside} left alone");
    }
    assert_eq!(
        snapshot(&dir),
        before,
        "the archive is never moved or changed"
    );
    // The human summary names the missing sessions.
    let again = env
        .run(&["backfill", dir.to_str().unwrap(), "--sessions", "101-187"])
        .expect(0);
    assert!(again.stdout().contains("102, 150"), "{}", again.explain());
}

#[test]
fn a_small_budget_wraps_twice_with_status_75_then_completes_with_exact_counts() {
    let env = Env::new();
    let (dir, files) = archive(&env, 20);
    let want = distinct_pairs(&in_range(&files)) as i64;
    let args = [
        "backfill",
        dir.to_str().unwrap(),
        "--sessions",
        "101-187",
        "--budget",
        "100000",
        "--json",
    ];
    let mut wraps = 0;
    let mut last = None;
    for _ in 0..10 {
        let run = env.run(&args);
        match run.code() {
            75 => {
                wraps += 1;
                let j = run.json();
                assert_eq!(j["wrapped"], true, "{}", run.explain());
                let tokens = j["session_tokens"].as_u64().unwrap();
                // Wraps at 85% of the budget, overshooting by at most one pair.
                assert!(
                    (85_000..86_000).contains(&tokens),
                    "{tokens}\n{}",
                    run.explain()
                );
                let handoff = j["handoff"].as_str().unwrap();
                let text = std::fs::read_to_string(handoff).unwrap();
                assert!(text.contains("backfill_sessions_101_187"), "{text}");
                assert!(
                    text.contains("perpetual backfill"),
                    "the next action says how to go on: {text}"
                );
            }
            0 => {
                last = Some(run);
                break;
            }
            _ => panic!("unexpected status\n{}", run.explain()),
        }
    }
    assert!(
        wraps >= 2,
        "the budget wraps at least twice (wrapped {wraps} times)"
    );
    let last = last.expect("the backfill completes");
    let j = last.json();
    assert_eq!(j["completed"], true, "{}", last.explain());
    assert!(j["grade"].is_string(), "graded\n{}", last.explain());
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want,
        "{}",
        last.explain()
    );
    assert_eq!(
        env.files_in("session_handoffs").len(),
        wraps + 1,
        "a handoff per session"
    );
    assert!(
        env.path("task_reports/backfill_sessions_101_187.md")
            .is_file()
    );
    // Every file exactly once in the ledger, none partial.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'partial'"),
        0
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM files"), 85);
    let task = env
        .run(&["task", "show", "backfill_sessions_101_187", "--json"])
        .expect(0)
        .json();
    assert_eq!(task["done"], 85, "{task}");
    assert_eq!(task["total"], 85, "{task}");
}

#[test]
fn a_rerun_of_a_finished_backfill_adds_nothing() {
    let env = Env::new();
    let (dir, _) = archive(&env, 10);
    let args = [
        "backfill",
        dir.to_str().unwrap(),
        "--sessions",
        "101-187",
        "--budget",
        "100000000",
        "--json",
    ];
    env.run(&args).expect(0);
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    let rows = env.count("SELECT COUNT(*) FROM files");
    let sessions = env.count("SELECT COUNT(*) FROM sessions");
    let again = env.run(&args).expect(0);
    let j = again.json();
    assert_eq!(j["pairs_new"], 0, "{}", again.explain());
    assert_eq!(j["completed"], true, "{}", again.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), pairs);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files"),
        rows,
        "no ledger rows added"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions"),
        sessions,
        "no session started"
    );
}

#[test]
fn the_session_in_the_content_beats_the_one_in_the_name() {
    let env = Env::new();
    env.write(
        "archive/session_300.json",
        r#"{"session": 150, "qa_pairs": [{"question": "Q150?", "answer": "A150."}]}"#,
    );
    env.write(
        "archive/session_120.json",
        r#"{"qa_pairs": [{"question": "Q120?", "answer": "A120."}]}"#,
    );
    env.write(
        "archive/notes.json",
        r#"[{"question": "No session?", "answer": "None at all."}]"#,
    );
    let dir = env.path("archive");
    let run = env
        .run(&[
            "backfill",
            dir.to_str().unwrap(),
            "--sessions",
            "101-187",
            "--json",
        ])
        .expect(0);
    let j = run.json();
    assert_eq!(
        j["sessions_total"],
        2,
        "150 (content) and 120 (name)\n{}",
        run.explain()
    );
    assert_eq!(j["files_unnumbered"], 1, "{}", run.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), 2);
}
