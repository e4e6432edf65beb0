//! `perpetual ingest`, `stats` and `files`, driven through the real binary.

mod common;

use common::{Env, distinct_pairs};
use perpetual::generate::{self, BadKind, DropEncoding, DropLayout, GenConfig};

fn config(
    layouts: Vec<DropLayout>,
    encodings: Vec<DropEncoding>,
    files: usize,
    pairs: usize,
) -> GenConfig {
    GenConfig {
        seed: 7,
        files,
        pairs_per_file: pairs,
        duplicate_ratio: 0.0,
        layouts,
        encodings,
        bad_files: 0,
        session_start: None,
        ..GenConfig::default()
    }
}

fn drop_all(env: &Env, agent: &str, files: &[generate::GeneratedFile]) {
    for f in files {
        env.drop_file(agent, &f.name, &f.bytes);
    }
}

#[test]
fn works_on_an_empty_directory_without_init() {
    let env = Env::new();
    let run = env.run(&["ingest", "--json"]).expect(0);
    let j = run.json();
    assert_eq!(j["files_integrated"], 0, "{}", run.explain());
    for agent in ["claude_code", "droid", "zai"] {
        assert!(
            env.path(&format!("inbox/{agent}")).is_dir(),
            "{}",
            run.explain()
        );
        assert!(
            env.path(&format!("outbox/{agent}")).is_dir(),
            "{}",
            run.explain()
        );
    }
    assert!(env.path("perpetual.db").is_file());
}

#[test]
fn init_writes_documented_defaults_and_keeps_an_existing_config() {
    let env = Env::new();
    let run = env.run(&["init"]).expect(0);
    let toml = std::fs::read_to_string(env.path("perpetual.toml")).unwrap();
    assert!(toml.contains("checkpoint_every = 500"), "{}", run.explain());
    assert!(toml.contains("max_file_bytes"), "{toml}");
    assert!(
        toml.contains("[agents.droid]")
            && toml.contains("[agents.zai]")
            && toml.contains("[agents.claude_code]")
    );
    std::fs::write(env.path("perpetual.toml"), "goal = 10\n").unwrap();
    let run = env.run(&["init"]).expect(0);
    assert!(run.stdout().contains("kept existing"), "{}", run.explain());
    assert_eq!(
        std::fs::read_to_string(env.path("perpetual.toml")).unwrap(),
        "goal = 10\n"
    );
}

#[test]
fn every_layout_integrates_and_moves_to_processed() {
    let layouts = [
        DropLayout::Flat,
        DropLayout::Nested,
        DropLayout::NestedArray,
        DropLayout::JsonLines,
        DropLayout::Single,
    ];
    for layout in layouts {
        let env = Env::new();
        let files = generate::generate(&config(vec![layout], vec![], 3, 20));
        drop_all(&env, "droid", &files);
        let run = env.run(&["ingest", "--json"]).expect(0);
        let j = run.json();
        let want = distinct_pairs(&files) as u64;
        assert_eq!(j["files_integrated"], 3, "{layout:?}\n{}", run.explain());
        assert_eq!(j["pairs_new"], want, "{layout:?}\n{}", run.explain());
        assert_eq!(env.count("SELECT COUNT(*) FROM pairs") as u64, want);
        let expected_layout = match layout {
            DropLayout::Flat => "flat",
            DropLayout::Nested => "nested",
            DropLayout::NestedArray => "nested_array",
            DropLayout::JsonLines => "jsonl",
            DropLayout::Single => "single",
        };
        let n: i64 = env
            .db()
            .query_row(
                "SELECT COUNT(*) FROM files WHERE layout = ?1",
                [expected_layout],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3, "{layout:?}: ledger layout\n{}", run.explain());
        assert_eq!(
            env.files_in("inbox/droid/processed").len(),
            3,
            "{}",
            run.explain()
        );
        assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    }
}

#[test]
fn every_encoding_integrates_with_its_text_intact() {
    let encodings = [
        (DropEncoding::Utf8, "UTF-8"),
        (DropEncoding::Utf8Bom, "UTF-8"),
        (DropEncoding::Utf16Le, "UTF-16LE"),
        (DropEncoding::Utf16Be, "UTF-16BE"),
        (DropEncoding::Windows1252, "windows-1252"),
    ];
    for (encoding, label) in encodings {
        let env = Env::new();
        let files = generate::generate(&config(vec![DropLayout::Nested], vec![encoding], 2, 30));
        drop_all(&env, "zai", &files);
        let run = env.run(&["ingest", "--json"]).expect(0);
        assert_eq!(
            run.json()["pairs_new"],
            distinct_pairs(&files) as u64,
            "{encoding:?}\n{}",
            run.explain()
        );
        let encodings: Vec<String> = env
            .db()
            .prepare("SELECT encoding FROM files")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            encodings.iter().all(|e| e.starts_with(label)),
            "{encoding:?}: {encodings:?}"
        );
        // Every stored question is exactly one the generator wrote: nothing mangled.
        let written: std::collections::HashSet<String> = files
            .iter()
            .flat_map(|f| {
                f.distinct_keys
                    .iter()
                    .map(|k| k.split_once('\n').unwrap().0.to_string())
            })
            .collect();
        let db = env.db();
        let mut stmt = db.prepare("SELECT question FROM pairs").unwrap();
        for q in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            let q = q.unwrap();
            assert!(
                written.contains(&q),
                "{encoding:?}: stored question not as written: {q:?}"
            );
        }
    }
}

