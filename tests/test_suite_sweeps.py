"""Suites that give methods fair resources: sweeps, widths relative to the site, verdict
suites with enough seeds (issue 16), and their bad inputs (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from decompbench.bench.suite import load_suite, plan_runs, with_seeds
from decompbench.cli import main
from decompbench.errors import UserError

TOY = {"name": "composed", "params": {"values": [2, 2], "d_model": 6, "use": "factored"}}
FAST = {"steps": 30, "batch_size": 32}


def suite(methods: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"seeds": [0], "n_train": 256, "n_eval": 128, "toys": [TOY], "methods": methods,
            **extra}  # fmt: skip


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweeps_expand_and_relative_widths_resolve_per_site(tmp_path: Path) -> None:
    data = suite([{"name": "sae-topk", "params": FAST,
                   "sweep": {"width": ["1d", "0.5d", "2d"], "k": [1, 2]}}])  # fmt: skip
    s, _ = load_suite(write(tmp_path, data))
    plan = plan_runs(s)
    got = sorted((r.method.params["width"], r.method.params["k"]) for r in plan)
    assert got == sorted((w, k) for w in (6, 3, 12) for k in (1, 2))


def test_swept_combinations_a_site_cannot_take_are_skipped(tmp_path: Path) -> None:
    data = suite([{"name": "sae-topk", "params": FAST, "sweep": {"width": [2, 4], "k": [1, 3]}}])
    plan = plan_runs(load_suite(write(tmp_path, data))[0])
    assert sorted((r.method.params["width"], r.method.params["k"]) for r in plan) == [
        (2, 1), (4, 1), (4, 3)]  # fmt: skip


def test_toys_pick_method_entries_by_id(tmp_path: Path) -> None:
    data = suite([
        {"name": "sae-topk", "params": {**FAST, "width": 4, "k": 1}},
        {"name": "sae-topk", "id": "wide", "params": {**FAST, "width": 8, "k": 1}},
    ])  # fmt: skip
    data["toys"] = [{**TOY, "methods": ["wide"]}]
    plan = plan_runs(load_suite(write(tmp_path, data))[0])
    assert [r.method.params["width"] for r in plan] == [8]


def test_verdict_suite_needs_three_seeds() -> None:
    s, _ = load_suite(None, "verdict")
    assert s.verdict and len(s.seeds) >= 3
    with pytest.raises(UserError, match="at least 3 seeds"):
        with_seeds(s, [0, 1])
    assert with_seeds(s, [3, 4, 5]).seeds == [3, 4, 5]


def test_built_in_verdict_suite_plans_every_toy_and_both_baselines() -> None:
    from decompbench.registry import all_toys

    plan = plan_runs(load_suite(None, "verdict")[0])
    assert {r.toy.name for r in plan} == set(all_toys())
    assert {"random", "weights"} <= {r.method.name for r in plan}
    widths = {r.method.params.get("width") for r in plan if r.method.name == "sae-topk"}
    assert all(isinstance(w, int) for w in widths)


@pytest.mark.parametrize(
    ("case", "data", "fragment"),
    [
        ("width too small",
         suite([{"name": "sae-topk", "params": {**FAST, "width": "0.01d", "k": 1}}]),
         "gives 0 latents"),
        ("sweep selects nothing",
         suite([{"name": "sae-topk", "params": FAST, "sweep": {"width": [1], "k": [2, 3]}}]),
         "selects nothing"),
        ("empty sweep", suite([{"name": "pca", "sweep": {"width": []}}]), "selects nothing"),
        ("too few seeds", suite([{"name": "pca"}], verdict=True), "at least 3 seeds"),
        ("bad relative width", suite([{"name": "pca", "params": {"width": "4x"}}]), "width"),
    ],
)  # fmt: skip
def test_bad_resource_settings_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, data: Any, fragment: str
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, data)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, (case, err)
    assert not out.exists()


def test_records_hold_the_resolved_width(tmp_path: Path) -> None:
    data = suite([{"name": "sae-topk", "params": {**FAST, "width": "2d", "k": 1}}])
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, data)), "--out", str(out), "--quiet"]) == 0
    (record,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert record["method_params"]["width"] == 12 and record["status"] == "ok"
