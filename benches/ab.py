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
    wall, own, cpu = ({n: [] for n, _, _ in builds} for _ in range(3))
    for _ in range(runs):
        for name, binary, env in builds:
            root = os.path.abspath(f"ab-root-{name}")
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
                if env.get("AB_FROM"):
                    shutil.copytree(env["AB_FROM"], root)
            os.sync()
            time.sleep(pause)
            before = os.times()
            start = time.perf_counter()
            out = subprocess.run(
                [binary, "--root", root, "ingest", corpus, "--json"],
                capture_output=True,
                env=env,
            )
            took = time.perf_counter() - start
            after = os.times()
            if out.returncode != 0:
                sys.exit(f"{name}: exit {out.returncode}\n{out.stderr.decode()}")
            wall[name].append(took * 1000)
            own[name].append(json.loads(out.stdout)["seconds"] * 1000)
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


if __name__ == "__main__":
    main()
