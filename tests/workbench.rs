//! The dataset workbench through the real binary: `quality`, `near-dups`, `coverage`,
//! `import-db`, and their task kinds run by `perpetual run`.

mod common;

use common::{Env, git};
use serde_json::{Value, json};

/// A drop with one pair for each quality flag, and two clean ones.
fn quality_drop() -> String {
    let src = json!({"sources": ["Investopedia"]});
    let pair = |q: &str, a: &str, ind: Option<&str>, cat: Option<&str>, sources: bool| {
        let mut o = json!({"question": q, "answer": a});
        if let Some(i) = ind {
            o["indicator"] = json!(i);
        }
        if let Some(c) = cat {
            o["category"] = json!(c);
        }
        if sources {
            o["sources"] = src["sources"].clone();
        }
        o
    };
    let ok = |q: &str, a: &str| pair(q, a, Some("RSI"), Some("momentum"), true);
    json!([
        ok(
            "What does RSI above 70 mean?",
            "It is usually read as overbought, though trends can keep it there."
        ),
        ok(
            "What is the default RSI period?",
            "Fourteen periods, as Wilder proposed in 1978."
        ),
        ok("Is RSI bounded?", "Yes."),
        ok(
            "How is RSI smoothed?",
            "Wilder's smoothing is an exponential average with alpha of one over the peri"
        ),
        ok(
            "Explain RSI divergence",
            "Price makes a new high while RSI makes a lower high, a sign of waning momentum."
        ),
        ok(
            "What does RSI measure?",
            "What does RSI measure? It measures the speed and size of recent price changes."
        ),
        ok(
            "Can RSI predict tops?",
            "As an AI language model, I cannot predict market tops or give advice."
        ),
        ok(
            "What is RSI’s midline?",
            "The midline is 50; itâ€™s where gains and losses balance out exactly."
        ),
        ok(
            "What is RSI?",
            "A momentum oscillator \u{FFFD} bounded between zero and one hundred."
        ),
        pair(
            "What is MACD?",
            "The gap between two exponential moving averages, with a signal line.",
            None,
            Some("momentum"),
            true
        ),
        pair(
            "What is ATR?",
            "The average true range, a measure of how far price moves per bar.",
            Some("ATR"),
            None,
            true
        ),
        pair(
            "What is OBV?",
            "On-balance volume adds volume on up days and subtracts it on down days.",
            Some("OBV"),
            Some("volume"),
            false
        ),
    ])
    .to_string()
}

