//! The workbench's deliverables through the real binary (issue 12): `export rag`,
//! `export embeddings` / `import embeddings` / `near-dups --cosine` (the round trip),
//! `split`, `charts`, and their task kinds run by `perpetual run`.

mod common;

use common::Env;
use perpetual::generate::{GenConfig, generate, write_files};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Drops `files` generated files of `pairs` pairs into inbox/droid/ and ingests them;
/// `first` numbers the fresh pairs, so sets with disjoint ranges hold different pairs.
fn grow(env: &Env, seed: u64, files: usize, pairs: usize, first: u64) {
    let cfg = GenConfig {
        seed,
        files,
        pairs_per_file: pairs,
        first_pair_id: first,
        ..GenConfig::default()
    };
    let generated: Vec<_> = generate(&cfg)
        .into_iter()
        .map(|mut f| {
            f.name = format!("s{seed}_{}", f.name);
            f
        })
        .collect();
    write_files(&env.path("inbox/droid"), &generated).unwrap();
    env.run(&["ingest"]).expect(0);
}

/// `perpetual generate` with planted near-duplicates (`--near-dups`), into inbox/droid/,
/// then `ingest`.
fn grow_with_near_dups(env: &Env, seed: u64, files: usize, pairs: usize, first: u64, ratio: &str) {
    env.run(&[
        "generate",
        "--out",
        "inbox/droid",
        "--files",
        &files.to_string(),
        "--pairs",
        &pairs.to_string(),
        "--first-pair-id",
        &first.to_string(),
        "--seed",
        &seed.to_string(),
        "--near-dups",
        ratio,
    ])
    .expect(0);
    // Generated names repeat across seeds: integrate before the next batch lands.
    env.run(&["ingest"]).expect(0);
}

/// Clusters of `method` as stored: representative → members.
fn clusters(env: &Env, method: &str) -> BTreeMap<i64, Vec<i64>> {
    let db = env.db();
    let mut stmt = db
        .prepare(
            "SELECT representative, pair_id FROM near_dup_members WHERE method = ?1
             ORDER BY representative, pair_id",
        )
        .unwrap();
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in stmt
        .query_map([method], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (rep, id) = r.unwrap();
        out.entry(rep).or_default().push(id);
    }
    out
}

/// Every file under `rel`, name → bytes.
fn read_all(env: &Env, rel: &str) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, Vec<u8>>) {
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
    let mut out = BTreeMap::new();
    walk(&env.path(rel), &env.path(rel), &mut out);
    out
}

fn jsonl(env: &Env, rel: &str) -> Vec<Value> {
    std::fs::read_to_string(env.path(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", env.listing()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{rel}: {e}: {l}")))
        .collect()
}

