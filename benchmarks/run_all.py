"""Run every speed benchmark in this folder and print their tables (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--saelens-python .venv-bench/bin/python]

Every ``benchmarks/*.py`` runs with its default arguments, one at a time in its own
process (so that no run is timed while another one computes), except the helper modules
and the by-hand studies listed in ``NOT_BENCHMARKS``. Scripts in ``NEEDS_SAELENS`` run
with ``--saelens-python`` (the side environment holding sae-lens). At the end, the
``target ...`` lines of all scripts are repeated as one summary.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"common.py", "run_all.py", "hierarchy_absorption.py"}
NEEDS_SAELENS = {"vs_saelens.py"}


def scripts(only: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name not in NOT_BENCHMARKS)
    return [p for p in found if not only or p.stem in only or p.name in only]


def run(script: Path, python: str) -> tuple[int, float, list[str]]:
    print(f"\n{'=' * 88}\n== {script.name}  ({python})\n{'=' * 88}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    targets = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("target"):
            targets.append(line.rstrip())
    return proc.wait(), time.perf_counter() - t0, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--python", default=sys.executable, help="interpreter for the benchmarks")
    p.add_argument("--saelens-python", default=None, help="interpreter with sae-lens installed")
    p.add_argument("only", nargs="*", help="run only these scripts (names or stems)")
    a = p.parse_args()
    summary: list[tuple[str, int, float]] = []
    targets: list[str] = []
    for script in scripts(a.only):
        python = a.saelens_python or a.python if script.name in NEEDS_SAELENS else a.python
        code, seconds, lines = run(script, python)
        summary.append((script.name, code, seconds))
        targets += [f"{script.stem}: {line}" for line in lines]
    print(f"\n{'=' * 88}\n== summary\n")
    for name, code, seconds in summary:
        print(f"{name:<28} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:7.1f} s")
    if targets:
        print("\n" + "\n".join(targets))
    raise SystemExit(max((code for _, code, _ in summary), default=0) != 0)


if __name__ == "__main__":
    main()
