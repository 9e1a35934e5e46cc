"""Wall time of whole suites run serially, in local processes and as Ray tasks.

    .venv/bin/python benchmarks/parallel_suite.py [--suite FILE] [--jobs 1,2]
        [--executors local,ray] [--keep DIR] [--no-cold]

Each configuration is one ``decompbench run SUITE --out TMP --force --quiet --jobs N
[--executor ray]`` in its own process, timed from start to exit: loading the suite, the
runs, the tables and the report, as ``make demo`` does (``ray`` also starts and stops a
local Ray instance, and runs only at the largest ``--jobs``). Rows: suite, executor, jobs,
wall s, runs/s, speed-up over ``--jobs 1`` (always run first) on the same suite, the sum
of the runs' own ``wall_s`` (compute inside the runs), and the CPU other processes used
meanwhile (cores; system busy time minus this benchmark's process tree; Ray's daemons
count as other). The metrics of every configuration are checked against ``--jobs 1``
(they must be equal). A last row repeats the most jobs with an empty toy cache, as on a
fresh machine, where ``make demo`` trains the zoo's trained toys first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_line, print_table

from decompbench.bench.executors import usable_cores
from decompbench.toys.trained import CACHE_ENV

TARGET_S = 180.0  # the default suite (make demo) on this machine, using every core
_HZ = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all processors have been busy (0 where /proc is missing)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)) / _HZ


def own_seconds() -> float:
    """CPU seconds of this process and its waited-for descendants."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_config(
    suite: str | None, executor: str, jobs: int, out: Path, cache: Path | None = None
) -> dict[str, Any]:
    """One suite run, timed; ``cache``: an empty toy cache (every toy trained first)."""
    argv = [sys.executable, "-m", "decompbench.cli", "run", *([suite] if suite else []),
            "--out", str(out), "--force", "--quiet", "--jobs", str(jobs),
            "--executor", executor]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if cache is not None:
        env[CACHE_ENV] = str(cache)
    busy0, own0, t0 = busy_seconds(), own_seconds(), time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    other = max(0.0, (busy_seconds() - busy0) - (own_seconds() - own0)) / wall
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {"wall": wall, "other": other, "records": records}


def metrics_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["run_id"]: (r["status"], r["error"], r["metrics"]) for r in records}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", action="append", help="suite YAML (repeatable; default: built-in)")
    p.add_argument("--jobs", default=f"1,{usable_cores()}", help="comma-separated job counts")
    p.add_argument(
        "--executors", default="local", help="local and/or ray (ray: one more suite, ~5 min)"
    )
    p.add_argument("--keep", type=Path, help="keep the run directories under this directory")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the extra run at the most jobs with an empty toy cache")  # fmt: skip
    a = p.parse_args()
    jobs = sorted({1, *(int(j) for j in a.jobs.split(","))})  # jobs 1: the reference row
    executors = a.executors.split(",")
    if "ray" in executors:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed: skipping the ray rows")
            executors.remove("ray")
    configs = [(e, j, False) for e in executors for j in jobs if e == "local" or j == jobs[-1]]
    if not a.no_cold:  # a fresh machine's `make demo`: the toys are trained first
        configs.append(("local", jobs[-1], True))
    rows: list[list[object]] = []
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or Path(tmp)
        for suite in a.suite or [None]:
            name = Path(suite).stem if suite else "default"
            first: dict[str, Any] | None = None
            for executor, n, cold in configs:
                cache = base / f"cache-{name}" if cold else None
                out = base / f"{name}-{executor}-{n}{'-cold' if cold else ''}"
                got = run_config(suite, executor, n, out, cache)
                first = first or got
                label = f"{executor}, cold toy cache" if cold else executor
                same = metrics_of(got["records"]) == metrics_of(first["records"])
                runs = len(got["records"])
                rows.append([name, label, n, got["wall"], runs / got["wall"],
                             first["wall"] / got["wall"], sum(r["wall_s"] for r in got["records"]),
                             got["other"], "yes" if same else "NO"])  # fmt: skip
                if name == "default" and executor == "local" and n == usable_cores():
                    met = "met" if got["wall"] < TARGET_S else "NOT met"
                    cached = "toys trained first" if cold else "toys cached"
                    targets.append(f"target default suite < {TARGET_S:.0f} s with --jobs {n} "
                                   f"({cached}): {got['wall']:.0f} s, {met}")  # fmt: skip
    print(f"\nmachine: {machine_line('1 torch thread per worker, wall time')}")
    header = ["suite", "executor", "jobs", "wall s", "runs/s", "speed-up vs jobs 1",
              "sum of run wall_s", "other CPU (cores)", "metrics = jobs 1"]  # fmt: skip
    print_table("Whole suites: serial, local processes, Ray tasks", header, rows)
    print("\n" + "\n".join(targets))


if __name__ == "__main__":
    main()
