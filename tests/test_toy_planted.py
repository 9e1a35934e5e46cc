"""The planted-dictionary toy: data generated from the planted directions, as documented."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.planted import feature_probs

SMALL = {"n_features": 32, "d": 16, "mean_active": 3}


def test_probabilities_decay_and_sum_to_mean_active() -> None:
    p = feature_probs(32, 3.0, 0.9)
    assert float(p.sum()) == pytest.approx(3.0, rel=1e-5)
    assert float(p[1] / p[0]) == pytest.approx(0.9, rel=1e-5)
    capped = feature_probs(4, 3.5, 0.5)  # 0.5^i weights would put p_0 above 1
    assert float(capped.max()) == pytest.approx(1.0) and float(capped.sum()) == pytest.approx(3.5)


def test_activations_are_the_planted_sum_and_l0_matches() -> None:
    toy = build_toy("planted", SMALL, seed=0)
    b = toy.sample(20000, seed=1)
    gt = toy.ground_truth("hidden")
    h = toy.acts("hidden", b.inputs)
    assert torch.allclose(b.features["hidden"] @ gt.directions_KD, h, atol=1e-5)
    assert float((b.features["hidden"] > 0).sum(dim=1).double().mean()) == pytest.approx(
        3, rel=0.05
    )
    assert float(b.features["hidden"].min()) >= 0 and float(b.features["hidden"].max()) <= 1


def test_feature_readout_reads_each_direction() -> None:
    toy = build_toy("planted", {**SMALL, "readout": "features"}, seed=0)
    gt = toy.ground_truth("hidden")
    out = toy.downstream("hidden")(gt.directions_KD[:1])
    assert out.shape == (1, 32) and float(out[0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(build_toy("planted", SMALL, seed=0).downstream("hidden")(out), out)


def test_rejects_more_active_than_features() -> None:
    with pytest.raises(UserError, match="exceeds n_features"):
        build_toy("planted", {"n_features": 4, "d": 4, "mean_active": 5}, seed=0)
