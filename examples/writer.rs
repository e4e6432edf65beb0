//! The writer alone, on one thread: where `perpetual ingest`'s insert side spends its
//! time beyond the bare insert. Every file of a corpus on disk (the e2e bench's: `perpetual
//! generate --files N --pairs 100 --duplicates 0.2 --layouts flat,nested --answer-chars
//! 800-2000 --seed 14 --out DIR`) is prepared before the clock starts; then, per run and
//! in turn, each variant writes into a fresh database file, timed from the open through
//! the close (whose checkpoint makes it durable), wall and CPU time of the thread:
//!
//! - `bare`: the e2e bench's bare insert: (key, question, answer), one transaction.
//! - `schema`: `store::open` (the real schema and pragmas), the writer's two appends per
//!   pair (`pairs`, the tail's chunk per commit) and the key lookup, one transaction.
//! - `schema500`: the same, committing every 500 pairs.
//! - `writer`: the real `ingest::Writer` (ledger, checkpoints every 500 pairs), fed the
//!   prepared files, then `finish`.
//! - `parts` (only when named in `--only`): `schema500` with the parts listed in `PARTS`
//!   left out or changed, to price each: `nofk` (foreign keys off), `nolookup` (no
//!   lookup in `pair_keys`), `notail` (no tail chunks), `noindex` (no
//!   `pairs_by_created`), `cache_kib=N` (`cache_size`), `mmap=N` (`mmap_size`),
//!   `ckpt1000` (SQLite's default `wal_autocheckpoint`); `PARTS=none` is `schema500`.
//!
//! Run: `cargo run --release --example writer -- --corpus DIR [--runs 3] [--only bare,writer]`;
//! `PARTS=nofk,notail cargo run --release --example writer -- --corpus DIR --only bare,parts`.

use perpetual::engine::ingest::{self, Outcome, Prepared, WriterOptions};
use perpetual::store;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn cpu_ms() -> f64 {
    perpetual::clock::thread_cpu().as_secs_f64() * 1e3
}

fn prepare_all(corpus: &Path) -> Vec<Prepared> {
    let jobs = ingest::discover_paths(&[corpus.to_path_buf()], None).unwrap();
    let hints = ingest::Hints::default();
    jobs.into_iter()
        .map(|j| ingest::prepare(j, &hints, u64::MAX / 2))
        .collect()
}

