"""`composed-tms`: one feature of each set per sample, and each feature read separately."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench.seeding import generator
from decompbench.toys import trained
from decompbench.toys.base import build_toy
from decompbench.toys.composed_tms import composed_inputs, correlated_uniform

FAST = {"steps": 1000, "batch_size": 256}  # reaches zero loss on seeds 0 and 1


pytestmark = pytest.mark.usefixtures("toy_cache")


def test_exactly_one_feature_of_each_set_with_a_uniform_joint_table() -> None:
    f = composed_inputs(40000, 0.0, 0.0, generator(0, "t"))
    active = f > 0
    assert torch.equal(active[:, :2].sum(dim=1), torch.ones(40000, dtype=torch.long))
    assert torch.equal(active[:, 2:].sum(dim=1), torch.ones(40000, dtype=torch.long))
    for i in (0, 1):
        for j in (2, 3):
            share = float((active[:, i] & active[:, j]).float().mean())
            assert abs(share - 0.25) < 0.011  # 5 binomial standard deviations


def test_one_hot_share() -> None:
    f = composed_inputs(40000, 0.0, 0.75, generator(0, "t"))
    n_active = (f > 0).sum(dim=1)
    assert set(n_active.tolist()) <= {1, 2}
    assert abs(float((n_active == 1).float().mean()) - 0.75) < 0.011
    assert ((f > 0).float().mean(dim=0) - (0.25 * 0.5 + 0.75 * 0.25)).abs().max() < 0.011


@pytest.mark.parametrize("corr", [-1.0, -0.5, 0.0, 0.3, 0.9, 1.0])
def test_magnitudes_are_uniform_with_the_asked_correlation(corr: float) -> None:
    mx, my = correlated_uniform(40000, corr, generator(1, "t"))
    for m in (mx, my):
        assert abs(float(m.mean()) - 0.5) < 0.01 and abs(float(m.var()) - 1 / 12) < 0.003
    r = float(torch.corrcoef(torch.stack([mx, my]))[0, 1])
    assert abs(r - corr) < 0.03


def test_trained_solution_puts_each_set_on_its_own_line() -> None:
    toy = build_toy("composed-tms", FAST, seed=0)
    gt = toy.ground_truth("hidden")
    assert gt.names == ("x1", "x2", "y1", "y2") and gt.groups == (0, 0, 1, 1)
    cos = gt.directions_KD @ gt.directions_KD.T
    assert cos[0, 1] < -0.99 and cos[2, 3] < -0.99  # a set's two features are antipodal
    assert cos[:2, 2:].abs().max() < 0.05  # the sets are orthogonal
    assert toy.target_loss < 1e-4


def test_ablating_a_feature_zeroes_its_output_and_leaves_the_others() -> None:
    toy = build_toy("composed-tms", FAST, seed=0)
    b = toy.sample(4000, seed=1)
    gt, ds = toy.ground_truth("hidden"), toy.downstream("hidden")
    h = toy.acts("hidden", b.inputs)
    out = ds(h)
    assert torch.allclose(out, b.inputs, atol=0.02)  # the network reproduces its input
    for i in range(4):
        ablated = ds(h - b.features["hidden"][:, i : i + 1] * gt.directions_KD[i])
        others = [j for j in range(4) if j != i]
        assert ablated[:, i].abs().max() < 0.02
        assert torch.allclose(ablated[:, others], out[:, others], atol=0.02)


def test_a_composed_direction_is_not_a_model_feature() -> None:
    """Moving along (x1 + y1)/sqrt 2 moves two outputs: the model reads the sets separately."""
    toy = build_toy("composed-tms", FAST, seed=0)
    b = toy.sample(4000, seed=2)
    u = toy.ground_truth("hidden").directions_KD
    both = (b.inputs[:, 0] > 0) & (b.inputs[:, 2] > 0)
    h = toy.acts("hidden", b.inputs[both])
    ds = toy.downstream("hidden")
    delta = ds(h + 0.2 * (u[0] + u[2]) / math.sqrt(2)) - ds(h)
    assert (delta[:, [0, 2]] > 0.1).all()


def test_second_build_comes_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_toy("composed-tms", {**FAST, "p_onehot": 0.75}, seed=1)
    monkeypatch.setattr(trained, "fit", None)
    second = build_toy("composed-tms", {**FAST, "p_onehot": 0.75}, seed=1)
    assert second.info.from_cache and torch.equal(first.net.W_HF, second.net.W_HF)


def test_a_missed_target_raises() -> None:
    with pytest.raises(trained.TrainingTargetMissed, match="composed-tms"):
        build_toy("composed-tms", {"steps": 1, "batch_size": 256}, seed=0)