#[test]
fn quality_flags_each_defect_stores_the_flags_and_writes_identical_reports_twice() {
    let env = Env::new();
    env.drop_file("droid", "quality.json", quality_drop());
    env.run(&["ingest"]).expect(0);
    let stats = env.run(&["stats"]).expect(0);
    assert!(
        stats.stdout().contains("no quality report yet"),
        "{}",
        stats.explain()
    );

    let run = env.run(&["quality", "--json"]).expect(0);
    let s = run.json();
    assert_eq!(s["pairs"], 12, "{}", run.explain());
    assert_eq!(s["flagged"], 10);
    let by_flag = &s["by_flag"];
    for flag in [
        "short_answer",
        "truncated",
        "no_question_mark",
        "answer_repeats_question",
        "boilerplate",
        "mojibake",
        "replacement_char",
        "missing_indicator",
        "missing_category",
        "no_sources",
    ] {
        assert_eq!(by_flag[flag], 1, "{flag}: {}", run.explain());
    }
    assert_eq!(by_flag["empty_answer"], 0);

    // One line per flagged pair, in id order, with the key and the score.
    let lines: Vec<Value> = std::fs::read_to_string(env.path("outbox/zai/quality_flags.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["id"], 3);
    assert_eq!(lines[0]["flags"], json!(["short_answer"]));
    assert_eq!(lines[0]["score"], 0.7);
    assert_eq!(lines[0]["key"].as_str().unwrap().len(), 64);
    let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    // The report: totals, groups with length statistics, the thresholds.
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("outbox/zai/quality_analysis_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["totals"]["flagged"], 10);
    assert_eq!(report["thresholds"]["min_answer_chars"], 40);
    let momentum = report["by_category"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "momentum")
        .unwrap();
    assert_eq!(momentum["pairs"], 10);
    assert_eq!(momentum["answer_chars"]["min"], 4, "\"Yes.\"");
    assert!(
        momentum["answer_words"]["histogram"]
            .as_array()
            .unwrap()
            .len()
            == 8
    );
    let md = std::fs::read_to_string(env.path("outbox/zai/quality_analysis_report.md")).unwrap();
    assert!(md.contains("**10 flagged"), "{md}");

    // Stored, so exports can leave them out; stats shows the count.
    assert_eq!(env.count("SELECT COUNT(*) FROM quality_flags"), 10);
    assert_eq!(
        env.run(&["stats", "--json"]).expect(0).json()["flagged"],
        10
    );
    let stats = env.run(&["stats"]).expect(0);
    assert!(
        stats.stdout().contains("flagged     10 pairs"),
        "{}",
        stats.explain()
    );

    // The same database gives the same bytes.
    let before = read_all(&env, "outbox/zai");
    env.run(&["quality"]).expect(0);
    assert_eq!(read_all(&env, "outbox/zai"), before);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM quality_flags"),
        10,
        "replaced, not added"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM dataset_runs WHERE command = 'quality' AND finished_at IS NOT NULL"),
        2
    );

    // --out DIR, and a configured ignore list.
    env.write("perpetual.toml", "[quality]\nignore = [\"no_sources\"]\n");
    let out = env.path("elsewhere");
    let run = env
        .run(&["quality", "--out", out.to_str().unwrap(), "--json"])
        .expect(0);
    assert_eq!(run.json()["flagged"], 9, "{}", run.explain());
    assert!(out.join("quality_analysis_report.json").is_file());
    env.write("perpetual.toml", "[quality]\nignore = [\"nosources\"]\n");
    let bad = env.run(&["quality"]).expect(1);
    assert!(bad.stderr().contains("nosources"), "{}", bad.explain());
}

/// Every file under `rel`, name → bytes.
pub fn read_all(env: &Env, rel: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(
        base: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(&env.path(rel), &env.path(rel), &mut out);
    out
}

/// Writes a generated database (the seeds' production layout) with `perpetual generate
/// --db`; returns its path.
fn generated_db(env: &Env, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = env.path(name);
    let mut all = vec!["generate", "--db", path.to_str().unwrap()];
    all.extend_from_slice(args);
    env.run(&all).expect(0);
    path
}

/// What a source database holds: rows, distinct valid pairs (by the pair key), rows
/// without a valid question and answer.
fn expected(db: &std::path::Path) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT question, answer FROM qa_pairs ORDER BY id")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut keys = std::collections::HashSet::new();
    let mut invalid = 0;
    for (q, a) in &rows {
        if q.trim().is_empty() || a.trim().is_empty() {
            invalid += 1;
        } else {
            keys.insert(perpetual::pair::pair_key(q, a));
        }
    }
    (rows.len() as i64, keys.len() as i64, invalid)
}

#[test]
fn near_dups_finds_the_planted_near_duplicates_and_a_rerun_signs_only_new_pairs() {
    let env = Env::new();
    env.run(&[
        "generate",
        "--files",
        "12",
        "--pairs",
        "40",
        "--near-dups",
        "0.1",
        "--seed",
        "3",
    ])
    .expect(0);
    env.run(&["ingest"]).expect(0);
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    let planted = env.count(
        "SELECT COUNT(*) FROM pairs p JOIN files f ON p.file_id = f.id WHERE f.name = 'near_duplicates.json'",
    );
    assert!(planted >= 40, "{planted} planted");

    let run = env.run(&["near-dups", "--json"]).expect(0);
    let s = run.json();
    assert_eq!(s["pairs"], pairs, "{}", run.explain());
    assert_eq!(s["signatures_made"], pairs);
    // Every planted variant lands in a cluster with its original, and nothing else does
    // (the generator's distinct pairs share an indicator and much wording, not 80%).
    assert_eq!(s["clusters"], planted, "{}", run.explain());
    assert_eq!(s["pairs_in_clusters"], 2 * planted);

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("outbox/zai/duplicate_analysis_detailed.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["parameters"]["method"], "minhash");
    assert_eq!(report["parameters"]["threshold"], 0.8);
    assert!(
        report["parameters"]["rule"]
            .as_str()
            .unwrap()
            .contains("drop_similarity")
    );
    let clusters = report["clusters"].as_array().unwrap();
    for c in clusters {
        let members = c["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0]["id"], c["representative"]);
        assert_eq!(members[0]["similarity"], 1.0);
        assert!(members[1]["similarity"].as_f64().unwrap() >= 0.8, "{c}");
        assert!(["keep", "merge", "drop"].contains(&c["recommendation"].as_str().unwrap()));
    }
    // Casing and punctuation change no word: those variants are recommended for dropping.
    assert!(clusters.iter().any(|c| c["recommendation"] == "drop"));
    let csv = std::fs::read_to_string(env.path("outbox/zai/near_duplicate_pairs.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("a,b,similarity"));
    assert_eq!(csv.lines().count() as i64, planted + 1);

    // Membership is kept for splits and exports.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM near_dup_members WHERE method = 'minhash'"),
        2 * planted
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM near_dup_members WHERE pair_id = representative"),
        planted
    );

    // The same database gives the same bytes, and signs nothing again.
    let before = read_all(&env, "outbox/zai");
    let again = env.run(&["near-dups", "--json"]).expect(0);
    assert_eq!(again.json()["signatures_made"], 0);
    assert_eq!(read_all(&env, "outbox/zai"), before);

    // New pairs: only they are signed.
    env.run(&[
        "generate",
        "--files",
        "2",
        "--pairs",
        "10",
        "--seed",
        "9",
        "--first-pair-id",
        "100000",
    ])
    .expect(0);
    env.run(&["ingest"]).expect(0);
    let grown = env.run(&["near-dups", "--json"]).expect(0);
    assert_eq!(grown.json()["signatures_made"], 20, "{}", grown.explain());

    // A stricter threshold from the command line; text output.
    let text = env.run(&["near-dups", "--threshold", "0.999"]).expect(0);
    assert!(
        text.stdout().contains("clusters holding"),
        "{}",
        text.explain()
    );
    env.run(&["near-dups", "--threshold", "1.5"]).expect(1);
}

#[test]
fn import_db_detects_the_columns_dedups_and_a_second_import_adds_nothing() {
    let env = Env::new();
    let db = generated_db(
        &env,
        "crypto_indicators_production.db",
        &[
            "--files",
            "6",
            "--pairs",
            "30",
            "--duplicates",
            "0.2",
            "--bad",
            "3",
        ],
    );
    let (rows, distinct, invalid) = expected(&db);
    assert_eq!(invalid, 3);
    let run = env
        .run(&[
            "import-db",
            db.to_str().unwrap(),
            "--agent",
            "claude_code",
            "--json",
        ])
        .expect(0);
    let r = run.json();
    assert_eq!(r["pairs_seen"], rows, "{}", run.explain());
    assert_eq!(r["pairs_new"], distinct);
    assert_eq!(r["pairs_duplicate"], rows - distinct - invalid);
    assert_eq!(r["pairs_invalid"], invalid);
    let t = &r["tables"][0];
    assert_eq!(t["table"], "qa_pairs");
    assert_eq!(t["mapping"]["indicator"], "indicator_name");
    assert_eq!(t["mapping"]["category"], "indicator_category");
    assert_eq!(
        t["mapping"]["extra"],
        json!(["id", "sources", "quality_score", "created_at"])
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs WHERE indicator IS NULL OR category IS NULL"),
        0
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs WHERE json_extract(extra, '$.sources') IS NOT NULL"),
        distinct
    );
    // The ledger: one row for the database's table, with the invalid rows by rowid.
    let files = env.run(&["files", "--json"]).expect(0).json();
    let row = &files[0];
    assert_eq!(row["name"], "crypto_indicators_production.db#qa_pairs");
    assert_eq!(row["status"], "integrated");
    assert_eq!(row["layout"], "sqlite");
    assert_eq!(row["pairs_invalid"], 3);
    assert!(
        row["invalid"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("answer is empty"),
        "{row}"
    );
    assert!(db.exists(), "read in place, never moved");

    // Again: nothing added.
    let again = env
        .run(&["import-db", db.to_str().unwrap(), "--json"])
        .expect(0);
    assert_eq!(again.json()["pairs_new"], 0, "{}", again.explain());
    assert_eq!(again.json()["tables"][0]["status"], "already");
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct);
    assert_eq!(env.count("SELECT COUNT(*) FROM files"), 1);
    let text = env.run(&["import-db", db.to_str().unwrap()]).expect(0);
    assert!(
        text.stdout().contains("imported before"),
        "{}",
        text.explain()
    );

    // Columns by hand, and the errors a person would hit.
    let other = env.path("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch(
            "CREATE TABLE notes (k TEXT, v TEXT);
             CREATE TABLE faq (prompt_text TEXT, reply TEXT, topic TEXT);
             INSERT INTO faq VALUES ('What is a doji?', 'A candle whose open and close are nearly equal.', 'candlesticks');",
        )
        .unwrap();
    }
    let none = env.run(&["import-db", other.to_str().unwrap()]).expect(1);
    assert!(
        none.stderr()
            .contains("no table has question and answer columns")
            && none.stderr().contains("faq(prompt_text, reply, topic)"),
        "{}",
        none.explain()
    );
    let missing = env
        .run(&["import-db", other.to_str().unwrap(), "--table", "nope"])
        .expect(1);
    assert!(
        missing.stderr().contains("no table \"nope\""),
        "{}",
        missing.explain()
    );
    let mapped = env
        .run(&[
            "import-db",
            other.to_str().unwrap(),
            "--table",
            "faq",
            "--map",
            "question=prompt_text,answer=reply,indicator=topic",
            "--json",
        ])
        .expect(0);
    assert_eq!(mapped.json()["pairs_new"], 1, "{}", mapped.explain());
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs WHERE indicator = 'candlesticks'"),
        1
    );
    let junk = env.write("junk.db", b"not a database at all, just text");
    let bad = env.run(&["import-db", junk.to_str().unwrap()]).expect(1);
    assert!(bad.stderr().contains("junk.db"), "{}", bad.explain());
}

/// The keys of a dropped file are hashed many at once, side by side
/// (`pair::pair_keys`); those of an imported database one by one. The same pairs
/// through both are one pair each: the second adds nothing, at lengths of one chunk
/// of BLAKE3, two and more.
#[test]
fn pairs_imported_from_a_database_and_dropped_as_a_file_are_stored_once() {
    let env = Env::new();
    let db = generated_db(
        &env,
        "archive.db",
        &[
            "--files",
            "4",
            "--pairs",
            "50",
            "--answer-chars",
            "40-2600",
            "--seed",
            "16",
        ],
    );
    let (rows, distinct, invalid) = expected(&db);
    assert_eq!(invalid, 0);
    let imported = env
        .run(&[
            "import-db",
            db.to_str().unwrap(),
            "--agent",
            "zai",
            "--json",
        ])
        .expect(0);
    assert_eq!(
        imported.json()["pairs_new"],
        distinct,
        "{}",
        imported.explain()
    );

    // The same pairs as a drop, with the whitespace changed where normalising undoes it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT question, answer FROM qa_pairs ORDER BY id")
        .unwrap();
    let pairs: Vec<serde_json::Value> = stmt
        .query_map([], |r| {
            let (q, a): (String, String) = (r.get(0)?, r.get(1)?);
            Ok(json!({"question": format!("  {q}"), "answer": a.replacen(' ', "\n ", 3)}))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lengths: Vec<usize> = pairs
        .iter()
        .map(|p| p["question"].as_str().unwrap().len() + p["answer"].as_str().unwrap().len())
        .collect();
    assert!(
        lengths.iter().any(|&n| n < 1024)
            && lengths.iter().any(|&n| (1100..2000).contains(&n))
            && lengths.iter().any(|&n| n > 2100),
        "one chunk, two and more: {lengths:?}"
    );
    env.drop_file("droid", "again.json", serde_json::to_vec(&pairs).unwrap());
    let dropped = env.run(&["ingest", "--json"]).expect(0);
    let r = dropped.json();
    assert_eq!(r["pairs_seen"], rows, "{}", dropped.explain());
    assert_eq!(r["pairs_new"], 0, "{}", dropped.explain());
    assert_eq!(r["pairs_duplicate"], rows);
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct);

    // And every stored key is the key of its pair's text.
    let stored = env.db();
    let mut stmt = stored
        .prepare("SELECT key, question, answer FROM pairs")
        .unwrap();
    for row in stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap()
    {
        let (key, q, a) = row.unwrap();
        assert_eq!(key, perpetual::pair::pair_key(&q, &a).to_vec(), "{q:?}");
    }
}

#[test]
fn kill_9_during_import_db_then_rerun_ends_with_exact_counts() {
    let env = Env::new();
    // A checkpoint every 50 rows, so a kill lands between many commits.
    env.write("perpetual.toml", "[ingest]\ncheckpoint_every = 50\n");
    let db = generated_db(
        &env,
        "big.db",
        &[
            "--files",
            "40",
            "--pairs",
            "100",
            "--duplicates",
            "0.2",
            "--bad",
            "5",
        ],
    );
    let (rows, distinct, invalid) = expected(&db);
    let mut killed = 0;
    for _ in 0..3 {
        let mut child = env.spawn(&["import-db", db.to_str().unwrap()]);
        let before = env.try_count("SELECT COUNT(*) FROM pairs").unwrap_or(0);
        // Wait until this run has committed something, then kill it mid-way.
        let deadline = std::time::Instant::now() + common::PATIENCE;
        loop {
            let now = env.try_count("SELECT COUNT(*) FROM pairs").unwrap_or(0);
            if now > before || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill9();
        if env.try_count("SELECT COUNT(*) FROM pairs").unwrap_or(0) < distinct {
            killed += 1;
        }
    }
    assert!(killed > 0, "at least one run was killed mid-import");
    let run = env
        .run(&["import-db", db.to_str().unwrap(), "--json"])
        .expect(0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        distinct,
        "{}",
        run.explain()
    );
    assert_eq!(env.count("SELECT COUNT(DISTINCT key) FROM pairs"), distinct);
    common::assert_keys_exact(&env, distinct);
    // One ledger row, exact over all the runs.
    assert_eq!(env.count("SELECT COUNT(*) FROM files"), 1);
    assert_eq!(env.count("SELECT pairs_new FROM files"), distinct);
    assert_eq!(env.count("SELECT pairs_invalid FROM files"), invalid);
    assert_eq!(env.count("SELECT pairs_seen FROM files"), rows);
    assert_eq!(
        env.count("SELECT pairs_new + pairs_duplicate + pairs_invalid FROM files"),
        rows
    );
    assert_eq!(env.count("SELECT status = 'integrated' FROM files"), 1);
}

#[test]
fn a_database_dropped_in_the_inbox_is_imported_and_moved_and_a_fake_one_rejected() {
    let env = Env::new();
    let db = generated_db(&env, "export.bin", &["--files", "3", "--pairs", "20"]);
    let (_, distinct, _) = expected(&db);
    // Recognised by its header, whatever its name.
    env.drop_file("droid", "baseline.sqlite", std::fs::read(&db).unwrap());
    env.drop_file("droid", "renamed.json", std::fs::read(&db).unwrap());
    env.drop_file("droid", "fake.db", b"SQLite format 3\0 but nothing else");
    env.drop_file("droid", "notes.db", b"not sqlite, not json");
    let run = env.run(&["ingest", "--json"]).expect(3);
    let r = run.json();
    assert_eq!(r["pairs_new"], distinct, "{}", run.explain());
    assert_eq!(r["files_rejected"], 1, "{}", run.explain());
    // A `.db` that is not SQLite is not a drop (issue 10): reported once, left alone.
    assert_eq!(r["files_skipped"], 1, "{}", run.explain());
    // The same database under a second name: a duplicate file.
    assert_eq!(r["files_duplicate"], 1, "{}", run.explain());
    assert!(env.path("inbox/droid/notes.db").exists());
    assert_eq!(
        env.files_in("inbox/droid/processed"),
        ["baseline.sqlite", "renamed.json"]
    );
    let rejected = env.files_in("inbox/droid/rejected");
    assert_eq!(rejected, ["fake.db", "fake.db.reason"], "{}", run.explain());
    let reason = std::fs::read_to_string(env.path("inbox/droid/rejected/fake.db.reason")).unwrap();
    assert!(
        reason.contains("not a readable SQLite database"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(env.path("inbox/droid/rejected/fake.db")).unwrap(),
        b"SQLite format 3\0 but nothing else",
        "kept byte for byte"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs WHERE agent = 'droid'"),
        distinct
    );

    // The watcher imports a database dropped while it runs.
    let db2 = generated_db(
        &env,
        "second.bin",
        &[
            "--files",
            "2",
            "--pairs",
            "15",
            "--seed",
            "5",
            "--first-pair-id",
            "50000",
        ],
    );
    let (_, more, _) = expected(&db2);
    let mut watch = env.spawn(&["watch"]);
    watch.wait_for_log("watching");
    env.drop_file("zai", "second.db", std::fs::read(&db2).unwrap());
    common::wait_until(
        "the dropped database to be imported and moved",
        || env.path("inbox/zai/processed/second.db").exists(),
        || watch.explain(),
    );
    watch.stop();
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct + more);
}

#[test]
fn a_database_dropped_amid_a_burst_is_imported_by_the_watcher_and_every_file_counts_once() {
    let env = Env::new();
    let db = generated_db(
        &env,
        "amid.bin",
        &[
            "--files",
            "2",
            "--pairs",
            "15",
            "--seed",
            "9",
            "--first-pair-id",
            "90000",
        ],
    );
    env.run(&[
        "generate", "--out", "burst", "--files", "120", "--pairs", "20", "--seed", "3",
    ])
    .expect(0);
    let names = env.files_in("burst");
    let bytes = |name: &str| std::fs::read(env.path("burst").join(name)).unwrap();
    // What the same drops give a one-shot `ingest` in a root of their own.
    let alone = Env::new();
    for name in &names {
        alone.drop_file("droid", name, bytes(name));
    }
    alone.drop_file("zai", "amid.db", std::fs::read(&db).unwrap());
    let want = alone.run(&["ingest", "--json"]).expect(0).json();

    // The watcher takes the files that arrive while a batch runs into that batch; the
    // database among them is imported by the next batch, before its files.
    let mut watch = env.spawn(&["watch"]);
    watch.wait_for_log("watching");
    for (i, name) in names.iter().enumerate() {
        env.drop_file("droid", name, bytes(name));
        if i == names.len() / 2 {
            env.drop_file("zai", "amid.db", std::fs::read(&db).unwrap());
        }
    }
    common::wait_until(
        "every drop and the database to be integrated and moved",
        || {
            env.path("inbox/zai/processed/amid.db").exists()
                && env.files_in("inbox/droid/processed").len() == names.len()
        },
        || watch.explain(),
    );
    watch.stop();
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pairs"),
        want["pairs_new"].as_i64().unwrap(),
        "{}",
        watch.explain()
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM files WHERE status = 'integrated'"),
        names.len() as i64 + 1
    );
    assert_eq!(env.files_in("inbox/droid"), Vec::<String>::new());
    assert_eq!(env.files_in("inbox/zai"), Vec::<String>::new());
}

#[test]
fn coverage_reports_gaps_against_the_plan_and_a_gap_template_turns_them_into_tasks() {
    let env = Env::new();
    env.write(
        "drops.json",
        json!([
            {"question": "What is RSI?", "answer": "A momentum oscillator.", "indicator": "Relative Strength Index", "category": "momentum"},
            {"question": "Is RSI bounded?", "answer": "Between 0 and 100.", "indicator": "rsi", "category": "momentum"},
            {"question": "What is MACD?", "answer": "Two EMAs and a signal line.", "indicator": "MACD", "category": "momentum"},
            {"question": "What is a hammer?", "answer": "A reversal candle.", "indicator": "Hammer", "category": "candlesticks"},
            {"question": "What is beta?", "answer": "Sensitivity to the market."}
        ])
        .to_string(),
    );
    env.run(&["ingest", "drops.json", "--agent", "droid"])
        .expect(0);
    env.write(
        "plan.csv",
        "indicator,category,target,aliases\nRSI,momentum,2,Relative Strength Index\nMACD,momentum,3,\nATR,volatility,,Average True Range\nOBV,volume,4,\n",
    );
    let run = env
        .run(&["coverage", "--plan", "plan.csv", "--json"])
        .expect(0);
    let s = run.json();
    assert_eq!(
        (
            s["complete"].clone(),
            s["partial"].clone(),
            s["missing"].clone()
        ),
        (json!(1), json!(1), json!(2)),
        "{}",
        run.explain()
    );
    assert_eq!(s["gap"], 2 + 100 + 4);
    assert_eq!(s["largest_gaps"], json!(["ATR", "OBV", "MACD"]));
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("outbox/zai/coverage_report.json")).unwrap(),
    )
    .unwrap();
    let rsi = &report["indicators"][0];
    assert_eq!(rsi["pairs"], 2);
    assert_eq!(rsi["status"], "complete");
    assert_eq!(
        rsi["found_as"],
        json!({"Relative Strength Index": 1, "rsi": 1})
    );
    assert_eq!(report["unmatched"], json!([{"name": "Hammer", "pairs": 1}]));
    assert_eq!(report["totals"]["pairs_without_indicator"], 1);
    let momentum = &report["categories"][0];
    assert_eq!(momentum["category"], "momentum");
    assert_eq!(momentum["percent"], 60.0, "2 of 2 and 1 of 3");
    let md = std::fs::read_to_string(env.path("outbox/zai/coverage_report.md")).unwrap();
    assert!(md.contains("| Hammer | 1 |"), "{md}");
    let before = read_all(&env, "outbox/zai");
    env.run(&["coverage", "--plan", "plan.csv"]).expect(0);
    assert_eq!(read_all(&env, "outbox/zai"), before, "byte-identical");

    // The shipped plan reads.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/indicators.toml");
    let out = env.path("shipped");
    let all = env
        .run(&[
            "coverage",
            "--plan",
            shipped.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
        .expect(0);
    assert!(
        all.json()["indicators"].as_i64().unwrap() >= 50,
        "{}",
        all.explain()
    );

    // A template asks for the largest gaps: each task takes the next ones.
    env.write("perpetual.toml", "[assign]\nmin_ready = 2\n");
    env.run(&["coverage", "--plan", "plan.csv"]).expect(0);
    env.write(
        "tasks.toml",
        "[[template]]\nagent = \"droid\"\nid = \"gaps_{n}_{gap_indicators}\"\ndescription = \"Research {gap_indicators}: 100 pairs each\"\n",
    );
    env.run(&["task", "import", "tasks.toml"]).expect(0);
    env.run(&["assign"]).expect(0);
    let list = env.run(&["task", "list", "--json"]).expect(0).json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"]["id"].as_str().or(t["id"].as_str()).unwrap())
        .collect();
    // Five gaps per task, but only three exist: one task takes them all, the second
    // finds none free and is not made.
    assert_eq!(ids, ["gaps_1_atr-obv-macd"], "{list:#}");
    let show = env
        .run(&["task", "show", "gaps_1_atr-obv-macd", "--json"])
        .expect(0)
        .json();
    let text = show.to_string();
    assert!(
        text.contains("Research ATR, OBV, MACD: 100 pairs each"),
        "{show:#}"
    );
}

#[test]
fn a_plan_imports_a_generated_database_then_the_loop_runs_quality_near_dups_and_coverage_and_commits_outbox_zai()
 {
    let env = Env::new();
    git(env.root(), &["init", "-q"]);
    let db = generated_db(
        &env,
        "baseline.db",
        &[
            "--files",
            "8",
            "--pairs",
            "40",
            "--near-dups",
            "0.1",
            "--duplicates",
            "0.1",
        ],
    );
    let (_, distinct, _) = expected(&db);
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/indicators.toml");
    env.write(
        "plan.toml",
        format!(
            r#"
[[task]]
id = "integrate_baseline_db"
agent = "zai"
priority = 1
kind = "import_db"
params = {{ path = "{db}" }}

[[task]]
id = "quality_validation"
agent = "zai"
priority = 2
kind = "quality"
after = ["integrate_baseline_db"]

[[task]]
id = "duplicate_detection_detailed"
agent = "zai"
priority = 3
kind = "near_dups"
params = {{ threshold = 0.8 }}
after = ["integrate_baseline_db"]

[[task]]
id = "indicator_coverage"
agent = "zai"
priority = 4
kind = "coverage"
params = {{ plan = "{plan}" }}
after = ["integrate_baseline_db"]
"#,
            db = db.display(),
            plan = shipped.display()
        ),
    );
    env.run(&["task", "import", "plan.toml"]).expect(0);
    let run = env
        .run_with(
            &["run", "--max-sessions", "4"],
            &[
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
            ],
        )
        .expect(0);
    for id in [
        "integrate_baseline_db",
        "quality_validation",
        "duplicate_detection_detailed",
        "indicator_coverage",
    ] {
        let t = env.run(&["task", "show", id, "--json"]).expect(0).json();
        assert_eq!(t["status"], "completed", "{id}: {t:#}\n{}", run.explain());
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM pairs"), distinct);
    let deliverables = [
        "quality_analysis_report.json",
        "quality_analysis_report.md",
        "quality_flags.jsonl",
        "duplicate_analysis_detailed.json",
        "near_duplicate_pairs.csv",
        "coverage_report.json",
        "coverage_report.md",
    ];
    let mut want: Vec<&str> = deliverables.to_vec();
    want.sort();
    assert_eq!(env.files_in("outbox/zai"), want, "{}", run.explain());
    // Each wrap committed its deliverables with the task's completion.
    let log = git(env.root(), &["log", "--format=%s"]);
    for id in [
        "quality_validation",
        "duplicate_detection_detailed",
        "indicator_coverage",
    ] {
        assert!(log.contains(&format!("Task Complete: {id}")), "{log}");
    }
    let tracked = git(env.root(), &["ls-files", "outbox/zai"]);
    for f in deliverables {
        assert!(tracked.contains(f), "{f} not committed: {tracked}");
    }
    assert!(
        git(env.root(), &["status", "--porcelain", "outbox"])
            .trim()
            .is_empty()
    );

    // The same database gives the same bytes from the command line.
    let again = env.path("again");
    let out = again.to_str().unwrap();
    env.run(&["quality", "--out", out]).expect(0);
    env.run(&["near-dups", "--out", out]).expect(0);
    env.run(&[
        "coverage",
        "--plan",
        shipped.to_str().unwrap(),
        "--out",
        out,
    ])
    .expect(0);
    assert_eq!(read_all(&env, "again"), read_all(&env, "outbox/zai"));
}

#[test]
fn workbench_task_kinds_check_their_params_when_added() {
    let env = Env::new();
    env.write(
        "plan.toml",
        "[[indicator]]\nname = \"RSI\"\ncategory = \"momentum\"\n",
    );
    let no_plan = env
        .run(&["task", "add", "cov", "--agent", "zai", "--kind", "coverage"])
        .expect(1);
    assert!(
        no_plan.stderr().contains("needs params: plan"),
        "{}",
        no_plan.explain()
    );
    // Relative paths are made absolute; the plan must read.
    env.run(&[
        "task",
        "add",
        "cov",
        "--agent",
        "zai",
        "--kind",
        "coverage",
        "--params",
        r#"{"plan": "plan.toml"}"#,
    ])
    .expect(0);
    let t = env.run(&["task", "show", "cov", "--json"]).expect(0).json();
    assert!(
        t["params"]["plan"].as_str().unwrap().starts_with('/'),
        "{t:#}"
    );
    assert_eq!(t["kind"], "coverage");
    env.write("broken.toml", "[[indicator]]\nname = \"RSI\"\n");
    let broken = env
        .run(&[
            "task",
            "add",
            "cov2",
            "--agent",
            "zai",
            "--kind",
            "coverage",
            "--params",
            r#"{"plan": "broken.toml"}"#,
        ])
        .expect(1);
    assert!(
        broken.stderr().contains("broken.toml"),
        "{}",
        broken.explain()
    );
    let stray = env
        .run(&[
            "task",
            "add",
            "q",
            "--agent",
            "zai",
            "--kind",
            "quality",
            "--params",
            r#"{"plan": "plan.toml"}"#,
        ])
        .expect(1);
    assert!(
        stray.stderr().contains("plan is not a param of quality"),
        "{}",
        stray.explain()
    );
    let bad_threshold = env
        .run(&[
            "task",
            "add",
            "n",
            "--agent",
            "zai",
            "--kind",
            "near_dups",
            "--params",
            r#"{"threshold": 2}"#,
        ])
        .expect(1);
    assert!(
        bad_threshold.stderr().contains("threshold"),
        "{}",
        bad_threshold.explain()
    );
    let no_path = env
        .run(&["task", "add", "i", "--agent", "zai", "--kind", "import_db"])
        .expect(1);
    assert!(
        no_path.stderr().contains("needs params: path"),
        "{}",
        no_path.explain()
    );
    env.run(&["task", "add", "q", "--agent", "zai", "--kind", "quality"])
        .expect(0);
    env.run(&["task", "add", "n", "--agent", "zai", "--kind", "near_dups"])
        .expect(0);
    let not_workbench = env
        .run(&["task", "add", "a", "--agent", "zai", "--params", "{}"])
        .expect(1);
    assert!(
        not_workbench.stderr().contains("--params"),
        "{}",
        not_workbench.explain()
    );
    // A plan is checked the same way, and adds nothing when one task is wrong.
    env.write(
        "tasks.toml",
        "[[task]]\nid = \"ok\"\nagent = \"zai\"\nkind = \"quality\"\n[[task]]\nid = \"wrong\"\nagent = \"zai\"\nkind = \"import_db\"\n",
    );
    let plan = env.run(&["task", "import", "tasks.toml"]).expect(1);
    assert!(
        plan.stderr().contains("needs params: path"),
        "{}",
        plan.explain()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tasks WHERE id = 'ok'"), 0);
}

#[test]
fn a_workbench_task_whose_session_a_dead_loop_left_active_runs_again_in_a_new_one() {
    let env = Env::new();
    env.drop_file("droid", "q.json", quality_drop());
    env.run(&["ingest"]).expect(0);
    env.run(&[
        "task",
        "add",
        "quality_validation",
        "--agent",
        "zai",
        "--kind",
        "quality",
    ])
    .expect(0);
    // What a loop killed in the middle of the task leaves: its session still active.
    env.run(&["session", "start", "--agent", "zai"]).expect(0);
    let run = env.run(&["run", "--once"]).expect(0);
    let t = env
        .run(&["task", "show", "quality_validation", "--json"])
        .expect(0)
        .json();
    assert_eq!(t["status"], "completed", "{t:#}\n{}", run.explain());
    assert_eq!(t["session_list"].as_array().unwrap().len(), 2);
    assert!(
        env.path("outbox/zai/quality_analysis_report.json")
            .is_file()
    );
    let active = env.run(&["session", "status"]);
    assert_eq!(
        active.code(),
        4,
        "no session left active\n{}",
        active.explain()
    );
}