fn fresh(dir: &Path) -> PathBuf {
    let db = dir.join("w.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    db
}

fn bare(db: &Path, prepared: &[Prepared]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    // The engine's page size, as the e2e bench's bare insert.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {};",
        perpetual::store::PAGE_SIZE
    ))
    .unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE pairs (id INTEGER PRIMARY KEY, key BLOB NOT NULL,
                             question TEXT NOT NULL, answer TEXT NOT NULL);
         BEGIN;",
    )
    .unwrap();
    {
        let mut stmt = conn
            .prepare("INSERT INTO pairs (key, question, answer) VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for p in prepared {
            let Outcome::Parsed(f) = &p.outcome else {
                continue;
            };
            for pair in &f.pairs {
                if seen.insert(pair.key) {
                    stmt.execute(rusqlite::params![&pair.key[..], pair.question, pair.answer])
                        .unwrap();
                }
            }
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    conn.close().map_err(|(_, e)| e).unwrap();
}

fn schema(db: &Path, prepared: &[Prepared], every: usize) {
    let conn = store::open(db).unwrap();
    conn.execute_batch(
        "BEGIN;
         INSERT INTO files (agent, name, source_path, size, status, started_at)
         VALUES ('bench', 'bench', 'bench', 0, 'partial', 'now');",
    )
    .unwrap();
    let file_id = conn.last_insert_rowid();
    let mut sink = store::pairs::PairSink::new();
    let mut n = 0;
    {
        let mut stmts = store::pairs::Statements::new(&conn).unwrap();
        for p in prepared {
            let Outcome::Parsed(f) = &p.outcome else {
                continue;
            };
            for pair in &f.pairs {
                sink.insert(
                    &conn,
                    &mut stmts,
                    pair,
                    "bench",
                    file_id,
                    "2026-12-02T10:00:00Z",
                )
                .unwrap();
                n += 1;
                if n % every == 0 {
                    sink.before_commit(&conn).unwrap();
                    conn.execute_batch("COMMIT; BEGIN").unwrap();
                }
            }
        }
    }
    sink.before_commit(&conn).unwrap();
    conn.execute_batch("COMMIT").unwrap();
    conn.close().map_err(|(_, e)| e).unwrap();
}

/// `schema` with one part of the real writer's work left out or changed (`--only
/// parts`, `PARTS=nofk,cache_kib=2000,mmap=N,nolookup,notail,noindex,ckpt1000`): to price each part.
fn parts(db: &Path, prepared: &[Prepared], parts: &str) {
    let conn = store::open(db).unwrap();
    let has = |p: &str| parts.split(',').any(|x| x == p);
    if has("nofk") {
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    }
    for part in parts.split(',') {
        if let Some(kib) = part.strip_prefix("cache_kib=") {
            conn.execute_batch(&format!("PRAGMA cache_size = -{kib}"))
                .unwrap();
        }
        if let Some(bytes) = part.strip_prefix("mmap=") {
            let _: i64 = conn
                .query_row(&format!("PRAGMA mmap_size = {bytes}"), [], |r| r.get(0))
                .unwrap();
        }
    }
    if has("ckpt1000") {
        conn.execute_batch("PRAGMA wal_autocheckpoint = 1000")
            .unwrap();
    }
    if has("noindex") {
        conn.execute_batch("DROP INDEX pairs_by_created").unwrap();
    }
    conn.execute_batch(
        "BEGIN;
         INSERT INTO files (agent, name, source_path, size, status, started_at)
         VALUES ('bench', 'bench', 'bench', 0, 'partial', 'now');",
    )
    .unwrap();
    let file_id = conn.last_insert_rowid();
    {
        let mut lookup = conn.prepare(store::pairs::LOOKUP_KEY).unwrap();
        let mut insert = conn.prepare(store::pairs::INSERT_PAIR).unwrap();
        let mut chunk = conn.prepare(store::pairs::INSERT_TAIL_CHUNK).unwrap();
        let mut pending: Vec<u8> = Vec::new();
        let mut write_chunk = |pending: &mut Vec<u8>, last: i64| {
            if !pending.is_empty() {
                chunk
                    .execute(rusqlite::params![last, &pending[..]])
                    .unwrap();
                pending.clear();
            }
        };
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for p in prepared {
            let Outcome::Parsed(f) = &p.outcome else {
                continue;
            };
            for pair in &f.pairs {
                if !seen.insert(pair.key) {
                    continue;
                }
                if !has("nolookup") && lookup.exists([&pair.key[..]]).unwrap() {
                    continue;
                }
                insert
                    .execute(rusqlite::params![
                        &pair.key[..],
                        pair.question,
                        pair.answer,
                        pair.indicator,
                        pair.category,
                        "bench",
                        pair.extra,
                        file_id,
                        "2026-12-02T10:00:00.000000Z",
                    ])
                    .unwrap();
                if !has("notail") {
                    pending.extend_from_slice(&conn.last_insert_rowid().to_le_bytes());
                    pending.extend_from_slice(&pair.key);
                }
                n += 1;
                if n % 500 == 0 {
                    write_chunk(&mut pending, conn.last_insert_rowid());
                    conn.execute_batch("COMMIT; BEGIN").unwrap();
                }
            }
        }
        write_chunk(&mut pending, conn.last_insert_rowid());
    }
    conn.execute_batch("COMMIT").unwrap();
    conn.close().map_err(|(_, e)| e).unwrap();
}

fn writer(db: &Path, prepared: Vec<Prepared>) -> u64 {
    let conn = store::open(db).unwrap();
    let report = {
        let mut w = ingest::Writer::new(
            &conn,
            WriterOptions {
                checkpoint_every: 500,
            },
        );
        for p in prepared {
            w.write(p, &mut |_| {}).unwrap();
        }
        w.finish(&mut |_| {}).unwrap()
    };
    conn.close().map_err(|(_, e)| e).unwrap();
    report.pairs_new
}

/// `cargo run --release --example writer -- --corpus DIR [OPTIONS]`.
#[derive(clap::Parser)]
struct Args {
    /// A corpus on disk (see the module docs).
    #[arg(long)]
    corpus: PathBuf,
    /// Runs of each variant.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The variants to run, comma-separated (default: all but `parts`).
    #[arg(long)]
    only: Option<String>,
}

fn main() {
    let Args { corpus, runs, only } = clap::Parser::parse();
    let dir =
        tempfile::tempdir_in(std::env::var_os("E2E_DIR").unwrap_or_else(|| "/tmp".into())).unwrap();
    let variants = ["bare", "schema", "schema500", "writer", "parts"];
    let part_list = std::env::var("PARTS").unwrap_or_default();
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    for run in 0..runs {
        for (v, name) in variants.iter().enumerate() {
            let chosen = match only.as_deref() {
                Some(o) => o.split(',').any(|o| o == *name),
                None => *name != "parts",
            };
            if !chosen {
                continue;
            }
            let prepared = prepare_all(&corpus);
            let db = fresh(dir.path());
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let (start, cpu) = (Instant::now(), cpu_ms());
            let mut note = String::new();
            match *name {
                "bare" => bare(&db, &prepared),
                "schema" => schema(&db, &prepared, usize::MAX),
                "schema500" => schema(&db, &prepared, 500),
                "parts" => {
                    note = format!(" ({part_list})");
                    parts(&db, &prepared, &part_list)
                }
                _ => note = format!(" ({} new)", writer(&db, prepared)),
            }
            let (wall, cpu) = (start.elapsed().as_secs_f64() * 1e3, cpu_ms() - cpu);
            println!(
                "run {run} {name:>10}: wall {wall:7.0} ms, cpu {cpu:7.0} ms{note}; load {}",
                load.trim()
            );
            times[v].push((wall, cpu));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (v, name) in variants.iter().enumerate() {
        if times[v].is_empty() {
            continue;
        }
        let wall = median(times[v].iter().map(|t| t.0).collect());
        let cpu = median(times[v].iter().map(|t| t.1).collect());
        println!("median {name:>10}: wall {wall:7.0} ms, cpu {cpu:7.0} ms");
    }
}
