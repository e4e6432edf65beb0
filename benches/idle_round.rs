//! What one idle round of `perpetual run` costs (the assigner, every agent's next task,
//! the slots, nothing to start) with a short history and a long one: 10 and 100,000
//! completed tasks, each with its session. The loop runs such a round every
//! `run.idle_secs` and whenever something wakes it, so its cost must not grow with the
//! history (issue 9: 3% CPU with 54 completed tasks, 26% with 1,085 before).
//!
//! With `IDLE_ROUND_ROOT=DIR` it measures instead a copy of a real root's history (its
//! database and `perpetual.toml`, e.g. a soak's root at its end): every agent is paused
//! by hand in the copy so that no session starts, and the first round runs whatever
//! built-in task waits; the rounds measured after it start nothing.
//!
//! Run: `cargo bench --bench idle_round`. Figures: BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use perpetual::config::Config;
use perpetual::root::Root;
use perpetual::run::runloop::{Loop, RunOptions};
use rusqlite::params;

/// A root with `completed` finished tasks (each with one wrapped session) spread over
/// three agents, and for each agent one task waiting on an unfinished dependency, so a
/// round has open tasks to look at but nothing to start.
fn root_with_history(completed: usize) -> (tempfile::TempDir, Root, Config, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path()).unwrap();
    let mut config = Config::default();
    for a in config.agents.values_mut() {
        a.command = Some(vec!["true".into()]);
    }
    let mut conn = perpetual::store::open(&root.db_path()).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut task = tx
            .prepare(
                "INSERT INTO tasks (id, agent, priority, position, status, done, total, created_at,
                                    started_at, finished_at, grade, kind)
                 VALUES (?1, ?2, 5, ?3, 'completed', 1, 1, '2026-01-01T00:00:00Z',
                         '2026-01-01T00:00:00Z', '2026-01-01T00:10:00Z', 'A', 'agent')",
            )
            .unwrap();
        let mut session = tx
            .prepare(
                "INSERT INTO sessions (id, agent, task_id, status, token_budget, api_calls_per_day,
                                       slots, wall_minutes, tokens_used, started_at, wrapped_at,
                                       level, next_action)
                 VALUES (?1, ?2, ?3, 'wrapped', 200000, 0, 0, 0, 50000, '2026-01-01T00:00:00Z',
                         '2026-01-01T00:10:00Z', 'healthy', 'done')",
            )
            .unwrap();
        let agents = ["claude_code", "droid", "zai"];
        for i in 0..completed {
            let agent = agents[i % 3];
            let id = format!("done_{i}");
            task.execute(params![id, agent, i as i64]).unwrap();
            session
                .execute(params![format!("session_{i}"), agent, id])
                .unwrap();
        }
        for (i, agent) in agents.iter().enumerate() {
            tx.execute(
                "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind)
                 VALUES (?1, ?2, 5, ?3, 'pending', '2026-01-01T00:00:00Z', 'agent')",
                params![format!("blocker_{agent}"), "nobody", 1_000_000 + i as i64],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO tasks (id, agent, priority, position, status, created_at, kind)
                 VALUES (?1, ?2, 5, ?3, 'pending', '2026-01-01T00:00:00Z', 'agent')",
                params![format!("waiting_{agent}"), agent, 2_000_000 + i as i64],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO task_deps (task_id, depends_on) VALUES (?1, ?2)",
                params![format!("waiting_{agent}"), format!("blocker_{agent}")],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    (dir, root, config, conn)
}

/// A copy of the root at `dir` (see the module docs), every agent paused by hand.
fn copy_of_root(dir: &std::path::Path) -> (tempfile::TempDir, Root, Config, rusqlite::Connection) {
    let copy = tempfile::tempdir().unwrap();
    let toml = dir.join("perpetual.toml");
    if toml.is_file() {
        std::fs::copy(&toml, copy.path().join("perpetual.toml")).unwrap();
    }
    let root = Root::new(copy.path()).unwrap();
    let source = rusqlite::Connection::open_with_flags(
        dir.join("perpetual.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    // The project's own consistent copy (one read snapshot, safe while a loop writes).
    perpetual::store::backup::backup(&source, &root.db_path()).unwrap();
    let config = Config::load(&copy.path().join("perpetual.toml")).unwrap();
    let conn = perpetual::store::open(&root.db_path()).unwrap();
    for agent in root.agents(&config).unwrap() {
        perpetual::store::agents::set_pause(
            &conn,
            &agent,
            "2026-01-01T00:00:00Z",
            "idle_round bench",
            None,
        )
        .unwrap();
    }
    (copy, root, config, conn)
}

fn idle_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_round");
    group.sample_size(30);
    if let Some(dir) = std::env::var_os("IDLE_ROUND_ROOT") {
        let (_copy, root, config, mut conn) = copy_of_root(std::path::Path::new(&dir));
        let mut looper = Loop::new(&mut conn, &root, &config, RunOptions::default());
        looper.round_once().unwrap();
        group.bench_function("copy_of_root", |b| {
            b.iter(|| assert!(!looper.round_once().unwrap()))
        });
        group.finish();
        return;
    }
    for completed in [10usize, 100_000] {
        let (_dir, root, config, mut conn) = root_with_history(completed);
        let mut looper = Loop::new(&mut conn, &root, &config, RunOptions::default());
        // The first round prunes and settles; the loop's steady state is what follows.
        assert!(!looper.round_once().unwrap(), "nothing to start");
        group.bench_function(format!("{completed}_completed_tasks"), |b| {
            b.iter(|| assert!(!looper.round_once().unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, idle_round);
criterion_main!(benches);
