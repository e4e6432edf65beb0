#!/usr/bin/env python3
"""`perpetual ingest` into a root whose kept WAL is in the page cache, and evicted from it.

    python3 benches/kept_wal.py [--watch] FIRST SECOND RUNS NAME=BINARY ...

For RUNS rounds, for each build in turn and each case: a fresh root (kept-wal-root
beside this working directory) ingests the folder FIRST, which leaves a WAL of 4 to 64
MiB kept on disk (`store::close`); the WAL and the database are synced; in the case
`evicted`, the WAL's pages are dropped from the page cache (POSIX_FADV_DONTNEED, what a
kernel reclaiming idle page cache does: this VM's DAMON evicts unmapped pages idle for
about a minute); SECOND is read once so that it is in the cache; then the ingest of
SECOND is timed from spawn to exit. With --watch, a watcher runs on the root instead
(started before the eviction), SECOND's files are copied into inbox/droid under
temporary names and renamed into place at once, and the time is from the first rename
until every new pair of SECOND is queryable (SECOND must share no pair with FIRST).
Prints per build and case the median and the minimum, and the load average
(BENCHMARKS.md, "End to end", seventeenth sitting).

Corpora like the e2e bench's:
perpetual generate --out c20 --files 200 --pairs 100 --duplicates 0.2 --layouts flat,nested --answer-chars 800-2000 --seed 14
and the same with --out c20b --seed 15.
"""
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

from ab import read_corpus  # benches/ab.py, beside this file

CASES = ("cached", "evicted")


def drop_from_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def pairs(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    finally:
        conn.close()


def distinct_pairs(binary, folder):
    """How many pairs FOLDER stores into a fresh root."""
    root = "kept-wal-count"
    shutil.rmtree(root, ignore_errors=True)
    run = subprocess.run([binary, "--root", root, "ingest", folder, "--json"],
                         check=True, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    return json.loads(run.stdout)["pairs_new"]


def watch_burst(binary, root, second, new_pairs, evict):
    """Times a burst of SECOND's files renamed into a running watcher's inbox, until
    its NEW_PAIRS are queryable."""
    db = os.path.join(root, "perpetual.db")
    want = pairs(db) + new_pairs
    watcher = subprocess.Popen([binary, "--root", root, "watch"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        if evict:
            drop_from_cache(db + "-wal")
        inbox = os.path.join(root, "inbox", "droid")
        names = sorted(os.listdir(second))
        for n in names:
            shutil.copyfile(os.path.join(second, n), os.path.join(inbox, f".{n}.tmp"))
        os.sync()
        time.sleep(0.5)
        start = time.perf_counter()
        for n in names:
            os.rename(os.path.join(inbox, f".{n}.tmp"), os.path.join(inbox, n))
        while pairs(db) < want:
            if time.perf_counter() - start > 60:
                sys.exit(f"the watcher did not store {want} pairs within 60 s")
            time.sleep(0.002)
        return (time.perf_counter() - start) * 1000
    finally:
        watcher.terminate()
        watcher.wait()


def main():
    watch = "--watch" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--watch"]
    if len(args) < 4:
        sys.exit(__doc__)
    first, second, runs = args[0], args[1], int(args[2])
    builds = [arg.split("=", 1) for arg in args[3:]]
    root = "kept-wal-root"
    times = {(name, case): [] for name, _ in builds for case in CASES}
    new_pairs = distinct_pairs(builds[0][1], second) if watch else 0
    wal_sizes = []
    for _ in range(runs):
        for name, binary in builds:
            for case in CASES:
                shutil.rmtree(root, ignore_errors=True)
                subprocess.run([binary, "--root", root, "ingest", first, "--json"],
                               check=True, capture_output=True)
                wal = os.path.join(root, "perpetual.db-wal")
                wal_sizes.append(os.path.getsize(wal))
                os.sync()
                if watch:
                    times[(name, case)].append(
                        watch_burst(binary, root, second, new_pairs, case == "evicted"))
                    continue
                if case == "evicted":
                    drop_from_cache(wal)
                read_corpus([second])
                time.sleep(0.3)
                start = time.perf_counter()
                subprocess.run([binary, "--root", root, "ingest", second, "--json"],
                               check=True, capture_output=True)
                times[(name, case)].append((time.perf_counter() - start) * 1000)
    shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"kept WAL after ingesting {first}: {statistics.median(wal_sizes) / 1e6:.1f} MB")
    for (name, case), ms in times.items():
        print(f"{name:12s} {case:8s} median {statistics.median(ms):7.1f} ms  "
              f"min {min(ms):7.1f}  load {load:.2f}")


if __name__ == "__main__":
    main()
