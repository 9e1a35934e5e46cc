"""Parallel suites: ``--jobs N`` (spawned processes) and Ray tasks give the records of a
serial run; faults in workers (exceptions, dead workers) become failed records; a cached
toy is built by one worker only; Ctrl-C stops the workers and keeps the written records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from decompbench.bench.executors import WORKER_DIED, Outcome, ProcessPool, Serial, WorkerSetup
from decompbench.bench.runner import local_jobs, plan_tasks, run_suite
from decompbench.bench.suite import parse_suite, plan_runs
from decompbench.cli import main
from decompbench.methods.pca import PCA, PCAParams
from decompbench.toys.composed import Composed, ComposedParams
from decompbench.toys.trained import cache_root
from tests.conftest import registered

TOY = {"values": [2, 2], "d_model": 4}
SUITE: dict[str, Any] = {
    "seeds": [0, 1],
    "n_train": 512,
    "n_eval": 256,
    "toys": [{"name": "composed", "params": TOY}, {"name": "tms"}],
    "methods": [
        {"name": "pca"},
        {"name": "sae-topk", "params": {"width": 4, "k": 1, "steps": 100, "batch_size": 32}},
        {"name": "sae-relu", "params": {"width": 4, "steps": 100, "batch_size": 32}},
    ],
}  # 2 seeds x 2 toys x 3 methods = 12 runs
SAE = {"width": 8, "steps": 150, "batch_size": 64}
SWEEP = [{"name": "sae-relu", "params": {**SAE, "l1": l1}} for l1 in (0.01, 0.1)] + [
    {"name": "sae-topk", "params": {**SAE, "k": k}} for k in (1, 2)
]  # fitted as two batched pairs per toy sample
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- test-only toy and method (importable by the spawned workers) -------------------------


class CrashParams(PCAParams):
    mode: Literal["ok", "raise", "die"] = "ok"


class Crashing(PCA):
    """PCA that raises, or kills its own process, in ``fit``."""

    summary = "test-only"
    Params = CrashParams
    params: CrashParams

    def fit(self, site: Any, seed: int) -> None:
        if self.params.mode == "raise":
            raise RuntimeError("boom in a worker")
        if self.params.mode == "die":
            os._exit(3)  # what a segfault or an OOM kill looks like from outside
        super().fit(site, seed)


class SlowBuildParams(ComposedParams):
    log: str = ""


class SlowBuild(Composed):
    """A composed toy that 'trains' for 1 s unless its marker is in the toy cache."""

    summary = "test-only"
    Params = SlowBuildParams
    params: SlowBuildParams

    def __init__(self, params: SlowBuildParams, seed: int) -> None:
        super().__init__(params, seed)
        marker = cache_root() / f"slow-build-{seed}"
        if marker.exists():
            what = "loaded"
        else:
            time.sleep(1.0)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("trained")
            what = "trained"
        with open(params.log, "a") as f:
            f.write(f"{seed} {what} {os.getpid()}\n")


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    with registered({"test-crashing": Crashing}, {"test-slow-build": SlowBuild}):
        yield


def run(data: dict[str, Any], out: Path, quiet: bool = True, **kw: Any) -> list[dict[str, Any]]:
    """Run ``data``; the records as stored in ``out/results.jsonl``, in file order."""
    run_suite(parse_suite(data, "t.yaml"), "", out, quiet=quiet, **kw)
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def without_wall(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def artefact_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "artefacts").iterdir())}


# --- the executors on their own -------------------------------------------------------------


# Tasks for the executors alone, run by ``eval`` (a builtin: workers need not import this
# module, so starting them stays cheap): a value, an exception, a worker that dies.
TASKS = ["0", "2", "4", "__import__('os')._exit(1)", "int('four')", "10"]


def test_process_pool_isolates_a_dead_worker_and_an_exception() -> None:
    outcomes = sorted(ProcessPool(2, WorkerSetup()).imap_unordered(eval, TASKS),
                      key=lambda o: o.index)  # fmt: skip
    assert outcomes == [Outcome(0, 0), Outcome(1, 2), Outcome(2, 4),
                        Outcome(3, error=WORKER_DIED),
                        Outcome(4, error="ValueError: invalid literal for int() with base 10: "
                                         "'four'"),
                        Outcome(5, 10)]  # fmt: skip


def test_serial_yields_in_order_and_turns_exceptions_into_errors() -> None:
    got = list(Serial(WorkerSetup()).imap_unordered(eval, ["0", "int('four')", "4"]))
    assert [(o.index, o.value) for o in got] == [(0, 0), (1, None), (2, 4)]
    assert got[1].error is not None and got[1].error.startswith("ValueError: invalid literal")


@pytest.mark.parametrize(("jobs", "todo", "cores", "want"),
                         [(None, 155, 2, 2), (None, 7, 2, 1), (None, 8, 2, 2), (None, 1, 2, 1),
                          (3, 2, 2, 2), (3, 155, 2, 3), (1, 155, 2, 1)])  # fmt: skip
def test_default_jobs_one_per_core_and_at_least_four_runs_each(
    monkeypatch: pytest.MonkeyPatch, jobs: int | None, todo: int, cores: int, want: int
) -> None:
    monkeypatch.setattr("decompbench.bench.runner.usable_cores", lambda: cores)
    assert local_jobs(jobs, todo) == want


# --- whole suites ----------------------------------------------------------------------------


def test_two_jobs_and_batched_fits_give_the_records_and_artefacts_of_one_job_in_plan_order(
    tmp_path: Path,
) -> None:
    data = {**SUITE, "methods": [*SUITE["methods"], *SWEEP]}  # 28 runs, 8 batched pairs
    serial = run(data, tmp_path / "one", jobs=1, batch=False)
    parallel = run(data, tmp_path / "two", jobs=2)
    planned = plan_runs(parse_suite(data, "t"))
    assert [len(t) for t in plan_tasks(planned, batch=True)].count(2) == 8
    plan = [r.run_id for r in planned]
    assert [r["run_id"] for r in serial] == plan == [r["run_id"] for r in parallel]
    assert all(r["status"] == "ok" for r in parallel)
    assert without_wall(parallel) == without_wall(serial)
    assert artefact_bytes(tmp_path / "two") == artefact_bytes(tmp_path / "one")


def test_faults_in_workers_become_failed_records_and_the_rest_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = [{"name": "test-crashing", "params": {"mode": m}} for m in ("ok", "raise", "die")]
    data = {**SUITE, "seeds": [0], "toys": SUITE["toys"][:1], "methods": methods}
    records = run(data, tmp_path / "o", quiet=False, jobs=2)
    shown = [line for line in capsys.readouterr().err.splitlines() if "/3] " in line]
    assert [line.split("]")[0][-3:] for line in shown] == ["1/3", "2/3", "3/3"]  # as they end
    got = [(r["method_params"]["mode"], r["status"], r["error"]) for r in records]
    assert got == [("ok", "ok", None), ("raise", "failed", "RuntimeError: boom in a worker"),
                   ("die", "failed", WORKER_DIED)]  # fmt: skip
    names = {p.name for p in (tmp_path / "o" / "artefacts").iterdir()}
    assert names == {f"{records[0]['run_id']}.json", f"{records[0]['run_id']}.safetensors"}


def test_a_cached_toy_is_built_by_one_worker_while_the_other_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECOMPBENCH_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "builds.log"
    toy = {"name": "test-slow-build", "params": {**TOY, "log": str(log)}}
    data = {**SUITE, "toys": [toy], "methods": [{"name": "pca"}, {"name": "lib"}]}
    records = run(data, tmp_path / "o", jobs=2)
    assert [r["status"] for r in records] == ["ok"] * 4
    builds = [line.split() for line in log.read_text().splitlines()]
    seed1 = [what for seed, what, _ in builds if seed == "1"]  # seed 0: built by the loader
    assert seed1.count("trained") == 1 and set(seed1) <= {"trained", "loaded"}


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_ctrl_c_stops_the_workers_keeps_records_and_a_rerun_completes(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    slow = [{"name": "sae-relu", "params": {"width": 4, "steps": 800, "batch_size": 32,
                                            "l1": l1}} for l1 in (0.01, 0.02, 0.03)]  # fmt: skip
    suite = {**SUITE, "seeds": [0], "toys": SUITE["toys"][:1], "methods": [{"name": "pca"}, *slow]}
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "decompbench.cli", "run", str(path), "--out", str(out),
            "--quiet", "--jobs", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert len(workers) >= 2
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers)
    kept = results.read_text()
    assert kept.endswith("\n") and 1 <= len(kept.splitlines()) < 4
    rerun = subprocess.run([*argv[:-1], "1"], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    lines = results.read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["run_id"] for line in lines}) == 4


def test_address_without_ray_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--address", "auto"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err


def test_ray_tasks_give_the_records_of_one_job(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    data = {**SUITE, "seeds": [0]}
    serial = run(data, tmp_path / "one", jobs=1)
    on_ray = run(data, tmp_path / "ray", executor="ray", jobs=2)  # starts a local instance
    assert not ray.is_initialized()  # and stops it
    assert without_wall(on_ray) == without_wall(serial)
    assert artefact_bytes(tmp_path / "ray") == artefact_bytes(tmp_path / "one")