/// The seeds lost grayscale_holdings_qa_pairs.json to a UTF-8 decode error: a
/// windows-1252 file with accents and curly quotes. It must integrate intact.
#[test]
fn regression_grayscale_holdings_windows_1252_integrates_intact() {
    let env = Env::new();
    let text = "{\"indicator\": \"Grayscale Holdings\", \"category\": \"on-chain\", \"qa_pairs\": [\
        {\"question\": \"What does \u{201c}Grayscale\u{2019}s holdings\u{201d} tell us?\", \
         \"answer\": \"The trust\u{2019}s BTC holdings \u{2014} reported daily \u{2014} show institutional d\u{e9}j\u{e0} vu demand; fees cost \u{20ac}2.\"}]}";
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the fixture must not be UTF-8"
    );
    env.drop_file("droid", "grayscale_holdings_qa_pairs.json", &bytes);
    let run = env.run(&["ingest", "--json"]).expect(0);
    assert_eq!(run.json()["pairs_new"], 1, "{}", run.explain());
    let (q, a): (String, String) = env
        .db()
        .query_row("SELECT question, answer FROM pairs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        q,
        "What does \u{201c}Grayscale\u{2019}s holdings\u{201d} tell us?"
    );
    assert!(
        a.contains("d\u{e9}j\u{e0} vu") && a.contains("\u{20ac}2") && a.contains("\u{2014}"),
        "{a}"
    );
    let files = env.run(&["files", "--json"]).expect(0).json();
    assert_eq!(files[0]["encoding"], "windows-1252", "{files}");
    assert_eq!(files[0]["replaced"], false);
}

#[test]
fn corrupt_utf8_decodes_lossily_and_the_ledger_says_so() {
    let env = Env::new();
    let mut bytes = "[{\"question\": \"Qu\u{e9}l est le RSI?\", \"answer\": \"Un oscillateur \u{2014} de momentum.\"},\
                      {\"question\": \"Second?\", \"answer\": \"Yes CORRUPT here.\"}]"
        .as_bytes()
        .to_vec();
    let at = bytes.windows(7).position(|w| w == b"CORRUPT").unwrap();
    bytes[at] = 0xff;
    env.drop_file("droid", "corrupt.json", &bytes);
    let run = env.run(&["ingest", "--json"]).expect(0);
    assert_eq!(run.json()["pairs_new"], 2, "{}", run.explain());
    let files = env.run(&["files", "--json"]).expect(0).json();
    assert_eq!(files[0]["replaced"], true, "{files}");
    let a: String = env
        .db()
        .query_row(
            "SELECT answer FROM pairs WHERE question = 'Second?'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(a, "Yes \u{fffd}ORRUPT here.");
}

#[test]
fn aliases_inheritance_and_unknown_fields_are_kept() {
    let env = Env::new();
    env.drop_file(
        "droid",
        "nested.json",
        r#"{"indicator_name": "RSI", "indicator_category": "momentum", "batch": 4, "session": 123,
            "qa_pairs": [
              {"q": "What is RSI?", "a": "A momentum oscillator.", "difficulty": "easy"},
              {"prompt": "RSI period?", "response": "Usually 14.", "category": "parameters"}
            ]}"#,
    );
    env.run(&["ingest"]).expect(0);
    let db = env.db();
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = db
        .prepare("SELECT question, indicator, category, extra FROM pairs ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1.as_deref(), Some("RSI"));
    assert_eq!(rows[0].2.as_deref(), Some("momentum"));
    assert_eq!(
        rows[1].2.as_deref(),
        Some("parameters"),
        "a pair's own field wins"
    );
    let extra: serde_json::Value = serde_json::from_str(rows[0].3.as_deref().unwrap()).unwrap();
    assert_eq!(extra["difficulty"], "easy");
    assert_eq!(extra["batch"], 4);
    assert_eq!(extra["session"], 123);
    let files = env.run(&["files", "--json"]).expect(0).json();
    assert_eq!(files[0]["session"], 123);
}

#[test]
fn invalid_pairs_in_a_good_file_are_counted_and_explained() {
    let env = Env::new();
    env.drop_file(
        "droid",
        "mixed.json",
        r#"[{"question": "Good?", "answer": "Yes."},
            {"question": "", "answer": "Empty question."},
            {"question": "No answer?"},
            {"question": "Numeric?", "answer": 42},
            {"question": "Also good?", "answer": "Yes again."}]"#,
    );
    let run = env.run(&["ingest", "--json"]).expect(0);
    let j = run.json();
    assert_eq!(j["pairs_new"], 2, "{}", run.explain());
    assert_eq!(j["pairs_invalid"], 3, "{}", run.explain());
    assert_eq!(j["pairs_seen"], 5, "{}", run.explain());
    let files = env.run(&["files", "--json"]).expect(0).json();
    let invalid = files[0]["invalid"].as_array().unwrap();
    let indexes: Vec<u64> = invalid
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3], "{files}");
    assert!(
        invalid[0]["reason"].as_str().unwrap().contains("question"),
        "{files}"
    );
    assert!(
        invalid[1]["reason"].as_str().unwrap().contains("answer"),
        "{files}"
    );
    assert!(
        invalid[2]["reason"].as_str().unwrap().contains("number"),
        "{files}"
    );
}

