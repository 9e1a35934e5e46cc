"""Guarded runs: every fault in a toy or a method becomes a failed record and the suite
goes on; interrupts propagate and leave a resumable file; the lock and the cost guard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch
import yaml
from torch import Tensor, nn

from decompbench.bench import runner
from decompbench.bench.runner import MAX_WORK, check_cost, locked, planned_work, run_suite
from decompbench.bench.suite import load_suite, parse_suite, plan_runs
from decompbench.cli import main
from decompbench.config import StrictModel
from decompbench.methods.base import Decomposition
from decompbench.methods.train import TrainParams, train
from decompbench.toys.base import ActivationSite, Batch
from decompbench.toys.composed import Composed, ComposedParams
from decompbench.toys.trained import TrainingTargetMissed
from tests.conftest import registered

Mode = Literal["ok", "raise", "interrupt", "nan_loss", "nan_dirs", "inf_latents", "explode",
               "bad_shape"]  # fmt: skip


class FaultyParams(StrictModel):
    mode: Mode = "ok"


class NanLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def loss(self, x_BD: Tensor) -> Tensor:
        return (self.w * x_BD).sum() * float("nan")

    def after_step(self) -> None:
        pass


class Faulty(Decomposition):
    """Identity dictionary that misbehaves in the way ``mode`` names."""

    summary = "test-only"
    Params = FaultyParams
    params: FaultyParams
    interrupt_once: ClassVar[list[bool]] = []

    def fit(self, site: ActivationSite, seed: int) -> None:
        mode = self.params.mode
        if mode == "raise":
            raise RuntimeError("boom in fit")
        if mode == "interrupt" and self.interrupt_once:
            self.interrupt_once.pop()
            raise KeyboardInterrupt
        if mode == "nan_loss":
            train(NanLoss(), site.acts_ND, TrainParams(steps=3, batch_size=4), seed, "faulty")
        self.d = site.d

    def encode(self, acts_ND: Tensor) -> Tensor:
        z = acts_ND.clone()
        if self.params.mode == "inf_latents":
            z[0, 0] = float("inf")
        return z

    def decode(self, latents_NM: Tensor) -> Tensor:
        return latents_NM * (1e9 if self.params.mode == "explode" else 1.0)

    def directions(self) -> Tensor:
        if self.params.mode == "bad_shape":
            return torch.eye(self.d + 1)
        eye = torch.eye(self.d)
        if self.params.mode == "nan_dirs":
            eye[1, 1] = float("nan")
        return eye


class FaultyToyParams(ComposedParams):
    fail: Literal["never", "build_seed1", "build_always", "sample"] = "never"


class FaultyToy(Composed):
    summary = "test-only"
    Params = FaultyToyParams
    params: FaultyToyParams

    def __init__(self, params: FaultyToyParams, seed: int) -> None:
        if params.fail == "build_seed1" and seed == 1:
            raise ValueError("toy training missed its target loss")
        if params.fail == "build_always":
            raise TrainingTargetMissed("toy test: loss 0.3 above its bound 0.1")
        super().__init__(params, seed)

    def sample(self, n: int, seed: int) -> Batch:
        if self.params.fail == "sample":
            raise RuntimeError("sampler broke")
        return super().sample(n, seed)


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    with registered({"test-faulty": Faulty}, {"test-faulty-toy": FaultyToy}):
        yield


TOY = {"values": [2, 2], "d_model": 4}


def suite_of(methods: list[dict[str, Any]], toys: list[dict[str, Any]] | None = None,
             seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:  # fmt: skip
    toys = toys or [{"name": "composed", "params": TOY}]
    return {"seeds": list(seeds), "n_train": 64, "n_eval": 32, "toys": toys, "methods": methods}


def faulty(mode: str) -> dict[str, Any]:
    return {"name": "test-faulty", "params": {"mode": mode}}


def run(data: dict[str, Any], out: Path) -> list[Any]:
    return run_suite(parse_suite(data, "t.yaml"), "", out, quiet=True).records


EXPECTED = [
    ("raise", "RuntimeError: boom in fit"),
    ("nan_loss", "TrainingFailed: faulty: loss became nan at step 0"),
    ("nan_dirs", "TrainingFailed: directions not finite (1 of 16 entries)"),
    ("inf_latents", "TrainingFailed: latents not finite (1 of 128 entries)"),
    ("explode", "TrainingFailed: reconstruction exploded"),
    ("bad_shape", "AssertionError: directions (5, 5)"),
]


@pytest.mark.parametrize(("mode", "error"), EXPECTED, ids=[m for m, _ in EXPECTED])
def test_a_faulty_method_becomes_a_failed_record_and_the_suite_goes_on(
    tmp_path: Path, mode: str, error: str
) -> None:
    records = run(suite_of([faulty(mode), {"name": "pca"}]), tmp_path / "o")
    assert [r.status for r in records] == ["failed", "ok"]
    assert records[0].error is not None and records[0].error.startswith(error)
    assert records[0].metrics == {} and "\n" not in records[0].error
    stored = (tmp_path / "o" / "results.jsonl").read_text().splitlines()
    assert [json.loads(s)["status"] for s in stored] == ["failed", "ok"]


def test_a_toy_that_fails_to_build_fails_each_of_its_runs_only(tmp_path: Path) -> None:
    toys = [{"name": "test-faulty-toy", "params": {**TOY, "fail": "build_seed1"}},
            {"name": "composed", "params": TOY}]  # fmt: skip
    records = run(suite_of([{"name": "pca"}, faulty("ok")], toys, seeds=(0, 1)), tmp_path / "o")
    failed = [r for r in records if r.status == "failed"]
    assert len(records) == 8 and len(failed) == 2
    assert {(r.toy, r.seed) for r in failed} == {("test-faulty-toy", 1)}
    assert all(r.error == "ValueError: toy training missed its target loss (building toy "
               "'test-faulty-toy')" for r in failed)  # fmt: skip


def test_a_toy_missing_its_target_at_every_seed_is_recorded_when_its_sites_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy = {"name": "test-faulty-toy", "params": {**TOY, "fail": "build_always"}}
    records = run(suite_of([{"name": "pca"}], [{**toy, "sites": ["hidden"]}]), tmp_path / "o")
    assert [r.error for r in records] == [
        "TrainingTargetMissed: toy test: loss 0.3 above its bound 0.1 (building toy "
        "'test-faulty-toy')"
    ]
    path = tmp_path / "s.yaml"  # without sites the suite cannot be planned: exit 2, one line
    path.write_text(yaml.safe_dump(suite_of([{"name": "pca"}], [toy])))
    assert main(["run", str(path), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name its sites" in err and "TrainingTargetMissed" in err
    assert not (tmp_path / "p").exists()


def test_a_toy_whose_sampler_fails_fails_each_run_at_that_site(tmp_path: Path) -> None:
    toys = [{"name": "test-faulty-toy", "params": {**TOY, "fail": "sample"}}]
    records = run(suite_of([{"name": "pca"}, faulty("ok")], toys), tmp_path / "o")
    assert [r.error for r in records] == [
        "RuntimeError: sampler broke (sampling site 'hidden')"
    ] * 2


def test_keyboard_interrupt_propagates_and_a_rerun_completes(tmp_path: Path) -> None:
    data = suite_of([{"name": "pca"}, faulty("interrupt"), faulty("ok")])
    Faulty.interrupt_once[:] = [True]
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path / "o")
    path = tmp_path / "o" / "results.jsonl"
    assert [json.loads(s)["method_params"] for s in path.read_text().splitlines()] == [{}]
    records = run(data, tmp_path / "o")
    assert [r.status for r in records] == ["ok"] * 3
    ids = [json.loads(s)["run_id"] for s in path.read_text().splitlines()]
    assert sorted(ids) == sorted(r.run_id for r in plan_runs(parse_suite(data, "t")))


def test_a_second_runner_on_the_same_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite_of([{"name": "pca"}])))
    out = tmp_path / "o"
    out.mkdir()
    with locked(out):
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert "in use by another decompbench run" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0  # lock released


def test_cost_guard_refuses_a_huge_suite_without_yes_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = {"name": "sae-topk", "params": {"width": 512, "k": 4, "steps": 1_000_000}}
    toys = [{"name": "test-faulty-toy", "params": {**TOY, "fail": "sample"}, "sites": ["hidden"]}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite_of([huge], toys)))
    out = tmp_path / "o"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.3e+11" in err and "--yes" in err
    assert not out.exists()
    # With --yes the guard lets it through (the toy's sampler fails at once: no hours spent);
    # the failed run makes the exit code 1.
    assert main(["run", str(path), "--out", str(out), "--quiet", "--yes"]) == 1
    assert json.loads((out / "results.jsonl").read_text())["status"] == "failed"


def test_cost_estimate_by_hand_and_the_builtin_suite_passes() -> None:
    suite = parse_suite(suite_of([{"name": "sae-relu", "params": {"width": 8, "steps": 10}},
                                  {"name": "pca"}], seeds=(0, 1)), "t")  # fmt: skip
    assert planned_work(plan_runs(suite)) == 2 * 10 * 256 * 8  # default batch_size 256
    sweep = {"name": "transcoder", "params": {"width": 8, "steps": 10, "l1": [0.1, 0.3, 1.0]}}
    spd = {"name": "spd", "params": {"steps": 10, "batch_size": 8}}  # 4 importance values
    suite = parse_suite(suite_of([sweep, spd]), "t")
    assert planned_work(plan_runs(suite)) == 10 * 256 * 8 * 3 + 10 * 8 * 4
    builtin = plan_runs(load_suite(None)[0])
    assert planned_work(builtin) <= MAX_WORK
    check_cost(builtin, yes=False)


def test_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite_of([{"name": "pca"}])))
    (tmp_path / "file").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "file"), "--quiet"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def cli_run(path: Path, out: Path, *extra: str) -> int:
    return main(["run", str(path), "--out", str(out), "--quiet", *extra])


def test_failed_runs_are_retried_on_resume_unless_keep_failed_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, out = tmp_path / "s.yaml", tmp_path / "o"
    path.write_text(yaml.safe_dump(suite_of([faulty("raise"), {"name": "pca"}])))
    results = out / "results.jsonl"
    assert cli_run(path, out) == 1  # one run failed
    assert [json.loads(s)["status"] for s in results.read_text().splitlines()] == ["failed", "ok"]
    capsys.readouterr()
    assert cli_run(path, out, "--keep-failed") == 1
    assert "0 run now, 2 skipped" in capsys.readouterr().out
    assert cli_run(path, out) == 1  # retried (and failed again): still one record per run
    assert "1 run now, 1 skipped" in capsys.readouterr().out
    assert [json.loads(s)["status"] for s in results.read_text().splitlines()] == ["failed", "ok"]
    monkeypatch.setattr(Faulty, "fit", lambda self, site, seed: setattr(self, "d", site.d))
    assert cli_run(path, out) == 0  # the fixed method: retried, now ok, exit 0
    assert [json.loads(s)["status"] for s in results.read_text().splitlines()] == ["ok", "ok"]


def test_an_all_failed_suite_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite_of([faulty("raise")], seeds=(0, 1))))
    assert cli_run(path, tmp_path / "o") == 1
    assert "2 failed" in capsys.readouterr().out


def test_a_site_too_large_for_memory_is_refused_up_front_unless_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "MAX_SITE_BYTES", 50 * 4 * 4)  # 50 samples of d = 4 ...
    path, out = tmp_path / "s.yaml", tmp_path / "o"
    path.write_text(yaml.safe_dump(suite_of([{"name": "pca"}])))  # ... 96 given
    assert cli_run(path, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "96 samples x 4 dims" in err and "--yes" in err
    assert not out.exists()
    assert cli_run(path, out, "--yes") == 0


def test_n_train_of_a_million_on_compressed_is_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    toys = [{"name": "compressed", "sites": ["mlp_in"]}]
    path.write_text(yaml.safe_dump({**suite_of([{"name": "pca"}], toys), "n_train": 10**6}))
    assert cli_run(path, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'compressed' site 'mlp_in'" in err and "GB" in err
    assert not (tmp_path / "o").exists()
