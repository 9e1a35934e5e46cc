"""`curve`: each read unit looks along one direction and fires on one arc; twins agree."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.curve import Curve, kernel

SMALL = {"n_units": 40}


def make(**params: object) -> Curve:
    toy = build_toy("curve", {**SMALL, **params}, seed=1)
    assert isinstance(toy, Curve)
    return toy


def circular_distance(t_N1: torch.Tensor, s_U: torch.Tensor) -> torch.Tensor:
    return ((t_N1 - s_U[None] + math.pi) % (2 * math.pi) - math.pi).abs()


def test_twins_have_identical_activations_bit_for_bit() -> None:
    f, u = make(use="focused"), make(use="uniform")
    bf, bu = f.sample(1000, seed=2), u.sample(1000, seed=2)
    assert torch.equal(f.acts("hidden", bf.inputs), u.acts("hidden", bu.inputs))
    assert not torch.allclose(f.ground_truth("hidden").directions_KD[0],
                              u.ground_truth("hidden").directions_KD[0])  # fmt: skip


def test_curve_has_unit_norm_and_spans_exactly_ten_of_twelve_dims() -> None:
    toy = make()
    h = toy.acts("hidden", toy.sample(2000, seed=0).inputs)
    assert torch.allclose(h.norm(dim=1), torch.ones(2000), atol=1e-5)
    s = torch.linalg.svdvals(h)
    assert (s > 1e-3 * s[0]).sum() == 10
    dirs = toy.ground_truth("hidden").directions_KD
    basis = torch.linalg.svd(h, full_matrices=False).Vh[:10]
    assert torch.allclose((dirs @ basis.T).norm(dim=1), torch.ones(40), atol=1e-4)


@pytest.mark.parametrize("use", ["focused", "uniform"])
def test_each_unit_fires_exactly_on_its_arc_and_every_point_is_covered(use: str) -> None:
    toy = make(use=use)
    t = torch.linspace(0, 2 * math.pi, 20001)[:, None]
    fires = toy(t) > 0
    dist = circular_distance(t.double(), toy.positions)
    inside, outside = dist < toy.widths - 1e-4, dist > toy.widths + 1e-4
    assert fires[inside].all() and not fires[outside].any()
    assert fires.any(dim=1).all()


def test_focused_units_are_dense_on_the_fine_arc_and_coarse_elsewhere() -> None:
    toy = make()  # 20 units on 0.5 rad, 20 on the remaining 5.78 rad
    on_arc = toy.positions < 0.5
    assert int(on_arc.sum()) == 20
    assert torch.allclose(toy.widths[on_arc], torch.full((20,), 0.5 / 20, dtype=torch.float64))
    assert torch.allclose(toy.widths[~on_arc], torch.full((20,), (2 * math.pi - 0.5) / 20,
                                                          dtype=torch.float64))  # fmt: skip


def test_unit_output_depends_only_on_its_read_direction() -> None:
    toy = make()
    b = toy.sample(500, seed=3)
    h = toy.acts("hidden", b.inputs)
    down = toy.downstream("hidden")
    out = down(h)
    dirs = toy.ground_truth("hidden").directions_KD
    lin = toy.units[0]
    assert isinstance(lin, torch.nn.Linear)
    gains = lin.weight.data.norm(dim=1)
    g = torch.Generator().manual_seed(0)
    for j in [0, 7, 25, 39]:
        w = dirs[j]
        noise = torch.randn(500, 12, generator=g) * 0.01
        ortho = noise - (noise @ w)[:, None] * w
        assert torch.allclose(down(h + ortho)[:, j], out[:, j], atol=1e-4 * float(gains[j]))
        delta = 1e-3 / float(gains[j])
        moved = down(h + delta * w)[:, j] - out[:, j]
        on = out[:, j] > 0.01
        assert on.any()
        assert torch.allclose(moved[on], torch.full((int(on.sum()),), 1e-3), atol=2e-4)


def test_true_activations_are_the_units_post_activations() -> None:
    toy = make()
    b = toy.sample(300, seed=4)
    assert torch.equal(b.features["hidden"], toy(b.inputs))
    assert (b.features["hidden"] >= 0).all() and b.features["hidden"].max() <= 1.0 + 1e-3


def test_kernel_matches_the_curve_inner_product() -> None:
    toy = make()
    t = torch.tensor([[0.3], [1.1]])
    h = toy.acts("hidden", t)
    assert abs(float(h[0] @ h[1]) - kernel(5, 0.8)) < 1e-5


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"n_units": 10}, "too wide"),
        ({"n_freq": 7}, "exceeds d_model"),
        ({"fine_frac": 0.01}, "no fine or no coarse"),
        ({"fine_arc": 6.0, "fine_frac": 0.5}, "not finer"),
    ],
)
def test_invalid_params_are_rejected_with_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        build_toy("curve", {**SMALL, **params}, seed=0)
    assert "\n" not in str(info.value)
