"""`hierarchy`: parents, exclusive children inside them, independent features; exact readout."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import Batch, build_toy
from decompbench.toys.hierarchy import Hierarchy

N = 100000


@pytest.fixture(scope="module")
def sample() -> tuple[Hierarchy, Batch]:
    toy = build_toy("hierarchy", {}, seed=0)
    assert isinstance(toy, Hierarchy)
    return toy, toy.sample(N, seed=1)


def test_names_groups_and_twenty_features(sample: tuple[Hierarchy, Batch]) -> None:
    toy, _ = sample
    gt = toy.ground_truth("hidden")
    assert len(gt.names) == 20 and gt.names[:4] == ("p0", "p1", "p2", "p0/c0")
    assert gt.names[-1] == "i7" and all(gt.is_model)
    assert gt.groups is not None
    assert gt.groups[:3] == (0, 1, 2) and gt.groups[3:6] == (3, 3, 3)  # p0's children share
    assert len(set(gt.groups[12:])) == 8  # independent features: a group each


def test_firing_rates_and_the_hierarchy(sample: tuple[Hierarchy, Batch]) -> None:
    toy, b = sample
    on = b.features["hidden"] > 0
    tol = 5 * (0.15 * 0.85 / N) ** 0.5
    assert ((on[:, :3].float().mean(dim=0) - 0.15).abs() < tol).all()
    assert ((on[:, 3:12].float().mean(dim=0) - 0.03).abs() < 0.003).all()
    assert ((on[:, 12:].float().mean(dim=0) - 0.05).abs() < 0.004).all()
    for parent in range(3):
        kids = on[:, toy.children_of(parent)]
        assert not (kids.any(dim=1) & ~on[:, parent]).any()  # children only inside the parent
        assert kids.sum(dim=1).max() <= 1  # mutually exclusive
        given = kids[on[:, parent]].float().mean(dim=0)
        assert ((given - 0.2).abs() < 0.02).all()  # 0.2 each, 0.4 none
    assert torch.equal(b.inputs, b.features["hidden"])


def test_directions_are_unit_and_near_orthogonal(sample: tuple[Hierarchy, Batch]) -> None:
    toy, _ = sample
    u = toy.ground_truth("hidden").directions_KD
    off = u @ u.T - torch.eye(20)
    assert 0.02 < off.abs().max() < 0.25
    exact = build_toy("hierarchy", {"overlap": 0.0}, seed=0).ground_truth("hidden")
    assert torch.allclose(exact.directions_KD @ exact.directions_KD.T, torch.eye(20), atol=1e-5)


def test_readout_returns_every_feature_exactly(sample: tuple[Hierarchy, Batch]) -> None:
    toy, b = sample
    h = toy.acts("hidden", b.inputs[:5000])
    gt = toy.ground_truth("hidden")
    assert torch.allclose(b.features["hidden"][:5000] @ gt.directions_KD, h, atol=1e-5)
    assert torch.allclose(toy.downstream("hidden")(h), b.features["hidden"][:5000], atol=1e-5)


def test_ablating_a_parent_or_child_silences_only_its_own_output(
    sample: tuple[Hierarchy, Batch],
) -> None:
    toy, b = sample
    x = b.features["hidden"][:5000]
    u, ds = toy.ground_truth("hidden").directions_KD, toy.downstream("hidden")
    h = toy.acts("hidden", x)
    out = ds(h)
    for i in range(20):
        ablated = ds(h - x[:, i : i + 1] * u[i])
        others = [j for j in range(20) if j != i]
        assert ablated[:, i].abs().max() < 1e-5
        assert torch.allclose(ablated[:, others], out[:, others], atol=1e-5)


def test_an_absorbed_latent_would_silence_the_parent_too(sample: tuple[Hierarchy, Batch]) -> None:
    """Removing a child together with its parent's share (what an absorbing latent encodes)."""
    toy, b = sample
    x = b.features["hidden"]
    rows = x[:, 3] > 0  # p0/c0 active, hence p0 active
    u, ds = toy.ground_truth("hidden").directions_KD, toy.downstream("hidden")
    h = toy.acts("hidden", x[rows])
    ablated = ds(h - x[rows, 3:4] * u[3] - x[rows, 0:1] * u[0])
    assert ablated[:, [0, 3]].abs().max() < 1e-5 and (ds(h)[:, 0] > 0).all()


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"n_children": 3, "p_child": 0.4}, "exclusive children"),
        ({"n_children": 3, "p_child": 0.3333333334}, "exclusive children"),  # 1 + 2e-10
        ({"d_model": 19}, "d_model >= 20"),
        ({"magnitude": [0.5, 0.2]}, "magnitude"),
        ({"width": 3}, "unknown key"),
    ],
)
def test_invalid_params_are_rejected_with_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        build_toy("hierarchy", params, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("n_children", "p_child"), [(3, 0.3333333333), (5, 0.2), (10, 0.1)])
def test_children_probabilities_summing_to_at_most_one_exactly_are_accepted(
    n_children: int, p_child: float
) -> None:
    build_toy("hierarchy", {"n_children": n_children, "p_child": p_child, "d_model": 64}, seed=0)
