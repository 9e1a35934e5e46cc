"""The composed twins: identical activations, and each twin's ground truth verified causally."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.composed import conjunction_threshold

PARAMS = {"values": [4, 4], "d_model": 16}


def twins(**extra: object) -> tuple:
    f = build_toy("composed", {**PARAMS, **extra, "use": "factored"}, seed=3)
    c = build_toy("composed", {**PARAMS, **extra, "use": "composed"}, seed=3)
    return f, c


def test_twins_have_identical_activations_bit_for_bit() -> None:
    f, c = twins(p_absent=0.2, magnitude=[0.8, 1.2])
    bf, bc = f.sample(1000, seed=5), c.sample(1000, seed=5)
    assert torch.equal(f.acts("hidden", bf.inputs), c.acts("hidden", bc.inputs))


def test_factor_subspaces_are_orthogonal_and_directions_unit() -> None:
    f, _ = twins()
    u = f.ground_truth("hidden").directions_KD
    assert torch.allclose(u @ u.T, torch.eye(8), atol=1e-5)


def test_factored_features_reconstruct_the_activations() -> None:
    f, _ = twins(magnitude=[0.6, 1.1], p_absent=0.3)
    b = f.sample(500, seed=0)
    gt = f.ground_truth("hidden")
    h = f.acts("hidden", b.inputs)
    assert torch.allclose(b.features["hidden"] @ gt.directions_KD, h, atol=1e-5)


def test_factored_twin_ablating_a_feature_zeroes_exactly_its_output() -> None:
    f, _ = twins(magnitude=[0.6, 1.1])
    b = f.sample(400, seed=1)
    h = f.acts("hidden", b.inputs)
    gt = f.ground_truth("hidden")
    out = f.downstream("hidden")(h)
    for i in range(8):
        a = b.features["hidden"][:, i]
        ablated = f.downstream("hidden")(h - a[:, None] * gt.directions_KD[i])
        others = [j for j in range(8) if j != i]
        assert torch.allclose(ablated[:, i], torch.zeros(400), atol=1e-5)
        assert torch.allclose(ablated[:, others], out[:, others], atol=1e-5)


def test_factored_twin_moving_along_a_feature_moves_only_its_output() -> None:
    f, _ = twins()
    b = f.sample(200, seed=2)
    h = f.acts("hidden", b.inputs)
    u0 = f.ground_truth("hidden").directions_KD[0]
    delta = f.downstream("hidden")(h + 0.25 * u0) - f.downstream("hidden")(h)
    active = b.features["hidden"][:, 0] > 0
    assert torch.allclose(delta[active, 0], torch.full((int(active.sum()),), 0.25), atol=1e-5)
    assert delta[:, 1:].abs().max() < 1e-5


def test_composed_twin_ablating_a_conjunction_zeroes_exactly_its_output() -> None:
    _, c = twins(magnitude=[0.8, 1.2])
    b = c.sample(400, seed=1)
    h = c.acts("hidden", b.inputs)
    gt = c.ground_truth("hidden")
    out = c.downstream("hidden")(h)
    for i in range(16):
        a = b.features["hidden"][:, i]
        ablated = c.downstream("hidden")(h - a[:, None] * gt.directions_KD[i])
        others = [j for j in range(16) if j != i]
        assert torch.allclose(ablated[:, i], torch.zeros(400), atol=1e-5)
        assert torch.allclose(ablated[:, others], out[:, others], atol=1e-5)


def test_composed_twin_removing_one_value_kills_every_conjunction_with_it() -> None:
    _, c = twins()
    b = c.sample(300, seed=4)
    h = c.acts("hidden", b.inputs)
    u = c.value_dirs_VD
    out = c.downstream("hidden")(h - (h @ u[0])[:, None] * u[0])  # remove factor 0 = value 0
    with_v0 = [n for n, combo in enumerate(c.combos) if combo[0] == 0]
    assert out[:, with_v0].abs().max() == 0
    others = [n for n in range(16) if n not in with_v0]
    assert torch.allclose(out[:, others], c.downstream("hidden")(h)[:, others])


@pytest.mark.parametrize("magnitude", [[1.0, 1.0], [0.7, 1.3], [1.0, 1.9]])
def test_conjunction_is_exact_over_the_magnitude_range(magnitude: list[float]) -> None:
    _, c = twins(magnitude=magnitude, p_absent=0.3)
    b = c.sample(2000, seed=0)
    out = c(b.inputs)
    fires = out > 0
    present = b.features["hidden"] > 0
    assert torch.equal(fires, present)
    assert present.any(dim=0).all()


def test_threshold_is_inside_the_exact_interval() -> None:
    for k, lo, hi in [(2, 1, 1), (2, 0.7, 1.3), (3, 1.0, 1.4)]:
        theta = conjunction_threshold(k, lo, hi)
        assert (k - 1) * hi < theta < k * lo


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"magnitude": [0.5, 1.0]}, "no exact conjunction threshold"),
        ({"values": [9, 9]}, "do not fit"),
        ({"magnitude": [0.0, 1.0]}, "0 < lo <= hi"),
    ],
)
def test_invalid_params_are_rejected_with_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        build_toy("composed", {**PARAMS, **params, "use": "composed"}, seed=0)
    assert "\n" not in str(info.value)


def test_the_exact_interval_is_checked_exactly_at_its_boundary() -> None:
    """k = 3, [0.8, 1.2]: 2 * 1.2 = 3 * 0.8, so the interval is empty (float arithmetic
    says 2.4 < 2.4000000000000004 and would accept it); just inside it is accepted."""
    assert (3 - 1) * 1.2 < 3 * 0.8  # the float comparison the check must not use
    on = {"values": [2, 2, 2], "d_model": 8, "use": "composed", "magnitude": [0.8, 1.2]}
    with pytest.raises(UserError, match=r"need \(k-1\)\*hi < k\*lo exactly, got 2.4 vs 2.4"):
        build_toy("composed", on, seed=0)
    inside = build_toy("composed", {**on, "magnitude": [0.8, 1.1999999]}, seed=0)
    theta = -float(inside.readout[0].bias[0])
    assert 2 * 1.1999999 < theta < 3 * 0.8
    b = inside.sample(2000, seed=0)
    assert torch.equal(inside(b.inputs) > 0, b.features["hidden"] > 0)  # still exact