#[test]
fn bad_files_are_rejected_byte_for_byte_with_a_reason() {
    let env = Env::new();
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\nmax_file_bytes = 200000\n",
    )
    .unwrap();
    let mut dropped = Vec::new();
    for kind in BadKind::ALL {
        let (name, bytes) = generate::bad_file(kind);
        env.drop_file("droid", &name, &bytes);
        // Salvaged, not rejected: its good lines integrate (tests/hostile_suite.rs).
        if kind != BadKind::JsonlBrokenLine {
            dropped.push((name, bytes));
        }
    }
    // Over the size limit, and an unsupported-looking name that is still JSON-checked.
    let big = format!(
        "[{}]",
        vec!["{\"question\":\"q\",\"answer\":\"a\"}"; 10_000].join(",")
    );
    env.drop_file("droid", "too_big.json", big.as_bytes());
    dropped.push(("too_big.json".to_string(), big.into_bytes()));
    assert!(dropped.len() >= 13, "at least 12 kinds of bad input");

    let run = env.run(&["ingest", "--json"]).expect(3);
    let j = run.json();
    assert_eq!(
        j["files_rejected"],
        dropped.len() as u64,
        "{}",
        run.explain()
    );
    assert_eq!(j["files_integrated"], 1, "{}", run.explain());
    assert_eq!(
        j["pairs_new"],
        BadKind::JsonlBrokenLine.recoverable_keys().len(),
        "{}",
        run.explain()
    );
    for (name, bytes) in &dropped {
        let kept = env.path(&format!("inbox/droid/rejected/{name}"));
        assert_eq!(
            &std::fs::read(&kept).unwrap_or_default(),
            bytes,
            "{name} kept byte for byte\n{}",
            run.explain()
        );
        let reason =
            std::fs::read_to_string(env.path(&format!("inbox/droid/rejected/{name}.reason")))
                .unwrap_or_else(|_| panic!("{name}.reason missing\n{}", run.explain()));
        assert!(
            reason.contains(name.as_str()),
            "reason names the file: {reason}"
        );
        assert!(reason.contains("reason: "), "{reason}");
    }
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    let rejected = env.run(&["files", "--rejected", "--json"]).expect(0).json();
    assert_eq!(rejected.as_array().unwrap().len(), dropped.len());
    let reason_of = |name: &str| -> String {
        rejected
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["reason"].as_str())
            .unwrap_or_else(|| panic!("no ledger row for {name}: {rejected}"))
            .to_string()
    };
    assert!(reason_of("too_big.json").contains("over the limit"));
    for (name, _) in &dropped {
        let reason = reason_of(name);
        assert!(!reason.is_empty(), "{name}");
    }
    // Where a reason can say where, it does.
    let located = dropped
        .iter()
        .filter(|(name, _)| {
            let r = reason_of(name);
            r.contains("line ") || r.contains("pair ")
        })
        .count();
    assert!(
        located >= 5,
        "reasons with a location: {located}\n{rejected}"
    );
    // A second run has nothing left to do.
    let again = env.run(&["ingest", "--json"]).expect(0).json();
    assert_eq!(again["files_rejected"], 0);
}

#[test]
fn deep_nesting_is_a_clean_rejection() {
    let env = Env::new();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    env.drop_file("droid", "deep.json", &deep);
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    env.drop_file("droid", "deep_obj.json", &deep_obj);
    let run = env.run(&["ingest", "--json"]).expect(3);
    assert_eq!(run.json()["files_rejected"], 2, "{}", run.explain());
    let reason =
        std::fs::read_to_string(env.path("inbox/droid/rejected/deep.json.reason")).unwrap();
    assert!(reason.contains("deep"), "{reason}");
}

