"""Resume after a crash: a suite SIGKILLed mid-way and restarted records every run once,
with metrics equal to an uninterrupted run; torn lines, other settings, growth, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from decompbench.cli import main

# 2 seeds x 1 toy x 3 methods = 6 runs of ~0.1-0.5 s each: long enough to kill mid-way.
SUITE: dict[str, Any] = {
    "seeds": [0, 1],
    "n_train": 512,
    "n_eval": 256,
    "toys": [{"name": "composed", "params": {"values": [2, 2], "d_model": 4}}],
    "methods": [
        {"name": "sae-topk", "params": {"width": 4, "k": 1, "steps": 300, "batch_size": 32}},
        {"name": "pca"},
        {"name": "sae-relu", "params": {"width": 4, "steps": 300, "batch_size": 32}},
    ],
}
N_RUNS = 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(suite: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "decompbench.cli", "run", str(suite), "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    """run_id -> record; asserts every line is complete and every run appears once."""
    text = (out / "results.jsonl").read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    ids = [r["run_id"] for r in records]
    assert len(ids) == len(set(ids)), "a run was recorded twice"
    return {r["run_id"]: r for r in records}


def kill_after_first_record(argv: list[str], out: Path) -> int:
    """Start ``argv``, SIGKILL it as soon as one complete record exists; lines at kill time."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not lines(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return len(lines(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The same suite, run uninterrupted in a subprocess."""
    tmp = tmp_path_factory.mktemp("ref")
    suite = tmp / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    subprocess.run(cli(suite, tmp / "out"), env=ENV, check=True, capture_output=True)
    ref = by_id(tmp / "out")
    assert len(ref) == N_RUNS and all(r["status"] == "ok" for r in ref.values())
    return ref


def test_sigkill_mid_suite_then_rerun_records_every_run_once_with_same_metrics(
    tmp_path: Path, reference: dict[str, dict[str, Any]]
) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "out"
    at_kill = kill_after_first_record(cli(suite, out), out)
    assert 1 <= at_kill < N_RUNS, f"{at_kill} records at kill time: not mid-way"
    proc = subprocess.run(cli(suite, out), env=ENV, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{N_RUNS - at_kill} run now, {at_kill} skipped" in proc.stdout
    resumed = by_id(out)
    assert set(resumed) == set(reference)
    for run_id, rec in resumed.items():
        assert rec["status"] == "ok"
        assert rec["metrics"] == reference[run_id]["metrics"], rec["method"]


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_torn_last_line_from_a_kill_mid_write_is_cut_and_the_run_redone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    """What a kill inside ``write`` leaves: ``keep`` whole records and part of the next."""
    small = {**SUITE, "seeds": [0], "methods": [{"name": "pca"}, SUITE["methods"][0]]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    full = by_id(out)
    text = (out / "results.jsonl").read_text()
    whole = text.splitlines(keepends=True)
    partial = whole[keep][: len(whole[keep]) // 2] if keep < len(whole) else ""
    (out / "results.jsonl").write_text("".join(whole[:keep]) + partial)
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert f"{len(whole) - keep} run now, {keep} skipped" in capsys.readouterr().out
    resumed = by_id(out)
    assert set(resumed) == set(full)
    assert all(resumed[k]["metrics"] == full[k]["metrics"] for k in full)


def test_same_suite_and_seed_give_identical_metrics(tmp_path: Path) -> None:
    small = {**SUITE, "seeds": [3], "methods": SUITE["methods"][:2]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small))
    for name in ("a", "b"):
        assert main(["run", str(path), "--out", str(tmp_path / name), "--quiet"]) == 0
    a, b = by_id(tmp_path / "a"), by_id(tmp_path / "b")
    assert set(a) == set(b) and len(a) == 2
    assert all(a[k]["metrics"] == b[k]["metrics"] for k in a)


def test_grown_suite_resumes_and_runs_only_the_new_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = {**SUITE, "seeds": [0], "methods": [{"name": "pca"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    first = lines(out)
    path.write_text(yaml.safe_dump({**small, "seeds": [0, 1]}))
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert "1 run now, 1 skipped" in capsys.readouterr().out
    assert lines(out)[:1] == first and len(by_id(out)) == 2
    assert yaml.safe_load((out / "suite.yaml").read_text())["seeds"] == [0, 1]


def test_a_corrupt_complete_line_is_refused_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"not": "a record"}\n')
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "methods": [{"name": "pca"}]}))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert main(["show", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("results.jsonl:1: not a valid run record" in e for e in err)
    assert (out / "results.jsonl").read_text() == '{"not": "a record"}\n'


def test_show_ignores_a_torn_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "seeds": [0], "methods": [{"name": "pca"}]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    with (out / "results.jsonl").open("a") as f:
        f.write('{"toy": "comp')
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "pca" in capsys.readouterr().out


def test_progress_off_a_terminal_is_one_line_per_run_counting_skipped_and_quiet_is_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "seeds": [0], "methods": [{"name": "pca"}]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    path.write_text(yaml.safe_dump({**SUITE, "seeds": [0, 1], "methods": [{"name": "pca"}]}))
    assert main(["run", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("2 runs: 1 already recorded in " + str(out) + ", 1 to run")
    assert err[1].startswith("decompbench: [2/2] ok composed@hidden pca seed 1 (")
    assert "eta 0:00:00" in err[1] and len(err) == 2


def test_results_without_run_ids_are_refused_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "seeds": [0], "methods": [{"name": "pca"}]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    old = json.loads(lines(out)[0])
    del old["run_id"]
    (out / "results.jsonl").write_text(json.dumps(old) + "\n")
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert "without run ids" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "--quiet", "--force"]) == 0
    assert len(by_id(out)) == 1
