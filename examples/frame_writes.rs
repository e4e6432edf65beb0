//! What writing a WAL's frames costs the kernel, by the shape of the writes: the 39 MB
//! of frames a 20,000-pair `ingest` writes (2,371 frames of a 24-byte header and a 16 KiB
//! page), written into a new file as SQLite writes them (a header, then a page), a
//! frame a call, and in pieces that end on multiples of 64 KiB, 128 KiB or 1 MiB (as
//! `store::vfs` writes them out, with 64 KiB), then synced. CPU time of the thread for
//! the writes, and wall time of the `fsync`, medians over the runs; the shapes take
//! turns within each run.
//!
//! ```sh
//! cargo run --release --example frame_writes -- [DIR] [RUNS]   # DIR: where to write (default: the temp dir)
//! ```

use std::os::unix::fs::FileExt;
use std::time::Instant;

const FRAMES: usize = 2371;
const FRAME: usize = 24 + 16384;

fn cpu_ms() -> f64 {
    perpetual::clock::thread_cpu().as_secs_f64() * 1e3
}

/// Writes `bytes` into a new file at `path` in the given shape; (CPU ms of the writes,
/// wall ms of the sync).
fn write(path: &std::path::Path, bytes: &[u8], shape: &str) -> (f64, f64) {
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).unwrap();
    let cpu = cpu_ms();
    match shape {
        "sqlite" => {
            file.write_all_at(&bytes[..32], 0).unwrap();
            for i in 0..FRAMES {
                let at = 32 + i * FRAME;
                file.write_all_at(&bytes[at..at + 24], at as u64).unwrap();
                file.write_all_at(&bytes[at + 24..at + FRAME], (at + 24) as u64)
                    .unwrap();
            }
        }
        "frame" => {
            file.write_all_at(&bytes[..32], 0).unwrap();
            for i in 0..FRAMES {
                let at = 32 + i * FRAME;
                file.write_all_at(&bytes[at..at + FRAME], at as u64)
                    .unwrap();
            }
        }
        aligned => {
            let piece: usize = aligned.parse().unwrap();
            let mut at = 0;
            while at < bytes.len() {
                let end = ((at / piece + 1) * piece).min(bytes.len());
                file.write_all_at(&bytes[at..end], at as u64).unwrap();
                at = end;
            }
        }
    }
    let cpu = cpu_ms() - cpu;
    let synced = Instant::now();
    file.sync_all().unwrap();
    let sync = synced.elapsed().as_secs_f64() * 1e3;
    drop(file);
    let _ = std::fs::remove_file(path);
    (cpu, sync)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, Into::into);
    let runs: usize = args.next().map_or(7, |r| r.parse().unwrap());
    let path = dir.join(format!("frame_writes-{}.wal", std::process::id()));
    let bytes: Vec<u8> = (0..32 + FRAMES * FRAME)
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let shapes = ["sqlite", "frame", "65536", "131072", "1048576"];
    let mut results = vec![(Vec::new(), Vec::new()); shapes.len()];
    for _ in 0..runs {
        for (shape, (cpu, sync)) in shapes.iter().zip(&mut results) {
            let (c, s) = write(&path, &bytes, shape);
            cpu.push(c);
            sync.push(s);
        }
    }
    println!(
        "{} MB of WAL frames into a new file in {}, medians of {runs} runs",
        bytes.len() / 1_000_000,
        dir.display()
    );
    for (shape, (cpu, sync)) in shapes.iter().zip(results) {
        let label = match *shape {
            "sqlite" => "as SQLite writes them (header, page)".to_string(),
            "frame" => "a frame a call".to_string(),
            n => format!(
                "pieces ending on multiples of {} KiB",
                n.parse::<usize>().unwrap() / 1024
            ),
        };
        println!(
            "{label:40} writes {:6.1} ms CPU   fsync {:6.1} ms",
            median(cpu),
            median(sync)
        );
    }
}