#[test]
fn rerun_and_same_content_under_a_new_name_add_nothing() {
    let env = Env::new();
    let files = generate::generate(&config(vec![], vec![], 5, 40));
    drop_all(&env, "droid", &files);
    let first = env.run(&["ingest", "--json"]).expect(0).json();
    let want = distinct_pairs(&files) as u64;
    assert_eq!(first["pairs_new"], want);

    let second = env.run(&["ingest", "--json"]).expect(0).json();
    assert_eq!(second["pairs_new"], 0);
    assert_eq!(second["files_integrated"], 0);

    // The same bytes again, under new names and another agent.
    for (i, f) in files.iter().enumerate() {
        env.drop_file("zai", &format!("renamed_{i}.json"), &f.bytes);
    }
    let third = env.run(&["ingest", "--json"]).expect(0);
    let j = third.json();
    assert_eq!(j["pairs_new"], 0, "{}", third.explain());
    assert_eq!(j["files_duplicate"], 5, "{}", third.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs") as u64, want);
    assert_eq!(
        env.files_in("inbox/zai/processed").len(),
        5,
        "{}",
        third.explain()
    );

    // Same name, same bytes dropped again after it was processed: kept, not overwritten.
    env.drop_file("droid", &files[0].name, &files[0].bytes);
    let fourth = env.run(&["ingest", "--json"]).expect(0);
    assert_eq!(fourth.json()["files_duplicate"], 1, "{}", fourth.explain());
    assert_eq!(
        env.files_in("inbox/droid/processed").len(),
        6,
        "{}",
        fourth.explain()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs") as u64, want);
}

#[test]
fn duplicates_across_files_are_stored_once() {
    let env = Env::new();
    let mut cfg = config(vec![DropLayout::Flat, DropLayout::JsonLines], vec![], 8, 50);
    cfg.duplicate_ratio = 0.3;
    let files = generate::generate(&cfg);
    drop_all(&env, "droid", &files);
    let run = env.run(&["ingest", "--json"]).expect(0);
    let j = run.json();
    let want = distinct_pairs(&files) as u64;
    let total: u64 = files.iter().map(|f| f.pairs as u64).sum();
    assert!(want < total, "the generator made duplicates");
    assert_eq!(j["pairs_new"], want, "{}", run.explain());
    assert_eq!(j["pairs_duplicate"], total - want, "{}", run.explain());
}

#[test]
fn paths_are_read_in_place_and_never_moved() {
    let env = Env::new();
    let files = generate::generate(&config(vec![DropLayout::Nested], vec![], 4, 25));
    let archive = env.path("archive/sessions");
    generate::write_files(&archive, &files).unwrap();
    let before = env.files_in("archive/sessions");
    let run = env
        .run(&[
            "ingest",
            "--agent",
            "claude_code",
            "--json",
            archive.to_str().unwrap(),
        ])
        .expect(0);
    assert_eq!(
        run.json()["pairs_new"],
        distinct_pairs(&files) as u64,
        "{}",
        run.explain()
    );
    assert_eq!(env.files_in("archive/sessions"), before, "nothing moved");
    for f in &files {
        assert_eq!(
            std::fs::read(archive.join(&f.name)).unwrap(),
            f.bytes,
            "nothing changed"
        );
    }
    let agents: Vec<String> = env
        .db()
        .prepare("SELECT DISTINCT agent FROM pairs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(agents, ["claude_code"]);
    let again = env
        .run(&["ingest", "--json", archive.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(again["pairs_new"], 0);
    assert_eq!(again["files_already_done"], 4);
    let ledger_rows = env.count("SELECT COUNT(*) FROM files");
    assert_eq!(ledger_rows, 4, "a re-run adds no ledger rows");
}

#[test]
fn temporary_and_hidden_names_are_never_read() {
    let env = Env::new();
    let good = r#"[{"question": "Q?", "answer": "A."}]"#;
    for name in [
        ".hidden.json",
        "x.json.tmp",
        "x.json.part",
        "x.partial",
        "x.json~",
    ] {
        env.write(&format!("inbox/droid/{name}"), good);
    }
    let run = env.run(&["ingest", "--json"]).expect(0);
    assert_eq!(run.json()["files_integrated"], 0, "{}", run.explain());
    assert_eq!(env.files_in("inbox/droid").len(), 5, "{}", run.explain());
}

#[test]
fn stats_and_files_report_what_is_stored() {
    let env = Env::new();
    std::fs::write(env.path("perpetual.toml"), "goal = 400\n").unwrap();
    let files = generate::generate(&config(vec![DropLayout::Nested], vec![], 3, 100));
    drop_all(&env, "droid", &files);
    env.drop_file("zai", "broken.json", "[{\"question\": ");
    env.run(&["ingest"]).expect(3);
    let want = distinct_pairs(&files) as u64;
    let j = env.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(j["pairs"], want);
    assert_eq!(j["files_integrated"], 3);
    assert_eq!(j["files_rejected"], 1);
    assert_eq!(j["by_agent"][0]["name"], "droid");
    assert_eq!(j["by_agent"][0]["pairs"], want);
    assert!(!j["by_category"].as_array().unwrap().is_empty());
    let human = env.run(&["stats"]).expect(0).stdout();
    let expected = format!("{want} / 400 ({:.1}%)", want as f64 * 100.0 / 400.0);
    assert!(human.contains(&expected), "{human}\nwanted {expected}");
    let listing = env.run(&["files"]).expect(0).stdout();
    assert!(
        listing.contains("broken.json") && listing.contains("rejected"),
        "{listing}"
    );
    let rejected = env.run(&["files", "--rejected"]).expect(0).stdout();
    assert!(!rejected.contains("integrated"), "{rejected}");
}

#[test]
fn a_second_writer_is_refused_with_the_holder_named() {
    let env = Env::new();
    env.write("perpetual.toml", "");
    // Hold the lock the way a running writer does.
    let root = perpetual::root::Root::new(env.root()).unwrap();
    let _lock = root.lock_writer("watch").unwrap();
    let run = env.run(&["ingest"]).expect(1);
    assert!(
        run.stderr().contains("perpetual watch"),
        "{}",
        run.explain()
    );
    assert!(
        run.stderr()
            .contains(&format!("pid {}", std::process::id())),
        "{}",
        run.explain()
    );
    env.run(&["stats"]).expect(0);
}

#[test]
fn kill_9_mid_ingest_then_rerun_ends_with_exactly_the_distinct_pairs() {
    let env = Env::new();
    // Small checkpoints so kills land between checkpoints inside files too.
    std::fs::write(
        env.path("perpetual.toml"),
        "[ingest]\ncheckpoint_every = 37\n",
    )
    .unwrap();
    let mut cfg = config(vec![], vec![], 120, 300);
    cfg.duplicate_ratio = 0.2;
    let files = generate::generate(&cfg);
    drop_all(&env, "droid", &files);
    let want = distinct_pairs(&files) as i64;
    kill_9_runs_then_finish_exactly(&env, &files, want, &[40, 90, 160, 260, 400]);
}

/// Starts `ingest` once per delay and SIGKILLs it after that delay (if it still runs),
/// then runs it to the end and checks that every distinct pair is stored once, every
/// key in the key index or its tail once, every file in processed/ once with its
/// ledger row integrated.
fn kill_9_runs_then_finish_exactly(
    env: &Env,
    files: &[generate::GeneratedFile],
    want: i64,
    delays_ms: &[u64],
) {
    let mut killed = 0;
    for &delay_ms in delays_ms {
        let mut child = env
            .command(&["ingest"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    let run = env.run(&["ingest", "--json"]).expect(0);
    assert!(killed > 0, "at least one run was killed mid-way");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want,
        "{}",
        run.explain()
    );
    // Every stored key is in the key index or its tail exactly once, whatever the
    // killed runs left behind.
    common::assert_keys_exact(env, want);
    assert_eq!(env.count("SELECT COUNT(DISTINCT key) FROM pairs"), want);
    // Every file ends in processed/ exactly once, with its ledger row integrated.
    let processed = env.files_in("inbox/droid/processed");
    assert_eq!(processed.len(), files.len(), "{}", run.explain());
    assert!(env.files_in("inbox/droid").is_empty(), "{}", run.explain());
    common::assert_ledger_exact(env, files, want);
}

/// A run that writes more than `BACKGROUND_CHECKPOINT_BYTES` of new pairs copies the
/// WAL into the database file on a thread of its own while it goes on writing; killed at
/// any moment, with that thread in the middle of a copy or not, the next run still ends
/// with every distinct pair exactly once.
#[test]
fn a_run_large_enough_to_checkpoint_in_the_background_survives_kill_9_exactly_once() {
    let env = Env::new();
    let mut cfg = config(vec![], vec![], 80, 200);
    cfg.duplicate_ratio = 0.2;
    cfg.answer_chars = Some((800, 2000));
    let files = generate::generate(&cfg);
    let bytes: usize = files.iter().map(|f| f.bytes.len()).sum();
    assert!(
        bytes as u64 > 2 * perpetual::engine::ingest::BACKGROUND_CHECKPOINT_BYTES,
        "{bytes} bytes: too few to start the background checkpoints"
    );
    drop_all(&env, "droid", &files);
    let want = distinct_pairs(&files) as i64;
    // One whole run first, in another root, to see the thread at work.
    let whole = Env::new();
    drop_all(&whole, "droid", &files);
    let run = whole
        .command(&["ingest", "--json"])
        .env("RUST_LOG", "perpetual=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    assert!(log.contains("background checkpoint"), "{log}");
    assert_eq!(whole.count("SELECT COUNT(*) FROM pairs"), want);
    // The short delays for release builds, where a whole run takes about 100 ms (the
    // first run that is not killed moves every file, and the later ones find nothing).
    kill_9_runs_then_finish_exactly(&env, &files, want, &[20, 60, 150, 300, 500, 800]);
}

#[test]
fn generate_answer_chars_writes_answers_of_that_length_and_refuses_a_reversed_range() {
    let env = Env::new();
    env.run(&[
        "generate",
        "--files",
        "6",
        "--pairs",
        "10",
        "--answer-chars",
        "800-2000",
        "--seed",
        "5",
    ])
    .expect(0);
    env.run(&["ingest"]).expect(0);
    let shortest = env.count("SELECT MIN(length(answer)) FROM pairs");
    let longest = env.count("SELECT MAX(length(answer)) FROM pairs");
    assert!(
        (800..=2000).contains(&shortest) && (800..=2000).contains(&longest),
        "answers of {shortest} to {longest} characters"
    );
    let run = env
        .run(&["generate", "--answer-chars", "2000-800"])
        .expect(2);
    assert!(
        run.stderr().contains("2000 is more than 800"),
        "{}",
        run.explain()
    );
}

/// Of two files with the same pair, the one listed first is where it is new, however
/// many threads prepare them: with two, a large first file is still being parsed when a
/// small second one is ready, and the writer waits for the first.
#[test]
fn the_earlier_file_is_the_original_however_the_preparation_finishes() {
    let env = Env::new();
    let shared = r#"{"question": "What is the shared pair?", "answer": "The one in both files."}"#;
    let mut big = String::from("[");
    for i in 0..20_000 {
        big.push_str(&format!(
            r#"{{"question": "Big question {i}?", "answer": "Big answer {i}, long enough to take a while to parse and key."}},"#
        ));
    }
    big.push_str(shared);
    big.push(']');
    for round in 0..3 {
        let (a, b) = (
            format!("a_big_{round}.json"),
            format!("b_small_{round}.json"),
        );
        // Fresh pairs each round: the big file's questions carry the round.
        env.drop_file("droid", &a, big.replace("?\"", &format!(" ({round})?\"")));
        env.drop_file(
            "droid",
            &b,
            format!("[{}]", shared.replace("?\"", &format!(" ({round})?\""))),
        );
        // Two prepare threads whatever this machine's cores.
        let run = env
            .run_with(&["ingest", "--json"], &[("PERPETUAL_PREPARE_THREADS", "2")])
            .expect(0);
        assert_eq!(run.json()["pairs_new"], 20_001, "{}", run.explain());
        let files = env.run(&["files", "--json"]).expect(0).json();
        let of = |name: &str| {
            files
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {files}"))
                .clone()
        };
        assert_eq!(of(&a)["pairs_new"], 20_001, "{files}");
        assert_eq!(of(&b)["pairs_new"], 0, "{files}");
        assert_eq!(of(&b)["pairs_duplicate"], 1, "{files}");
    }
}

/// The checkpoint thread syncs the database file through SQLite's own descriptor
/// (`store::sync_database_file`). Had it opened and closed a descriptor of its own,
/// the close would drop every POSIX lock this process holds on the file: another
/// process (here `perpetual stats`) would then take itself for the last connection and
/// checkpoint and delete the WAL under the connections still open.
#[test]
fn syncing_the_database_file_leaves_other_processes_seeing_its_connections() {
    let env = Env::new();
    env.run(&["init"]).expect(0);
    let path = env.path("perpetual.db");
    let held = perpetual::store::open(&path).unwrap();
    held.execute_batch("CREATE TABLE scratch(x); INSERT INTO scratch VALUES (1);")
        .unwrap();
    let syncing = perpetual::store::open(&path).unwrap();
    perpetual::store::sync_database_file(&syncing).unwrap();
    env.run(&["stats", "--json"]).expect(0);
    assert!(
        env.path("perpetual.db-wal").exists(),
        "another process deleted the WAL while this one had the database open\n{}",
        env.listing()
    );
    assert!(
        perpetual::store::sync_database_file(&perpetual::store::open_in_memory().unwrap()).is_err()
    );
    drop((held, syncing));
}

/// A database perpetual creates has 16 KiB pages (the writer's speed: BENCHMARKS.md, "End
/// to end", sixth sitting); one created before, with SQLite's 4 KiB, keeps them and is
/// written as before.
#[test]
fn a_new_database_gets_16_kib_pages_and_an_older_one_keeps_its_own() {
    let page_size = |path: &std::path::Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let fresh = Env::new();
    fresh.write(
        "inbox/droid/a.json",
        r#"[{"question": "What is WAL?", "answer": "A write-ahead log."}]"#,
    );
    fresh.run(&["ingest"]).expect(0);
    assert_eq!(page_size(&fresh.path("perpetual.db")), 16384);

    let older = Env::new();
    {
        let conn = rusqlite::Connection::open(older.path("perpetual.db")).unwrap();
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
    }
    assert_eq!(page_size(&older.path("perpetual.db")), 4096);
    older.write(
        "inbox/droid/a.json",
        r#"[{"question": "What is WAL?", "answer": "A write-ahead log."}]"#,
    );
    older.run(&["ingest"]).expect(0);
    assert_eq!(page_size(&older.path("perpetual.db")), 4096);
    let stats = older.run(&["stats", "--json"]).expect(0).json();
    assert_eq!(stats["pairs"], 1, "{stats}");
}

/// Past `MERGE_MIN` (200,000) distinct pairs the key tail is merged into the index, and
/// the merge stores the Bloom filter over it (store::key_filter). A later run, in a new
/// process, must still find every merged pair through that filter; and a database
/// without the filter (one from before it) gets one built from the index.
#[test]
fn merged_pairs_stay_distinct_through_the_key_filter_in_later_runs() {
    let env = Env::new();
    let mut cfg = config(vec![DropLayout::Flat], vec![], 404, 500);
    cfg.answer_chars = Some((20, 40));
    let files = generate::generate(&cfg);
    let archive = env.path("archive");
    generate::write_files(&archive, &files).unwrap();
    let want = distinct_pairs(&files) as i64;
    assert!(want > 200_000, "enough to merge: {want}");
    let run = env
        .run(&["ingest", "--json", archive.to_str().unwrap()])
        .expect(0);
    assert_eq!(run.json()["pairs_new"], want, "{}", run.explain());
    let merged = env.count("SELECT SUM(keys) FROM pair_key_runs");
    assert!(merged >= 200_000, "the tail was merged: {merged}");
    assert_eq!(
        (
            env.count("SELECT COUNT(*) FROM pair_keys"),
            env.count("SELECT SUM(length(entries)) / 40 FROM pair_key_run_1")
        ),
        (0, merged),
        "the merge wrote the keys as run 1"
    );
    assert_eq!(
        env.count("SELECT keys FROM pair_key_filter"),
        merged,
        "the merge stored the filter, stamped with what it covers"
    );

    // A new drop (new bytes) holding stored pairs, merged ones among them, and a fresh one.
    let resend = |label: &str, ids: &[i64]| -> serde_json::Value {
        let db = env.db();
        let mut pairs: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                db.query_row(
                    "SELECT question, answer FROM pairs WHERE id = ?1",
                    [id],
                    |r| {
                        Ok(serde_json::json!({
                            "question": r.get::<_, String>(0)?,
                            "answer": r.get::<_, String>(1)?,
                        }))
                    },
                )
                .unwrap()
            })
            .collect();
        pairs.push(serde_json::json!({
            "question": format!("A question never asked before ({label})?"),
            "answer": "An answer to go with it.",
        }));
        env.drop_file(
            "droid",
            &format!("{label}.json"),
            serde_json::to_vec(&pairs).unwrap(),
        );
        env.run(&["ingest", "--json"]).expect(0).json()
    };
    let last = want;
    let again = resend("again", &[1, 2, merged, last]);
    assert_eq!(
        (again["pairs_new"].clone(), again["pairs_duplicate"].clone()),
        (1.into(), 4.into()),
        "merged pairs (first and last merged) and tail pairs are duplicates: {again}"
    );

    // A database from before the filter: the next writer builds it from the index.
    rusqlite::Connection::open(env.path("perpetual.db"))
        .unwrap()
        .execute_batch("DELETE FROM pair_key_filter")
        .unwrap();
    let rebuilt = resend("rebuilt", &[3, merged - 1]);
    assert_eq!(
        (
            rebuilt["pairs_new"].clone(),
            rebuilt["pairs_duplicate"].clone()
        ),
        (1.into(), 2.into()),
        "{rebuilt}"
    );
    assert_eq!(env.count("SELECT keys FROM pair_key_filter"), merged);
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), want + 2);
}

/// A kept WAL whose pages the kernel dropped from its cache (this VM's DAMON evicts page
/// cache idle for a minute) is not read back from the disk page by page when the next
/// run writes its frames over it: the part no frame can be read from is zeroed first
/// where it is not cached (`store::wal::zero_evicted_tail`), and every pair of both
/// runs is there. (How much faster: `benches/kept_wal.py`, BENCHMARKS.md.)
#[test]
fn a_kept_wal_evicted_from_the_page_cache_is_written_over_without_reading_it_back() {
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let mut cfg = config(vec![DropLayout::Nested], vec![], 4, 100);
    cfg.answer_chars = Some((800, 2000));
    let files = generate::generate(&cfg);
    drop_all(&env, "droid", &files);
    env.run(&["ingest"]).expect(0);
    // Whether a run's own WAL reaches the 4 MiB a close keeps depends on how far the
    // checkpoint thread keeps up with the writer (see the test below); 8 MB in one
    // transaction, closed as every command of the CLI closes, leave one for certain.
    {
        let conn = perpetual::store::open_closing(&env.path("perpetual.db")).unwrap();
        conn.execute_batch(
            "BEGIN; CREATE TABLE scratch (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO scratch SELECT randomblob(4000) FROM n;
             DROP TABLE scratch; COMMIT;",
        )
        .unwrap();
    }
    let wal_path = env.path("perpetual.db-wal");
    let before = std::fs::read(&wal_path).unwrap_or_default();
    assert!(
        perpetual::store::WAL_KEPT_BYTES.contains(&(before.len() as u64)),
        "a WAL of {} bytes is not kept\n{}",
        before.len(),
        env.listing()
    );
    let tail = before.len() - (1 << 20);
    assert!(
        before[tail..].iter().any(|b| *b != 0),
        "old frames at the end"
    );
    let page = env.count("SELECT page_size FROM pragma_page_size") as usize;
    assert!(perpetual::store::wal_frames_to_read_back(&before, page) <= 2);
    // Evicted, as the kernel does with idle page cache (clean pages: synced first).
    let wal = std::fs::File::open(&wal_path).unwrap();
    wal.sync_all().unwrap();
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::posix_fadvise(wal.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    cfg.seed = 8;
    cfg.files = 2;
    let more = generate::generate(&cfg);
    drop_all(&env, "zai", &more);
    env.run(&["ingest"]).expect(0);
    let all: Vec<_> = files.iter().chain(&more).cloned().collect();
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        distinct_pairs(&all) as i64
    );
    let after = std::fs::read(&wal_path).unwrap();
    assert_eq!(after.len(), before.len(), "the WAL is still kept");
    assert!(
        after[tail..].iter().all(|b| *b == 0),
        "the old frames past the second run's were zeroed, not left to be read back"
    );
    let check: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// `ingest` leaves the run's WAL file for the next writer instead of deleting it
/// (deleting 40 MB took 12 ms, a tenth of a 20,000-pair run) when it is 4 to 64 MiB,
/// with every frame copied into the database file and the WAL started over, so that the
/// next open reads back little of it; a command that commits nothing then closes
/// without copying it again. (Whether this run's WAL reaches 4 MiB depends on how far
/// the checkpoint thread keeps up; `store::tests` drives each case deterministically.)
#[test]
fn a_run_leaves_the_database_file_holding_every_pair_and_little_of_its_wal_to_read_back() {
    let env = Env::new();
    let mut cfg = config(vec![DropLayout::Nested], vec![], 40, 100);
    cfg.answer_chars = Some((800, 2000));
    let files = generate::generate(&cfg);
    drop_all(&env, "droid", &files);
    env.run(&["ingest"]).expect(0);
    let page: usize = env.count("SELECT page_size FROM pragma_page_size") as usize;
    let wal_path = env.path("perpetual.db-wal");
    let read_back = || {
        std::fs::read(&wal_path).map_or(0, |wal| {
            perpetual::store::wal_frames_to_read_back(&wal, page) * page
        })
    };
    assert!(
        read_back() as i64 <= perpetual::store::WAL_RECOVER_BYTES + page as i64,
        "{} bytes of the WAL to read back\n{}",
        read_back(),
        env.listing()
    );
    // The database file alone, copied without its WAL, holds every pair.
    let alone = env.path("alone.db");
    let count_alone = || -> i64 {
        std::fs::copy(env.path("perpetual.db"), &alone).unwrap();
        rusqlite::Connection::open(&alone)
            .unwrap()
            .query_row("SELECT count(*) FROM pairs", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count_alone(), distinct_pairs(&files) as i64);
    // Commands that commit nothing write neither the database file nor a kept WAL
    // (a smaller one, SQLite deletes at the close as before).
    let modified = |path: &std::path::Path| std::fs::metadata(path).ok()?.modified().ok();
    let kept = std::fs::metadata(&wal_path)
        .is_ok_and(|m| perpetual::store::WAL_KEPT_BYTES.contains(&m.len()));
    let files_now = || {
        (
            modified(&env.path("perpetual.db")),
            kept.then(|| modified(&wal_path)),
        )
    };
    let before = files_now();
    env.run(&["stats", "--json"]).expect(0);
    env.run(&["ingest", "--json"]).expect(0);
    assert_eq!(
        files_now(),
        before,
        "a command that wrote nothing wrote to the database or its WAL"
    );
    // The next run writes over a kept WAL: its pairs are there, the earlier ones too.
    cfg.seed = 8;
    cfg.files = 2;
    let more = generate::generate(&cfg);
    drop_all(&env, "zai", &more);
    env.run(&["ingest"]).expect(0);
    let all: Vec<_> = files.iter().chain(&more).cloned().collect();
    assert_eq!(count_alone(), distinct_pairs(&all) as i64);
    assert!(read_back() as i64 <= perpetual::store::WAL_RECOVER_BYTES + page as i64);
    // A small WAL (a fresh root's schema and one pair, 1.1 MB) is deleted at the
    // close, as SQLite does.
    let small = Env::new();
    small.drop_file(
        "droid",
        "one.json",
        r#"[{"question": "q?", "answer": "a."}]"#,
    );
    small.run(&["ingest"]).expect(0);
    assert!(
        !small.path("perpetual.db-wal").exists(),
        "{}",
        small.listing()
    );
}