fn parquet_rows(env: &Env, rel: &str) -> Vec<arrow_array::RecordBatch> {
    let file = std::fs::File::open(env.path(rel)).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn parquet_ids(env: &Env, rel: &str) -> Vec<i64> {
    use arrow_array::Array;
    let mut ids = Vec::new();
    for b in parquet_rows(env, rel) {
        let col = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .clone();
        ids.extend((0..col.len()).map(|i| col.value(i)));
    }
    ids
}

#[test]
fn rag_export_reads_back_as_jsonl_and_parquet_and_is_identical_twice() {
    let env = Env::new();
    grow(&env, 1, 6, 100, 0);
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    assert!(pairs > 500, "{pairs}");

    let run = env
        .run(&["export", "rag", "--part-size", "250", "--json"])
        .expect(0);
    let s = run.json();
    assert_eq!(s["counts"]["pairs"], pairs, "{}", run.explain());
    assert_eq!(s["counts"]["exported"], pairs);
    let parts = (pairs as usize).div_ceil(250);
    assert_eq!(s["parts"], parts);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(env.path("outbox/zai/rag_export/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut lines = 0;
    for (i, part) in manifest["parts"].as_array().unwrap().iter().enumerate() {
        let name = format!("part-{i:05}.jsonl");
        assert_eq!(part["file"], name);
        let bytes = std::fs::read(env.path(&format!("outbox/zai/rag_export/{name}"))).unwrap();
        assert_eq!(part["blake3"], blake3::hash(&bytes).to_hex().to_string());
        let docs = jsonl(&env, &format!("outbox/zai/rag_export/{name}"));
        assert_eq!(part["documents"], docs.len());
        lines += docs.len();
        for d in &docs {
            for field in [
                "id",
                "key",
                "question",
                "answer",
                "text",
                "indicator",
                "category",
                "agent",
                "source_file",
                "created_at",
                "extra",
            ] {
                assert!(d.get(field).is_some(), "{field} missing in {d}");
            }
            assert_eq!(
                d["text"],
                format!(
                    "Q: {}\nA: {}",
                    d["question"].as_str().unwrap(),
                    d["answer"].as_str().unwrap()
                )
            );
            assert_eq!(d["key"].as_str().unwrap().len(), 64);
        }
    }
    assert_eq!(lines as i64, pairs);

    // The same database gives the same bytes.
    let before = read_all(&env, "outbox/zai/rag_export");
    env.run(&["export", "rag", "--part-size", "250"]).expect(0);
    assert_eq!(read_all(&env, "outbox/zai/rag_export"), before);

    // A smaller export removes the parts it no longer has.
    let run = env.run(&["export", "rag", "--json"]).expect(0);
    assert_eq!(run.json()["parts"], 1);
    assert_eq!(
        env.files_in("outbox/zai/rag_export"),
        ["manifest.json", "part-00000.jsonl"]
    );

    // --agent names another agent's outbox; a name that is not an agent's is refused.
    env.run(&["export", "rag", "--agent", "droid"]).expect(0);
    assert_eq!(
        env.files_in("outbox/droid/rag_export"),
        ["manifest.json", "part-00000.jsonl"]
    );
    let bad = env
        .run(&["export", "rag", "--agent", "../escape"])
        .expect(1);
    assert!(
        bad.stderr().contains("invalid agent name \"../escape\""),
        "{}",
        bad.explain()
    );
    assert!(!env.path("../escape").exists());

    // Parquet, read back with the parquet crate; the same bytes twice.
    env.run(&["export", "rag", "--format", "parquet", "--out", "pq"])
        .expect(0);
    let first = read_all(&env, "pq/rag_export");
    env.run(&["export", "rag", "--format", "parquet", "--out", "pq"])
        .expect(0);
    assert_eq!(read_all(&env, "pq/rag_export"), first);
    let ids = parquet_ids(&env, "pq/rag_export/part-00000.parquet");
    assert_eq!(ids.len() as i64, pairs);
    assert_eq!(ids, (1..=pairs).collect::<Vec<_>>());
    let schema = parquet_rows(&env, "pq/rag_export/part-00000.parquet")[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "key",
            "question",
            "answer",
            "text",
            "indicator",
            "category",
            "agent",
            "source_file",
            "created_at",
            "extra"
        ]
    );
}

#[test]
fn rag_export_leaves_out_flagged_pairs_and_keeps_one_pair_per_near_duplicate_cluster() {
    let env = Env::new();
    grow_with_near_dups(&env, 2, 3, 100, 0, "0.05");
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    // Without runs, the filters have nothing to work with and say so.
    let run = env
        .run(&["export", "rag", "--exclude", "flagged,near-dups", "--json"])
        .expect(0);
    assert_eq!(run.json()["counts"]["exported"], pairs);
    assert!(
        run.stderr().contains("no quality run yet"),
        "{}",
        run.explain()
    );

    env.run(&["quality"]).expect(0);
    let flagged = env.count("SELECT COUNT(*) FROM quality_flags");
    let run = env
        .run(&["export", "rag", "--exclude", "flagged", "--json"])
        .expect(0);
    assert_eq!(run.json()["counts"]["excluded_flagged"], flagged);
    assert_eq!(run.json()["counts"]["exported"], pairs - flagged);

    // Near-duplicates as `near-dups` finds them among the planted ones.
    let nd = env.run(&["near-dups", "--json"]).expect(0).json();
    let found = clusters(&env, "minhash");
    assert!(found.len() >= 5, "{nd}");
    let run = env
        .run(&["export", "rag", "--exclude", "near-dups", "--json"])
        .expect(0);
    let left_out = nd["pairs_in_clusters"].as_i64().unwrap() - nd["clusters"].as_i64().unwrap();
    assert_eq!(
        run.json()["counts"]["excluded_near_dups"],
        left_out,
        "{}",
        run.explain()
    );
    let ids: BTreeSet<i64> = jsonl(&env, "outbox/zai/rag_export/part-00000.jsonl")
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    for (rep, members) in &found {
        assert!(ids.contains(rep), "representative {rep} kept");
        for m in members.iter().filter(|m| *m != rep) {
            assert!(!ids.contains(m), "{m} is a near-duplicate of {rep}");
        }
    }
    // Both filters: a flagged representative gives its place to the cluster's next pair.
    let run = env
        .run(&["export", "rag", "--exclude", "flagged,near-dups", "--json"])
        .expect(0);
    let c = run.json()["counts"].clone();
    assert_eq!(
        c["exported"].as_i64().unwrap()
            + c["excluded_flagged"].as_i64().unwrap()
            + c["excluded_near_dups"].as_i64().unwrap(),
        pairs
    );
    let run = env
        .run(&[
            "export",
            "rag",
            "--exclude",
            "near-dups",
            "--near-dup-methods",
            "cosine",
            "--json",
        ])
        .expect(0);
    assert_eq!(
        run.json()["counts"]["excluded_near_dups"],
        0,
        "no cosine run yet"
    );
    assert!(
        run.stderr()
            .contains("no near-duplicate clusters of cosine")
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(env.path("outbox/zai/rag_export/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["filters"]["near_dup_methods"], json!(["cosine"]));
}

/// Pair id → split, read back from `splits/<split>.jsonl`.
fn split_of(env: &Env, dir: &str) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    for split in ["train", "val", "test"] {
        for d in jsonl(env, &format!("{dir}/splits/{split}.jsonl")) {
            let id = d["id"].as_i64().unwrap();
            assert!(out.insert(id, split.to_string()).is_none(), "{id} twice");
        }
    }
    out
}

/// Asserts every category of 100 pairs or more is within 2 points of 80/10/10.
fn assert_ratios(env: &Env, assigned: &BTreeMap<i64, String>) {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT id, COALESCE(category, '(none)') FROM pairs")
        .unwrap();
    let category: HashMap<i64, String> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut counts: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for (id, s) in assigned {
        let i = ["train", "val", "test"]
            .iter()
            .position(|x| x == s)
            .unwrap();
        counts.entry(category[id].clone()).or_default()[i] += 1;
    }
    let mut checked = 0;
    for (cat, c) in &counts {
        let n: u64 = c.iter().sum();
        if n < 100 {
            continue;
        }
        checked += 1;
        for (got, want) in c.iter().zip([80.0, 10.0, 10.0]) {
            let pct = *got as f64 * 100.0 / n as f64;
            assert!(
                (pct - want).abs() <= 2.0,
                "{cat}: {c:?} of {n} is {pct:.1}% against {want}%"
            );
        }
    }
    assert!(checked >= 2, "strata checked: {counts:?}");
}

#[test]
fn splits_keep_every_pair_in_place_as_the_database_grows_and_clusters_together() {
    let env = Env::new();
    grow_with_near_dups(&env, 3, 8, 150, 0, "0.03");
    let first = env.count("SELECT COUNT(*) FROM pairs");
    env.run(&["near-dups"]).expect(0);
    let before_clusters = clusters(&env, "minhash");
    assert!(before_clusters.len() >= 10, "{before_clusters:?}");

    let run = env.run(&["split", "--seed", "7", "--json"]).expect(0);
    let s = run.json();
    assert_eq!(s["newly_assigned"], first, "{}", run.explain());
    assert_eq!(s["within_tolerance"], true);
    let before = split_of(&env, "outbox/zai");
    assert_eq!(before.len() as i64, first);
    assert_ratios(&env, &before);
    for members in before_clusters.values() {
        let splits: BTreeSet<&String> = members.iter().map(|m| &before[m]).collect();
        assert_eq!(splits.len(), 1, "cluster {members:?} spans {splits:?}");
    }

    // CSV and Parquet hold the same rows.
    for split in ["train", "val", "test"] {
        let want: Vec<i64> = before
            .iter()
            .filter(|(_, s)| *s == split)
            .map(|(id, _)| *id)
            .collect();
        let mut csv =
            csv::Reader::from_path(env.path(&format!("outbox/zai/splits/{split}.csv"))).unwrap();
        let csv_ids: Vec<i64> = csv
            .records()
            .map(|r| r.unwrap()[0].parse().unwrap())
            .collect();
        assert_eq!(csv_ids, want, "{split}.csv");
        assert_eq!(
            parquet_ids(&env, &format!("outbox/zai/splits/{split}.parquet")),
            want,
            "{split}.parquet"
        );
    }
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(env.path("outbox/zai/splits/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["ratios"], json!([80, 10, 10]));
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(env.path(&format!(
            "outbox/zai/splits/{}",
            f["file"].as_str().unwrap()
        )))
        .unwrap();
        assert_eq!(f["blake3"], blake3::hash(&bytes).to_hex().to_string());
    }

    // The same database gives the same bytes.
    let files = read_all(&env, "outbox/zai/splits");
    env.run(&["split", "--seed", "7"]).expect(0);
    assert_eq!(read_all(&env, "outbox/zai/splits"), files);

    // Growth: new pairs, and a near-duplicate of a clustered pair (its commas dropped).
    let (rep, members) = before_clusters.iter().next().unwrap();
    let (question, answer): (String, String) = env
        .db()
        .query_row(
            "SELECT question, answer FROM pairs WHERE id = ?1",
            [rep],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let variant = json!([{"question": question, "answer": format!("{} ", answer.replace(',', "")) + "Indeed."}]);
    env.drop_file("droid", "variant.json", variant.to_string());
    env.run(&["ingest"]).expect(0);
    let newcomer = env.count("SELECT MAX(id) FROM pairs");
    grow_with_near_dups(&env, 4, 4, 150, 100_000, "0.03");
    let total = env.count("SELECT COUNT(*) FROM pairs");
    assert!(total > first + 400, "{total}");
    env.run(&["near-dups"]).expect(0);
    let after_clusters = clusters(&env, "minhash");
    assert!(
        after_clusters[rep].contains(&newcomer),
        "the variant {newcomer} joins {rep}'s cluster {members:?}: {:?}",
        after_clusters.get(rep)
    );
    let cluster_split = before[rep].clone();
    let run = env.run(&["split", "--seed", "7", "--json"]).expect(0);
    let s = run.json();
    assert_eq!(s["previously_assigned"], first, "{}", run.explain());
    assert_eq!(s["newly_assigned"], total - first);
    assert_eq!(s["moved"], 0);
    assert_eq!(s["within_tolerance"], true);
    let after = split_of(&env, "outbox/zai");
    assert_eq!(after.len() as i64, total);
    for (id, split) in &before {
        assert_eq!(&after[id], split, "pair {id} moved");
    }
    assert_eq!(
        after[&newcomer], cluster_split,
        "the newcomer joins its cluster's split"
    );
    for members in after_clusters.values() {
        let splits: BTreeSet<&String> = members.iter().map(|m| &after[m]).collect();
        assert_eq!(splits.len(), 1, "cluster {members:?} spans {splits:?}");
    }
    assert_ratios(&env, &after);

    // Another seed is another split; formats not asked for are removed.
    let run = env
        .run(&["split", "--seed", "8", "--formats", "jsonl", "--json"])
        .expect(0);
    assert_eq!(run.json()["previously_assigned"], 0);
    assert_eq!(
        env.files_in("outbox/zai/splits"),
        ["manifest.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    );
    let other = split_of(&env, "outbox/zai");
    assert!(other.iter().filter(|(id, s)| after[id] != **s).count() > 10);
    env.run(&["split", "--ratios", "80,10"]).expect(1);
}

#[test]
fn splits_of_the_same_pairs_in_two_databases_put_every_pair_in_the_same_split() {
    // Two databases ingest the same drops (their rows differ only in `created_at` and
    // the paths they were read from): the same seed gives every pair the same split
    // and the same counts per split and stratum.
    let (a, b) = (Env::new(), Env::new());
    for env in [&a, &b] {
        grow(env, 13, 3, 150, 0);
        env.run(&["split", "--seed", "42", "--formats", "jsonl"])
            .expect(0);
    }
    let (in_a, in_b) = (split_of(&a, "outbox/zai"), split_of(&b, "outbox/zai"));
    assert_eq!(in_a.len(), 450);
    assert_eq!(in_a, in_b);
    let strata = |env: &Env| {
        let m: Value = serde_json::from_slice(
            &std::fs::read(env.path("outbox/zai/splits/manifest.json")).unwrap(),
        )
        .unwrap();
        m["strata"].clone()
    };
    assert!(
        strata(&a).as_array().is_some_and(|s| s.len() >= 2),
        "{}",
        strata(&a)
    );
    assert_eq!(strata(&a), strata(&b));
    // The seed is what decides: another seed, other splits.
    b.run(&[
        "split",
        "--seed",
        "43",
        "--formats",
        "jsonl",
        "--out",
        "other",
    ])
    .expect(0);
    let other = split_of(&b, "other");
    assert!(in_a.iter().filter(|(id, s)| other[id] != **s).count() > 20);
}

/// A vector in 8 dimensions: a direction from `seed`, or near `like`.
fn vector(rng: &mut fastrand::Rng, like: Option<&[f64]>) -> Vec<f64> {
    match like {
        Some(v) => v.iter().map(|x| x + (rng.f64() - 0.5) * 0.002).collect(),
        None => (0..8).map(|_| rng.f64() * 2.0 - 1.0).collect(),
    }
}

#[test]
fn embeddings_round_trip_batches_without_overlap_import_and_cosine_near_dups() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 8\n",
    );
    grow(&env, 5, 3, 40, 0);
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    assert!(pairs >= 110, "{pairs}");

    let b1 = env
        .run(&["export", "embeddings", "--batch-size", "50", "--json"])
        .expect(0)
        .json();
    let b2 = env
        .run(&["export", "embeddings", "--batch-size", "50", "--json"])
        .expect(0)
        .json();
    assert_eq!(b1["batches"][0]["batch"], 1);
    assert_eq!(b2["batches"][0]["batch"], 2);
    let meta1 = jsonl(&env, "outbox/zai/embeddings_metadata_batch_1.jsonl");
    let meta2 = jsonl(&env, "outbox/zai/embeddings_metadata_batch_2.jsonl");
    let ids1: BTreeSet<i64> = meta1
        .iter()
        .map(|m| m["pair_id"].as_i64().unwrap())
        .collect();
    let ids2: BTreeSet<i64> = meta2
        .iter()
        .map(|m| m["pair_id"].as_i64().unwrap())
        .collect();
    assert_eq!((ids1.len(), ids2.len()), (50, 50));
    assert!(ids1.is_disjoint(&ids2));
    assert_eq!(ids1.iter().max().unwrap() + 1, *ids2.iter().min().unwrap());
    assert_eq!(b2["unbatched"], pairs - 100);
    // The metadata maps each key to its pair's indicator and category.
    let (indicator, category): (Option<String>, Option<String>) = env
        .db()
        .query_row(
            "SELECT indicator, category FROM pairs WHERE id = ?1",
            [meta2[7]["pair_id"].as_i64().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(meta2[7]["indicator"], json!(indicator));
    assert_eq!(meta2[7]["category"], json!(category));

    // The requests have the documented shape (tests/fixtures/gemini_batch_embeddings).
    let documented: Value = serde_json::from_str(
        std::fs::read_to_string("tests/fixtures/gemini_batch_embeddings/request_example.jsonl")
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let requests = jsonl(&env, "outbox/zai/embeddings_input_batch_1.jsonl");
    assert_eq!(requests.len(), 50);
    let key_set =
        |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    for (r, m) in requests.iter().zip(&meta1) {
        assert_eq!(key_set(r), key_set(&documented));
        assert_eq!(r["key"], m["key"]);
        let text = r["request"]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        assert!(text.starts_with("Q: ") && text.contains("\nA: "));
        assert_eq!(
            m["text_blake3"],
            blake3::hash(text.as_bytes()).to_hex().to_string()
        );
        assert_eq!(r["request"]["output_dimensionality"], 8);
        assert_eq!(r["request"]["task_type"], "RETRIEVAL_DOCUMENT");
        for k in key_set(&r["request"]) {
            assert!(
                ["content", "output_dimensionality", "task_type"].contains(&k.as_str()),
                "{k} is not a field of the documented request"
            );
        }
    }
    // A batch written again is the same bytes.
    let first_bytes = std::fs::read(env.path("outbox/zai/embeddings_input_batch_1.jsonl")).unwrap();
    env.run(&["export", "embeddings", "--batch", "1"]).expect(0);
    assert_eq!(
        std::fs::read(env.path("outbox/zai/embeddings_input_batch_1.jsonl")).unwrap(),
        first_bytes
    );

    // The job's results, made here: planted neighbours among random directions.
    let keys: Vec<(String, i64)> = meta1
        .iter()
        .chain(&meta2)
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                m["pair_id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut vectors: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (_, id) in &keys {
        vectors.insert(*id, vector(&mut rng, None));
    }
    // 10 ~ 70 and 20 ~ 21 ~ 90: near copies (cosine > 0.999).
    for (a, b) in [(10, 70), (20, 21), (20, 90)] {
        let v = vector(&mut rng, Some(&vectors[&a]));
        vectors.insert(b, v);
    }
    let mut lines = Vec::new();
    for (key, id) in &keys {
        match id {
            33 => lines.push(json!({"key": key, "error": {"code": 3, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}).to_string()),
            34 => lines.push(json!({"key": key, "response": {"embedding": {"values": vec![0.1; 7]}}}).to_string()),
            _ => lines.push(json!({"key": key, "response": {"embedding": {"values": vectors[id]}}}).to_string()),
        }
    }
    lines.push(
        json!({"key": "ab".repeat(32), "response": {"embedding": {"values": vec![0.5; 8]}}})
            .to_string(),
    );
    lines.push("{not json".to_string());
    env.write("results.jsonl", lines.join("\n") + "\n");

    let run = env
        .run(&["import", "embeddings", "results.jsonl", "--json"])
        .expect(0);
    let r = run.json();
    assert_eq!(r["stored"], 98, "{}", run.explain());
    assert_eq!(r["model"], "gemini-embedding-001");
    assert_eq!(r["dimension"], 8);
    assert_eq!(r["errors"]["count"], 1);
    assert_eq!(
        r["errors"]["first"][0]["reason"],
        "INVALID_ARGUMENT: Request contains an invalid argument."
    );
    assert_eq!(r["dimension_mismatches"]["count"], 1);
    assert_eq!(r["unknown_keys"]["count"], 1);
    assert_eq!(r["malformed"]["count"], 1);
    assert_eq!(r["malformed"]["first"][0]["line"], 102);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM embeddings WHERE dimension = 8"),
        98
    );
    // Idempotent: a second import stores nothing new.
    let again = env
        .run(&["import", "embeddings", "results.jsonl", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (again["stored"].clone(), again["unchanged"].clone()),
        (json!(0), json!(98))
    );
    let text = env
        .run(&["import", "embeddings", "results.jsonl"])
        .expect(0)
        .stdout();
    assert!(
        text.contains("1 unknown keys") && text.contains("line 101"),
        "{text}"
    );

    // The documented result lines are read (not malformed).
    let doc = env
        .run(&[
            "import",
            "embeddings",
            &std::fs::canonicalize("tests/fixtures/gemini_batch_embeddings/results_example.jsonl")
                .unwrap()
                .display()
                .to_string(),
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(
        (
            doc["unknown_keys"]["count"].clone(),
            doc["malformed"]["count"].clone()
        ),
        (json!(2), json!(0)),
        "{doc}"
    );

    // Cosine near-duplicates find the planted neighbours, and only them.
    let run = env
        .run(&["near-dups", "--cosine", "0.95", "--json"])
        .expect(0);
    let s = run.json();
    assert_eq!(s["method"], "cosine");
    assert_eq!(s["search"], "exact");
    assert_eq!(s["clusters"], 2, "{}", run.explain());
    let report: Value = serde_json::from_slice(
        &std::fs::read(env.path("outbox/zai/duplicate_analysis_cosine.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["parameters"]["method"], "cosine");
    let clusters: Vec<Vec<i64>> = report["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_i64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(clusters, vec![vec![10, 70], vec![20, 21, 90]]);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM near_dup_members WHERE method = 'cosine'"),
        5
    );
    let csv =
        std::fs::read_to_string(env.path("outbox/zai/near_duplicate_pairs_cosine.csv")).unwrap();
    assert!(csv.starts_with("a,b,similarity\n10,70,"), "{csv}");
    // The same vectors give the same bytes.
    let files = |env: &Env| {
        [
            "duplicate_analysis_cosine.json",
            "near_duplicate_pairs_cosine.csv",
        ]
        .map(|f| std::fs::read(env.path(&format!("outbox/zai/{f}"))).unwrap())
    };
    let first = files(&env);
    env.run(&["near-dups", "--cosine", "0.95"]).expect(0);
    assert!(
        files(&env) == first,
        "a second cosine run wrote other bytes"
    );
    // Beyond cosine.exact_max the candidates come from the HNSW index: the same clusters.
    let exact_report =
        std::fs::read_to_string(env.path("outbox/zai/duplicate_analysis_cosine.json")).unwrap();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 8\n[cosine]\nexact_max = 10\n",
    );
    let run = env
        .run(&["near-dups", "--cosine", "0.95", "--json"])
        .expect(0);
    assert_eq!(run.json()["search"], "hnsw", "{}", run.explain());
    let hnsw_report =
        std::fs::read_to_string(env.path("outbox/zai/duplicate_analysis_cosine.json")).unwrap();
    let clusters_of = |t: &str| serde_json::from_str::<Value>(t).unwrap()["clusters"].clone();
    assert_eq!(clusters_of(&hnsw_report), clusters_of(&exact_report));

    // The export and the split see them.
    let run = env
        .run(&["export", "rag", "--exclude", "near-dups", "--json"])
        .expect(0);
    assert_eq!(run.json()["counts"]["excluded_near_dups"], 3);

    // Pairs added later join a later batch.
    grow(&env, 6, 1, 30, 50_000);
    let total = env.count("SELECT COUNT(*) FROM pairs");
    let b3 = env
        .run(&["export", "embeddings", "--batch-size", "500", "--json"])
        .expect(0)
        .json();
    assert_eq!(b3["batches"][0]["batch"], 3);
    assert_eq!(b3["batches"][0]["pairs"], total - 100);
    assert_eq!(b3["batches"][0]["pair_ids"][1], total);
    let nothing = env.run(&["export", "embeddings"]).expect(0).stdout();
    assert!(nothing.contains("nothing to batch"), "{nothing}");
}

#[test]
fn a_results_file_dropped_into_an_inbox_is_imported_not_rejected() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 4\n",
    );
    grow(&env, 7, 1, 30, 0);
    env.run(&["export", "embeddings", "--batch-size", "20"])
        .expect(0);
    let meta = jsonl(&env, "outbox/zai/embeddings_metadata_batch_1.jsonl");
    let lines: Vec<String> = meta
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"key": m["key"], "response": {"embedding": {"values": [i as f64, 1.0, 0.5, -0.25]}}})
                .to_string()
        })
        .collect();
    let results = lines.join("\n") + "\n";
    env.drop_file("zai", "batch_1_results.jsonl", &results);

    let run = env.run(&["ingest", "--json"]).expect(0);
    let r = run.json();
    assert_eq!(r["files_integrated"], 1, "{}", run.explain());
    assert_eq!(r["files_rejected"], 0);
    assert_eq!(r["pairs_new"], 0);
    assert!(
        env.path("inbox/zai/processed/batch_1_results.jsonl")
            .is_file()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM embeddings"), 20);
    let files = env.run(&["files", "--json"]).expect(0).json();
    let row = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "batch_1_results.jsonl")
        .unwrap()
        .clone();
    assert_eq!(row["layout"], "embeddings_results");
    assert_eq!(row["status"], "integrated");
    assert!(
        row["reason"].as_str().unwrap().contains("20 stored"),
        "{row}"
    );

    // The same bytes again are a duplicate drop: nothing is imported twice.
    env.drop_file("zai", "again.jsonl", &results);
    let r = env.run(&["ingest", "--json"]).expect(0).json();
    assert_eq!(r["files_duplicate"], 1);
    assert_eq!(env.count("SELECT COUNT(*) FROM embeddings"), 20);
    // A pair drop that happens to use `response` for its answer stays a pair drop.
    env.drop_file(
        "zai",
        "pairs.jsonl",
        "{\"prompt\": \"What is the Sortino ratio?\", \"response\": \"Return over downside deviation.\"}\n",
    );
    let r = env.run(&["ingest", "--json"]).expect(0).json();
    assert_eq!(r["pairs_new"], 1);
}

#[test]
fn a_results_file_over_the_size_limit_is_imported_and_a_link_to_one_is_skipped() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 4\n",
    );
    grow(&env, 12, 1, 30, 0);
    env.run(&["export", "embeddings", "--batch-size", "20"])
        .expect(0);
    let meta = jsonl(&env, "outbox/zai/embeddings_metadata_batch_1.jsonl");
    let results = |scale: f64| -> String {
        meta.iter()
            .enumerate()
            .map(|(i, m)| {
                json!({"key": m["key"], "response": {"embedding": {"values": [i as f64 * scale, 1.0, 0.5, -0.25]}}})
                    .to_string()
                    + "\n"
            })
            .collect()
    };
    // Results are large by nature: the drop limit does not apply to them (they are
    // streamed), while a pair drop over it is still rejected unread.
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 4\n[ingest]\nmax_file_bytes = 512\n",
    );
    let big = results(1.0);
    assert!(big.len() > 2 * 512, "{}", big.len());
    env.drop_file("zai", "results_big.jsonl", &big);
    let pairs_over: String = (0..20)
        .map(|i| format!("{{\"question\": \"What is indicator {i} for?\", \"answer\": \"It measures something about prices, number {i}.\"}}\n"))
        .collect();
    assert!(pairs_over.len() > 512);
    env.drop_file("zai", "pairs_big.jsonl", &pairs_over);
    // A link to another results file is never followed, whatever it points at.
    let outside = env.write("elsewhere/results_2.jsonl", results(2.0));
    std::os::unix::fs::symlink(&outside, env.path("inbox/zai/link.jsonl")).unwrap();

    // Exit status 3: a file was rejected (the pair drop).
    let run = env.run(&["ingest", "--json"]).expect(3);
    let r = run.json();
    assert_eq!(r["files_integrated"], 1, "{}", run.explain());
    assert_eq!(r["files_rejected"], 1, "{}", run.explain());
    assert_eq!(r["files_skipped"], 1, "{}", run.explain());
    assert_eq!(env.count("SELECT COUNT(*) FROM embeddings"), 20);
    assert!(env.path("inbox/zai/processed/results_big.jsonl").is_file());
    assert!(env.path("inbox/zai/rejected/pairs_big.jsonl").is_file());
    assert!(
        env.path("inbox/zai/link.jsonl")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is left where it is"
    );
    // The vectors are the dropped file's, not the linked one's.
    let first: Vec<u8> = env
        .db()
        .query_row(
            "SELECT vector FROM embeddings ORDER BY pair_id LIMIT 1 OFFSET 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(f32::from_le_bytes(first[..4].try_into().unwrap()), 3.0);
}

/// Runs `perpetual ARGS` with a terminal for its stdin, stdout and stderr (`script`,
/// util-linux, makes the pseudo-terminal): everything it wrote there.
fn on_a_terminal(env: &Env, args: &[&str]) -> String {
    let command = std::iter::once(env!("CARGO_BIN_EXE_perpetual"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("PERPETUAL_ROOT", env.root())
        .env("COLUMNS", "200")
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command}: {}\n{text}", out.status);
    text
}

#[test]
fn progress_shows_on_a_terminal_for_every_deliverable_command() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 4\n",
    );
    grow(&env, 14, 2, 100, 0);
    env.run(&["export", "embeddings", "--batch-size", "150"])
        .expect(0);
    let results: String = jsonl(&env, "outbox/zai/embeddings_metadata_batch_1.jsonl")
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"key": m["key"], "response": {"embedding": {"values": [1.0, i as f64, 0.0, 0.5]}}})
                .to_string()
                + "\n"
        })
        .collect();
    let results = env.write("results.jsonl", results);
    let results = results.to_str().unwrap();
    // The bar is indicatif's: a prefix naming the command and its step, then done/total.
    for (args, bar) in [
        (vec!["export", "rag"], "export rag: exporting pairs"),
        (vec!["export", "embeddings"], "export embeddings: batch 2"),
        (
            vec!["import", "embeddings", results],
            "import embeddings: reading results (bytes)",
        ),
        (
            vec!["near-dups", "--cosine", "0.95"],
            "near-dups: comparing every pair",
        ),
        (vec!["split"], "split: writing splits"),
        (vec!["charts"], "charts: reading pairs"),
    ] {
        let seen = on_a_terminal(&env, &args);
        assert!(seen.contains(bar), "{args:?}: no {bar:?} in\n{seen}");
        assert!(
            seen.contains('\u{2591}') || seen.contains('\u{2588}'),
            "{args:?}: no bar in\n{seen}"
        );
    }
    // Without a terminal (here, a pipe), no bar is drawn.
    let run = env.run(&["split"]).expect(0);
    assert!(!run.stderr().contains('\u{2591}'), "{}", run.explain());
}

