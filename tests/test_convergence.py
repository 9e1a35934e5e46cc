"""Convergence of gradient-trained runs: relative loss change over the last 10 % of steps."""

from __future__ import annotations

from typing import Any

import pytest

from decompbench.bench.evaluate import score
from decompbench.bench.runner import SiteData, site_data, site_view
from decompbench.methods import batched
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.train import CONVERGED_TOL, convergence, loss_rel_change, lr_factor
from decompbench.progress import reporting
from decompbench.toys.base import build_toy
from tests.conftest import fast_params

GRADIENT_TRAINED = {"sae-relu", "sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-matryoshka",
                    "transcoder", "transcoder-skip", "sae-e2e", "sae-e2e-ds", "spd"}  # fmt: skip


def composed(n_train: int = 4096) -> tuple[Any, SiteData]:
    toy = build_toy("composed", {"values": [3, 3], "d_model": 8}, seed=0)
    return toy, site_data(toy, "hidden", n_train, 256, 0)


def fit(name: str, params: dict[str, Any], seed: int = 0) -> Decomposition:
    toy, data = composed()
    method = build_method(name, params)
    method.fit(site_view(toy, data, method), seed)
    return method


def test_the_change_compares_the_two_halves_of_the_last_tenth() -> None:
    losses = [10.0] * 90 + [2.0] * 5 + [1.0] * 5  # last 10 steps: halves of 5
    assert loss_rel_change(losses) == pytest.approx(1.0)
    assert loss_rel_change([3.0] * 50) == 0.0
    assert loss_rel_change([1.0]) is None
    assert convergence([1.0]) == {"loss_rel_change": None, "converged": None}
    assert convergence([1.0] * 20 + [1.0 + CONVERGED_TOL / 2] * 2)["converged"] == 1.0


def test_a_loss_near_zero_is_measured_against_the_start_not_its_last_digits() -> None:
    # late mean 1e-6, start 1: the denominator is 1e-3 x the start, so the change is 1e-3
    losses = [1.0] * 90 + [2e-6] * 5 + [1e-6] * 5
    assert loss_rel_change(losses) == pytest.approx(1e-3)


def test_no_decay_schedule_does_not_divide_by_zero() -> None:
    assert lr_factor(10, 10, 0.0, 0.0) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_too_few_slow_steps_are_flagged_not_converged(seed: int) -> None:
    """200 steps at lr 1e-3 without decay: the loss is still falling (0.056-0.10)."""
    params = {"width": 8, "l1": 0.03, "steps": 200, "batch_size": 256, "lr": 1e-3,
              "warmup_frac": 0.0, "decay_frac": 0.0}  # fmt: skip
    conv = fit("sae-relu", params, seed).convergence()
    assert conv["converged"] == 0.0
    assert conv["loss_rel_change"] is not None and conv["loss_rel_change"] > 2 * CONVERGED_TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_normal_short_run_converges(seed: int) -> None:
    params = {"width": 8, "l1": 0.03, "steps": 1000, "batch_size": 256}
    conv = fit("sae-relu", params, seed).convergence()
    assert conv["converged"] == 1.0
    assert conv["loss_rel_change"] is not None and conv["loss_rel_change"] < CONVERGED_TOL / 4


class Starts:
    """A progress reporter that records which loops started (the shared loop reports)."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def start(self, label: str, total: int) -> None:
        self.labels.append(label)

    def advance(self, n: int, info: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


def test_every_method_that_runs_the_shared_loop_reports_convergence(method_name: str) -> None:
    rec = Starts()
    with reporting(rec):
        method = fit(method_name, fast_params(method_name))
    conv = method.convergence()
    if not rec.labels:
        assert conv == {}, method_name
        assert method_name not in GRADIENT_TRAINED
        return
    assert method_name in GRADIENT_TRAINED
    assert set(conv) == {"loss_rel_change", "converged"}
    assert isinstance(conv["loss_rel_change"], float) and conv["converged"] in (0.0, 1.0)


def test_a_selecting_method_reports_its_chosen_fit() -> None:
    method = fit("transcoder", {**fast_params("transcoder"), "l1": [0.001, 0.1]})
    chosen = method.chosen  # type: ignore[attr-defined]
    log = method.training_log()
    assert log is not None and len(log.losses) == fast_params("transcoder")["steps"]
    assert method.convergence() == convergence(log.losses)
    assert chosen in (0, 1)


def test_batched_fits_report_what_fitting_alone_reports() -> None:
    toy, data = composed()
    base = {"width": 8, "steps": 300, "batch_size": 64}
    params = [{**base, "l1": 0.03}, {**base, "l1": 0.3}]
    site = site_view(toy, data, build_method("sae-relu", params[0]))
    together = batched.fit_many([build_method("sae-relu", p) for p in params], site, [0, 1])
    for p, seed, member in zip(params, [0, 1], together, strict=True):
        assert isinstance(member, Decomposition)
        alone = build_method("sae-relu", p)
        alone.fit(site, seed)
        a, b = alone.convergence(), member.convergence()
        assert a["converged"] == b["converged"]
        assert b["loss_rel_change"] == pytest.approx(a["loss_rel_change"], rel=1e-4, abs=1e-9)


def test_score_records_convergence_for_trained_methods_only() -> None:
    toy, data = composed(2048)
    gt = toy.ground_truth("hidden")
    for name, expected in (("sae-relu", True), ("pca", False)):
        method = build_method(name, fast_params(name))
        method.fit(site_view(toy, data, method), 0)
        out = score(method, gt, data.eval_feats_NK, data.eval_ND, 0)
        assert ("loss_rel_change" in out and "converged" in out) == expected
        if expected:
            assert out["converged"] in (0.0, 1.0)
