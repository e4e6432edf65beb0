//! The dataset workbench through the real binary: `quality`, `near-dups`, `coverage`,
//! `import-db`, and their task kinds run by `perpetual run`.

mod common;

use common::Env;
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
