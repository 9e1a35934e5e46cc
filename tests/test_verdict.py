"""The stance verdict on hand-made records: selection rules, stances, twin scores."""

from __future__ import annotations

from typing import Any

from decompbench.bench.results import Record
from decompbench.bench.verdict import Thresholds, verdict


def rec(use: str, method: str, params: dict[str, Any], access: str = "activation_only",
        seed: int = 0, **metrics: float) -> Record:  # fmt: skip
    base = {"mcc": 0.5, "mcc_strict": 0.5, "mcc_strict_chance": 0.3, "fvu": 0.05, "l0": 2.0,
            "rel_dir_share3": 0.0, "rel_dir_share3_chance": 0.0}  # fmt: skip
    return Record(
        toy="composed", toy_params={"values": [4, 4], "use": use}, site="hidden",
        method=method, method_params=params, access=access, directions="decoder",
        seed=seed, status="ok", metrics={**base, **metrics}, wall_s=0.1,
    )  # fmt: skip


def test_own_rule_picks_sparsest_adequate_setting_and_oracle_the_best_score() -> None:
    records = [
        rec("factored", "sae-topk", {"k": 1}, fvu=0.3, l0=1, mcc_strict=0.95),  # too lossy
        rec("factored", "sae-topk", {"k": 2}, fvu=0.05, l0=2, mcc_strict=0.6),
        rec("factored", "sae-topk", {"k": 4}, fvu=0.01, l0=4, mcc_strict=0.7),
    ]
    (v,) = verdict(records)
    assert v["best_activation_only"]["params"] == {"k": 2}
    assert v["best_activation_only"]["selection"] == "self"
    assert v["best_activation_only_oracle"]["params"] == {"k": 1}
    assert v["best_activation_only"]["results_lines"] == [2]


def test_stances_follow_the_thresholds() -> None:
    one = verdict([rec("factored", "m", {}, mcc_strict=0.95)])[0]
    assert one["stance"] == "1"
    near_chance = verdict([rec("factored", "m", {}, mcc_strict=0.95, mcc_strict_chance=0.9)])
    assert near_chance[0]["stance"] != "1"
    related = verdict([rec("factored", "m", {}, rel_dir_share3=0.8)])[0]
    assert related["stance"] == "2a"
    assert verdict([rec("factored", "m", {})])[0]["stance"] == "2b"
    lenient = verdict([rec("factored", "m", {}, mcc_strict=0.5)], Thresholds(recover=0.4))
    assert lenient[0]["stance"] == "1"


def test_identical_method_on_both_twins_has_twin_score_of_its_worse_twin() -> None:
    records = [
        rec("factored", "pca", {}, mcc=0.8, mcc_strict=0.4),
        rec("composed", "pca", {}, mcc=0.6, mcc_strict=0.6),
    ]
    rows = verdict(records)
    assert len(rows) == 2
    for row in rows:
        assert row["twin_scores"]["pca"]["mcc"] == 0.6
        assert row["twin_scores"]["pca"]["mcc_strict"] == 0.4


def test_seeds_are_averaged_and_downstream_methods_reported_separately() -> None:
    records = [
        rec("factored", "m", {}, seed=0, mcc_strict=0.2),
        rec("factored", "m", {}, seed=1, mcc_strict=0.4),
        rec("factored", "t", {}, access="downstream_aware", mcc_strict=0.9),
    ]
    (v,) = verdict(records)
    assert abs(v["best_activation_only"]["score"] - 0.3) < 1e-12
    assert v["best_downstream_aware"]["method"] == "t"
    assert v["stance"] == "2b"  # the verdict is about activation-only methods