/// The text of every `<text>` element of an SVG, which must parse as XML.
fn svg_texts(env: &Env, rel: &str) -> Vec<String> {
    let text = std::fs::read_to_string(env.path(rel)).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn charts_for_a_generated_database_are_svg_files_that_name_their_axes() {
    let env = Env::new();
    grow(&env, 8, 5, 120, 0);
    let run = env.run(&["charts", "--json"]).expect(0);
    assert_eq!(run.json()["quality"], false, "{}", run.explain());
    assert!(!env.path("outbox/zai/visualizations/quality.svg").exists());
    env.run(&["quality"]).expect(0);
    let run = env.run(&["charts", "--json"]).expect(0);
    assert_eq!(run.json()["quality"], true);

    let axes: [(&str, &[&str]); 5] = [
        ("coverage_heatmap.svg", &["category", "indicator"]),
        (
            "answer_lengths.svg",
            &[
                "answer length (characters); the last bar counts every longer answer",
                "pairs",
            ],
        ),
        ("categories.svg", &["pairs", "category"]),
        (
            "quality.svg",
            &[
                "pairs with the flag",
                "flag",
                "flagged pairs (% of the category)",
                "category",
            ],
        ),
        ("growth.svg", &["distinct pairs", "time (UTC, hourly)"]),
    ];
    let index = std::fs::read_to_string(env.path("outbox/zai/visualizations/index.html")).unwrap();
    for (file, names) in axes {
        let texts = svg_texts(&env, &format!("outbox/zai/visualizations/{file}"));
        for name in names {
            assert!(
                texts.iter().any(|t| t == name),
                "{file} does not name its axis {name:?}: {texts:?}"
            );
        }
        assert!(
            index.contains(&format!("<img src=\"{file}\"")),
            "index.html shows {file}"
        );
    }
    // The heatmap names the indicators with the most pairs.
    let top: String = env
        .db()
        .query_row(
            "SELECT indicator FROM pairs GROUP BY indicator ORDER BY COUNT(*) DESC, indicator LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(svg_texts(&env, "outbox/zai/visualizations/coverage_heatmap.svg").contains(&top));
    assert!(index.contains("The figures behind it"));
    let data: Value = serde_json::from_slice(
        &std::fs::read(env.path("outbox/zai/visualizations/data.json")).unwrap(),
    )
    .unwrap();
    let total: u64 = data["answer_lengths"]["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pairs"].as_u64().unwrap())
        .sum();
    assert_eq!(total as i64, env.count("SELECT COUNT(*) FROM pairs"));
    assert_eq!(data["growth"]["goal"], 30000);

    let before = read_all(&env, "outbox/zai/visualizations");
    env.run(&["charts"]).expect(0);
    assert_eq!(read_all(&env, "outbox/zai/visualizations"), before);
}

#[test]
fn the_loop_runs_every_deliverable_kind_in_process() {
    let env = Env::new();
    env.write(
        "perpetual.toml",
        "[embeddings]\noutput_dimensionality = 4\n",
    );
    grow(&env, 9, 2, 60, 0);
    let pairs = env.count("SELECT COUNT(*) FROM pairs");
    // Results for the first 10 pairs, keyed by their pair keys.
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT hex(key) FROM pairs ORDER BY id LIMIT 10")
        .unwrap();
    let keys: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|k| k.unwrap().to_lowercase())
        .collect();
    let results: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            json!({"key": k, "response": {"embedding": {"values": [1.0, i as f64, 0.0, 0.5]}}})
                .to_string()
                + "\n"
        })
        .collect();
    let results_path = env.write("results.jsonl", results);
    let plan = format!(
        r#"
[[task]]
id = "rag"
agent = "zai"
kind = "export_rag"
params = {{ format = "parquet" }}

[[task]]
id = "batch"
agent = "zai"
kind = "export_embeddings"
params = {{ batch_size = 40 }}
after = ["rag"]

[[task]]
id = "vectors"
agent = "zai"
kind = "import_embeddings"
params = {{ file = "{}" }}
after = ["batch"]

[[task]]
id = "splits"
agent = "zai"
kind = "split"
params = {{ formats = "jsonl,csv", seed = 3 }}
after = ["vectors"]

[[task]]
id = "pictures"
agent = "zai"
kind = "charts"
after = ["splits"]
"#,
        results_path.display()
    );
    env.write("plan.toml", plan);
    env.run(&["task", "import", "plan.toml"]).expect(0);
    for _ in 0..5 {
        env.run(&["run", "--once"]).expect(0);
    }
    let list = env
        .run(&["task", "list", "--all", "--json"])
        .expect(0)
        .json();
    for t in list.as_array().unwrap() {
        assert_eq!(t["status"], "completed", "{t}");
    }
    assert_eq!(
        parquet_ids(&env, "outbox/zai/rag_export/part-00000.parquet").len() as i64,
        pairs
    );
    assert_eq!(
        jsonl(&env, "outbox/zai/embeddings_input_batch_1.jsonl").len(),
        40
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM embeddings"), 10);
    assert_eq!(split_of(&env, "outbox/zai").len() as i64, pairs);
    assert!(env.path("outbox/zai/splits/train.csv").is_file());
    assert!(env.path("outbox/zai/visualizations/index.html").is_file());
    // Bad params are refused when the task is added, not when its turn comes.
    let bad = env
        .run(&[
            "task",
            "add",
            "bad_split",
            "--agent",
            "zai",
            "--kind",
            "split",
            "--params",
            r#"{"ratios": "90,20,10"}"#,
        ])
        .expect(1);
    assert!(bad.stderr().contains("add up to 100"), "{}", bad.explain());
    env.run(&[
        "task",
        "add",
        "no_file",
        "--agent",
        "zai",
        "--kind",
        "import_embeddings",
    ])
    .expect(1);
}
