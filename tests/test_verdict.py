"""The stance verdict on hand-made records: selection rules and their labels, stances,
baselines, convergence, seeds with intervals and stability, twin scores."""

from __future__ import annotations

import json
from typing import Any

import pytest

from decompbench.bench.results import Record
from decompbench.bench.verdict import Thresholds, verdict, write_stance

NO_BASE: frozenset[str] = frozenset()


def rec(use: str, method: str, params: dict[str, Any], access: str = "activation_only",
        seed: int = 0, **metrics: float) -> Record:  # fmt: skip
    base = {"mcc": 0.5, "mcc_strict": 0.5, "mcc_strict_chance": 0.3, "fvu": 0.05, "l0": 2.0,
            "rel_dir_share3": 0.0, "rel_dir_share3_chance": 0.0}  # fmt: skip
    return Record(
        toy="composed", toy_params={"values": [4, 4], "use": use}, site="hidden",
        method=method, method_params=params, access=access, directions="decoder",
        seed=seed, status="ok", metrics={**base, **metrics}, wall_s=0.1,
    )  # fmt: skip


def seeds3(use: str, method: str, params: dict[str, Any], **metrics: float) -> list[Record]:
    return [rec(use, method, params, seed=s, **metrics) for s in (0, 1, 2)]


def test_own_rule_and_oracle_differ_and_are_labelled_truthfully() -> None:
    records = [
        rec("factored", "sae-topk", {"k": 1}, fvu=0.3, l0=1, mcc_strict=0.95),  # too lossy
        rec("factored", "sae-topk", {"k": 2}, fvu=0.05, l0=2, mcc_strict=0.6),
        rec("factored", "sae-topk", {"k": 4}, fvu=0.01, l0=4, mcc_strict=0.7),
        rec("factored", "pca", {}, fvu=0.0, l0=8, mcc_strict=0.4),
    ]
    (v,) = verdict(records, baselines=NO_BASE)
    best, oracle = v.activation_only.best, v.activation_only.oracle
    assert best is not None and oracle is not None
    assert best.params == {"k": 2} and best.setting_selection == "own rule"
    # the method was chosen across methods with the ground truth: said so
    assert best.method_selection == "oracle"
    assert oracle.params == {"k": 1} and oracle.setting_selection == "oracle"
    assert best.results_lines == [2]
    alone = verdict(records[:3], baselines=NO_BASE)[0].activation_only.best
    assert alone is not None and alone.method_selection == "only method"


def test_stances_follow_the_thresholds() -> None:
    def stance(records: list[Record], th: Thresholds | None = None) -> str:
        return verdict(records, th, baselines=NO_BASE)[0].provisional

    assert stance([rec("factored", "m", {}, mcc_strict=0.95)]) == "1"
    assert stance([rec("factored", "m", {}, mcc_strict=0.95, mcc_strict_chance=0.9)]) != "1"
    assert stance([rec("factored", "m", {}, rel_dir_share3=0.8)]) == "2a"
    assert stance([rec("factored", "m", {})]) == "2b"
    assert stance([rec("factored", "m", {}, mcc_strict=0.5)], Thresholds(recover=0.4)) == "1"


def test_the_best_method_must_beat_the_best_baseline_of_its_class() -> None:
    good = seeds3("factored", "m", {}, mcc_strict=0.95)
    assert verdict(good, baselines=NO_BASE)[0].stance == "1"
    strong_base = good + seeds3("factored", "random", {}, mcc_strict=0.9, l0=8, fvu=0.0)
    (v,) = verdict(strong_base, baselines=frozenset({"random"}))
    assert v.provisional == "2b"
    assert v.activation_only.baseline is not None
    assert v.activation_only.baseline.method == "random"
    assert v.activation_only.best is not None and v.activation_only.best.method == "m"
    da = [
        *seeds3("factored", "t", {}, mcc_strict=0.95),
        *seeds3("factored", "weights", {}, mcc_strict=1.0),
    ]
    for r in da:
        r.access = "downstream_aware"
    (w,) = verdict(good + da, baselines=frozenset({"weights"}))
    assert w.downstream_aware.best is not None and w.downstream_aware.best.method == "t"
    assert w.downstream_aware.beats_baseline is False


