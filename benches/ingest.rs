//! Pairs per second: the whole ingest pipeline (read, hash, decode, parse, key, write,
//! ledger) beside the bare insert of the same already-parsed rows (one prepared
//! statement, one transaction) into the same schema. The ratio of the two is the
//! pipeline's overhead over the SQLite ceiling.
//!
//! Run: `cargo bench --bench ingest`. Figures and method: BENCHMARKS.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use perpetual::engine::ingest::{self, Meter, Outcome, Placement, WriterOptions};
use perpetual::generate::{self, GenConfig};
use perpetual::pair::Pair;
use perpetual::store;
use perpetual::work::backfill;
use std::path::{Path, PathBuf};

const FILES: usize = 40;
const PAIRS_PER_FILE: usize = 500;

struct Fixture {
    _dir: tempfile::TempDir,
    drops: PathBuf,
    pairs: Vec<Pair>,
}

fn fixture(session_start: Option<u32>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops");
    let files = generate::generate(&GenConfig {
        seed: 42,
        files: FILES,
        pairs_per_file: PAIRS_PER_FILE,
        session_start,
        ..GenConfig::default()
    });
    generate::write_files(&drops, &files).unwrap();
    // The same rows, parsed and keyed once, for the bare insert.
    let mut pairs = Vec::new();
    for f in &files {
        match ingest::parse_bytes(&f.bytes) {
            Outcome::Parsed(p) => pairs.extend(p.pairs),
            other => panic!("{}: {other:?}", f.name),
        }
    }
    Fixture {
        _dir: dir,
        drops,
        pairs,
    }
}

fn fresh_db(dir: &Path) -> rusqlite::Connection {
    let path = dir.join("bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    store::open(&path).unwrap()
}

fn bare_insert(conn: &rusqlite::Connection, pairs: &[Pair]) {
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "INSERT INTO files (agent, name, source_path, size, status, started_at)
         VALUES ('bench', 'bench', 'bench', 0, 'integrated', 'now')",
        [],
    )
    .unwrap();
    let file_id = conn.last_insert_rowid();
    // The same tables the pipeline fills: the rows, and their keys in the tail's chunk
    // (below store::pairs::MERGE_MIN pairs no merge happens, in either).
    let mut stmt = conn.prepare(store::pairs::INSERT_PAIR).unwrap();
    let mut tail = Vec::with_capacity(pairs.len() * store::pairs::ENTRY_BYTES);
    for p in pairs {
        stmt.execute(rusqlite::params![
            &p.key[..],
            p.question,
            p.answer,
            p.indicator,
            p.category,
            "bench",
            p.extra,
            file_id,
            "2026-01-01T00:00:00Z",
        ])
        .unwrap();
        tail.extend_from_slice(&conn.last_insert_rowid().to_le_bytes());
        tail.extend_from_slice(&p.key);
    }
    conn.execute(
        store::pairs::INSERT_TAIL_CHUNK,
        rusqlite::params![conn.last_insert_rowid(), tail],
    )
    .unwrap();
    drop(stmt);
    conn.execute_batch("COMMIT").unwrap();
}

/// The ceiling a group is compared with: `fx`'s rows, parsed and keyed, inserted bare.
fn bench_bare_insert(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fx: &Fixture,
    scratch: &Path,
) {
    group.bench_function("bare_insert", |b| {
        b.iter_batched(
            || fresh_db(scratch),
            |conn| {
                bare_insert(&conn, &fx.pairs);
                conn // closed (and checkpointed) outside the timing
            },
            BatchSize::PerIteration,
        )
    });
}

fn bench_ingest(c: &mut Criterion) {
    let fx = fixture(None);
    let scratch = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10);
    group.throughput(Throughput::Elements(fx.pairs.len() as u64));

    bench_bare_insert(&mut group, &fx, scratch.path());

    group.bench_function("pipeline", |b| {
        b.iter_batched(
            || {
                let conn = fresh_db(scratch.path());
                let jobs =
                    ingest::discover_paths(std::slice::from_ref(&fx.drops), Some("bench")).unwrap();
                assert!(jobs.iter().all(|j| j.placement == Placement::InPlace));
                (conn, jobs)
            },
            |(conn, jobs)| {
                let report = ingest::run(
                    &conn,
                    jobs,
                    u64::MAX,
                    WriterOptions {
                        checkpoint_every: 500,
                    },
                    &mut |_| {},
                )
                .unwrap();
                assert_eq!(report.pairs_new as usize, fx.pairs.len());
                conn
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The backfill engine (plan: read, hash, peek at each file's session; then the metered
/// ingest in session order) over session exports, beside the bare insert of the same rows.
fn bench_backfill(c: &mut Criterion) {
    let fx = fixture(Some(101));
    let scratch = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("backfill");
    group.sample_size(10);
    group.throughput(Throughput::Elements(fx.pairs.len() as u64));
    bench_bare_insert(&mut group, &fx, scratch.path());
    group.bench_function("backfill", |b| {
        b.iter_batched(
            || fresh_db(scratch.path()),
            |conn| {
                let range = Some(backfill::SessionRange {
                    first: 101,
                    last: 101 + FILES as i64 - 1,
                });
                let mut plan = backfill::plan(&conn, &fx.drops, range, "bench", u64::MAX).unwrap();
                let outcome = backfill::run(
                    &conn,
                    &mut plan,
                    u64::MAX,
                    WriterOptions {
                        checkpoint_every: 500,
                    },
                    Some(Meter {
                        limit: u64::MAX,
                        used: 0,
                    }),
                    &mut |_, _| {},
                )
                .unwrap();
                assert_eq!(outcome.report.pairs_new as usize, fx.pairs.len());
                conn
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_ingest, bench_backfill);
criterion_main!(benches);
