#!/usr/bin/env python3
"""`perpetual ingest` into a root whose kept WAL is in the page cache, and evicted from it.

    python3 benches/kept_wal.py FIRST SECOND RUNS NAME=BINARY ...

For RUNS rounds, for each build in turn and each case: a fresh root (kept-wal-root
beside this working directory) ingests the folder FIRST, which leaves a WAL of 4 to 64
MiB kept on disk (`store::close`); the WAL and the database are synced; in the case
`evicted`, the WAL's pages are dropped from the page cache (POSIX_FADV_DONTNEED, what a
kernel reclaiming idle page cache does: this VM's DAMON evicts unmapped pages idle for
about a minute); SECOND is read once so that it is in the cache; then the ingest of
SECOND is timed from spawn to exit. Prints per build and case the median and the
minimum, and the load average (BENCHMARKS.md, "End to end", seventeenth sitting).

Corpora like the e2e bench's:
perpetual generate --out c20 --files 200 --pairs 100 --duplicates 0.2 --layouts flat,nested --answer-chars 800-2000 --seed 14
and the same with --out c20b --seed 15.
"""
import os
import shutil
import statistics
import subprocess
import sys
import time

CASES = ("cached", "evicted")


def read_corpus(folder):
    for d, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                f.read()


def drop_from_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    first, second, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    builds = [arg.split("=", 1) for arg in sys.argv[4:]]
    root = "kept-wal-root"
    times = {(name, case): [] for name, _ in builds for case in CASES}
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
                if case == "evicted":
                    drop_from_cache(wal)
                read_corpus(second)
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
