#!/usr/bin/env python3
"""Alternating runs of `perpetual ingest` builds: the A/B figures in BENCHMARKS.md.

    python3 benches/ab.py CORPUS RUNS NAME=BINARY[@VAR=VALUE,...] ...

For RUNS rounds, each build in turn ingests CORPUS (a folder of drops, read in place)
into a fresh root (ab-root-NAME beside this working directory, deleted first), after
a `sync` and a pause of AB_PAUSE seconds (default 0.3). Prints per build the median
and the minimum wall time from spawn to exit, the median of the run's own `seconds`,
the median CPU time of the child (user + system, 10 ms resolution) and the load
average. `@VAR=VALUE` sets environment variables for that build only, so one binary
can be compared with itself under a setting. CORPUS `keep:PATH` keeps each build's
root from run to run (an existing root, e.g. for an empty inbox). `@AB_FROM=ROOT`
starts each of that build's runs from a copy of ROOT instead of a fresh root (e.g. a
root holding a million pairs: the stored case of BENCHMARKS.md's ninth sitting).

CORPUS may name several folders separated by commas: each run ingests them one after
the other into the same root (one `ingest` each) and counts the sum; the per-folder
medians are printed too (the cycle of merges of BENCHMARKS.md's eleventh sitting).
Before every run the corpus is read once, so that it is in the page cache (a kernel
that reclaims idle page cache, as DAMON's pageout did here, left the first runs of a
series reading the disk: BENCHMARKS.md, sixteenth sitting). AB_DROP_CACHES=1 drops
the kernel's page cache after the copy and the `sync` (it needs root:
/proc/sys/vm/drop_caches), before that read, so that every run starts from the same
cache: a root copied just before a run left its pages in a state that made the run's
writes into the page cache several times slower (`copy_folio_from_iter_atomic`,
BENCHMARKS.md, eleventh sitting).

A corpus like the e2e bench's: perpetual generate --out c20 --files 200 --pairs 100
--duplicates 0.2 --layouts flat,nested --answer-chars 800-2000 --seed 14
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def read_corpus(folders):
    for folder in folders:
        for d, _, names in os.walk(folder):
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    f.read()


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    corpus, runs = sys.argv[1], int(sys.argv[2])
    keep = corpus.startswith("keep:")
    if keep:
        corpus = corpus[len("keep:"):]
    builds = []
    for arg in sys.argv[3:]:
        name, rest = arg.split("=", 1)
        env = dict(os.environ)
        if "@" in rest:
            rest, settings = rest.split("@", 1)
            for kv in settings.split(","):
                k, v = kv.split("=", 1)
                env[k] = v
        builds.append((name, rest, env))
    pause = float(os.environ.get("AB_PAUSE", "0.3"))
    drop = os.environ.get("AB_DROP_CACHES") == "1"
    folders = corpus.split(",")
    wall, own, cpu = ({n: [] for n, _, _ in builds} for _ in range(3))
    each = {n: [[] for _ in folders] for n, _, _ in builds}
    for _ in range(runs):
        for name, binary, env in builds:
            root = os.path.abspath(f"ab-root-{name}")
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
                if env.get("AB_FROM"):
                    shutil.copytree(env["AB_FROM"], root)
            os.sync()
            if drop:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            # Every run reads a corpus in the cache: a kernel that reclaims idle page
            # cache (DAMON's pageout on the machine of BENCHMARKS.md, sixteenth
            # sitting) would otherwise have the first runs of a series read the disk.
            read_corpus(folders)
            time.sleep(pause)
            before = os.times()
            took = seconds = 0.0
            for i, folder in enumerate(folders):
                start = time.perf_counter()
                out = subprocess.run(
                    [binary, "--root", root, "ingest", folder, "--json"],
                    capture_output=True,
                    env=env,
                )
                one = time.perf_counter() - start
                if out.returncode != 0:
                    sys.exit(f"{name}: exit {out.returncode}\n{out.stderr.decode()}")
                took += one
                seconds += json.loads(out.stdout)["seconds"]
                each[name][i].append(one * 1000)
            after = os.times()
            wall[name].append(took * 1000)
            own[name].append(seconds * 1000)
            cpu[name].append(
                (after.children_user - before.children_user
                 + after.children_system - before.children_system) * 1000
            )
    load = open("/proc/loadavg").read().split()[0]
    for name, _, _ in builds:
        print(
            f"{name:12} median {statistics.median(wall[name]):8.1f} ms  "
            f"min {min(wall[name]):8.1f}  own {statistics.median(own[name]):8.1f}  "
            f"cpu {statistics.median(cpu[name]):7.0f}  load {load}"
        )
        if len(folders) > 1:
            print(
                f"{'':12} each folder, median ms: "
                + " ".join(f"{statistics.median(w):.0f}" for w in each[name])
            )


if __name__ == "__main__":
    main()