def test_fewer_than_three_seeds_is_unresolved_and_stable_stances_resolve() -> None:
    one = verdict([rec("factored", "m", {}, mcc_strict=0.95)], baselines=NO_BASE)[0]
    assert one.stance == "unresolved" and one.provisional == "1" and "seed" in one.reason
    three = verdict(seeds3("factored", "m", {}, mcc_strict=0.95), baselines=NO_BASE)[0]
    assert three.stance == "1" and three.stability == 1.0 and three.reason == ""
    best = three.activation_only.best
    assert best is not None and best.score_ci == pytest.approx((0.95, 0.95))


def test_a_stance_that_flips_with_the_seeds_is_unresolved() -> None:
    records = [
        rec("factored", "m", {}, seed=0, mcc_strict=0.99),
        rec("factored", "m", {}, seed=1, mcc_strict=0.99),
        rec("factored", "m", {}, seed=2, mcc_strict=0.5),
    ]
    (v,) = verdict(records, baselines=NO_BASE)
    assert v.provisional == "2b"  # mean 0.83 < 0.9
    assert v.stability is not None and 0.2 < v.stability < 0.8
    assert v.stance == "unresolved"
    best = v.activation_only.best
    assert best is not None and best.score_ci is not None
    lo, hi = best.score_ci
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.99)


def test_unconverged_settings_are_left_out_and_listed() -> None:
    records = [
        *seeds3("factored", "m", {"k": 1}, mcc_strict=0.95, l0=1, converged=0.0),
        *seeds3("factored", "m", {"k": 2}, mcc_strict=0.6, l0=2, converged=1.0),
    ]
    (v,) = verdict(records, baselines=NO_BASE)
    assert v.activation_only.best is not None
    assert v.activation_only.best.params == {"k": 2}
    assert v.activation_only.best.converged is True
    assert v.excluded_unconverged == ["m k=1"]


def test_identical_method_on_both_twins_has_twin_score_of_its_worse_twin() -> None:
    records = [
        rec("factored", "pca", {}, mcc=0.8, mcc_strict=0.4),
        rec("composed", "pca", {}, mcc=0.6, mcc_strict=0.6),
    ]
    rows = verdict(records, baselines=NO_BASE)
    assert len(rows) == 2
    for row in rows:
        assert row.twin_scores["pca"]["mcc"] == 0.6
        assert row.twin_scores["pca"]["mcc_strict"] == 0.4
        assert row.twin_own_rule["pca"]["mcc_strict"] == 0.4


def test_twin_own_rule_picks_per_twin_not_the_best_setting() -> None:
    records = [
        rec("factored", "m", {"k": 2}, l0=2, mcc_strict=0.9),
        rec("factored", "m", {"k": 4}, l0=4, mcc_strict=0.3),
        rec("composed", "m", {"k": 2}, l0=2, mcc_strict=0.2),
        rec("composed", "m", {"k": 4}, l0=4, mcc_strict=0.95),
    ]
    row = verdict(records, baselines=NO_BASE)[0]
    assert row.twin_own_rule["m"]["mcc_strict"] == 0.2  # own rule picks k=2 on both
    assert max(e["mcc_strict"] for e in row.twin_scores.values()) == 0.3


def test_seeds_are_averaged_and_downstream_methods_reported_separately() -> None:
    records = [
        rec("factored", "m", {}, seed=0, mcc_strict=0.2),
        rec("factored", "m", {}, seed=1, mcc_strict=0.4),
        rec("factored", "t", {}, access="downstream_aware", mcc_strict=0.9),
    ]
    (v,) = verdict(records, baselines=NO_BASE)
    assert v.activation_only.best is not None
    assert abs((v.activation_only.best.score or 0) - 0.3) < 1e-12
    assert v.downstream_aware.best is not None and v.downstream_aware.best.method == "t"
    assert v.provisional == "2b"  # the verdict is about activation-only methods


def test_stance_json_rows_carry_the_new_fields(tmp_path: Any) -> None:
    rows = verdict(seeds3("factored", "m", {}, mcc_strict=0.95), baselines=NO_BASE)
    data = json.loads(write_stance(tmp_path, rows).read_text())
    (row,) = data
    for key in ("stance", "stability", "provisional", "excluded_unconverged"):
        assert key in row
    pick = row["activation_only"]["best"]
    for key in ("score_ci", "converged", "setting_selection", "method_selection"):
        assert key in pick
    assert "baseline" in row["activation_only"]
