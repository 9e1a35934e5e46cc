"""`square`: the interpolant's error bound, and W_out as the only direction that matters."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.square import Square, interpolation_error_bound, knots


def make(**params: object) -> Square:
    toy = build_toy("square", params, seed=0)
    assert isinstance(toy, Square)
    return toy


def test_mlp_approximates_x_squared_within_the_bound_and_reaches_it_at_midpoints() -> None:
    toy = make()  # 10 neurons on [-1, 1]: h = 0.2, bound h²/4 = 0.01
    bound = interpolation_error_bound(toy.params)
    assert bound == pytest.approx(0.01)
    x = torch.linspace(-1, 1, 4001)[:, None]
    err = (toy(x) - x**2).abs()
    assert err.max() <= bound + 1e-5
    k = knots(toy.params).float()[:, None]
    assert (toy(k) - k**2).abs().max() < 1e-5  # exact at the knots
    mid = (k[1:] + k[:-1]) / 2
    assert torch.allclose(toy(mid) - mid**2, torch.full_like(mid, bound), atol=1e-5)


@pytest.mark.parametrize("interval", [[-1.0, 1.0], [0.0, 3.0], [-2.0, 0.5]])
def test_cube_twin_stays_within_its_bound(interval: list[float]) -> None:
    toy = make(use="cube", interval=interval)
    x = torch.linspace(*interval, 3001)[:, None]
    assert (toy(x) - x**3).abs().max() <= interpolation_error_bound(toy.params) + 1e-4


def test_twins_have_identical_hidden_activations_and_different_model_features() -> None:
    sq, cu = make(use="square"), make(use="cube")
    bs, bc = sq.sample(1000, seed=1), cu.sample(1000, seed=1)
    assert torch.equal(sq.acts("hidden", bs.inputs), cu.acts("hidden", bc.inputs))
    u_sq = sq.ground_truth("hidden").directions_KD[0]
    u_cu = cu.ground_truth("hidden").directions_KD[0]
    assert abs(float(u_sq @ u_cu)) < 0.9


def test_moving_orthogonally_to_w_out_leaves_the_output_unchanged() -> None:
    toy = make()
    h = toy.acts("hidden", toy.sample(400, seed=2).inputs)
    gt = toy.ground_truth("hidden")
    down = toy.downstream("hidden")
    out = down(h)
    u = gt.directions_KD[0]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(20, 10, generator=g)
    v = v - (v @ u)[:, None] * u  # random directions orthogonal to W_out
    for w in torch.cat([v, gt.directions_KD[1:]]):
        assert torch.allclose(down(h + 0.7 * w), out, atol=1e-5)


def test_moving_along_w_out_changes_the_output_by_the_predicted_amount() -> None:
    toy = make()
    h = toy.acts("hidden", toy.sample(400, seed=3).inputs)
    w_out = toy.w_out.weight.data[0]
    u = toy.ground_truth("hidden").directions_KD[0]
    delta = toy.downstream("hidden")(h + 0.3 * u) - toy.downstream("hidden")(h)
    assert torch.allclose(delta, torch.full_like(delta, 0.3 * float(w_out.norm())), atol=1e-5)


def test_features_reconstruct_h_and_data_only_directions_complete_an_orthonormal_basis() -> None:
    toy = make()
    b = toy.sample(300, seed=4)
    gt = toy.ground_truth("hidden")
    assert gt.is_model == (True,) + (False,) * 9
    assert torch.allclose(gt.directions_KD @ gt.directions_KD.T, torch.eye(10), atol=1e-5)
    h = toy.acts("hidden", b.inputs)
    assert torch.allclose(b.features["hidden"] @ gt.directions_KD, h, atol=1e-5)


def test_data_only_axes_are_principal_axes_inside_the_complement() -> None:
    """Variances of the data-only activations decrease and they are uncorrelated (closed form)."""
    toy = make()
    x = torch.linspace(-1, 1, 200001)[:, None]
    a = toy.acts("hidden", x).double() @ toy.data_only_directions().double().T
    m = a.T @ a / len(x)
    off = m - torch.diag(torch.diag(m))
    assert off.abs().max() < 1e-4 * m.diag().max()
    assert (m.diag()[1:] <= m.diag()[:-1] + 1e-7).all()


def test_invalid_interval_is_rejected() -> None:
    with pytest.raises(UserError, match="lo < hi"):
        build_toy("square", {"interval": [1.0, 1.0]}, seed=0)
