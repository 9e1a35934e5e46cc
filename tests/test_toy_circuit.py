"""`circuit`: exact gates over superposed inputs; ablating an input flips exactly its edges."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.circuit import Circuit, gate_threshold, parse_gate


def make(**params: object) -> Circuit:
    toy = build_toy("circuit", params, seed=3)
    assert isinstance(toy, Circuit)
    return toy


def test_inputs_are_superposed_in_antipodal_pairs_and_read_exactly() -> None:
    toy = make()
    e = toy.ground_truth("l0").directions_KD
    assert e.shape == (12, 8)
    assert torch.allclose(e[0], -e[1]) and torch.allclose(e[6], -e[7])
    assert torch.allclose(e[8:] @ e[8:].T, torch.eye(4), atol=1e-5)
    b = toy.sample(2000, seed=0)
    x = b.inputs
    assert not ((x[:, 0:8:2] > 0) & (x[:, 1:8:2] > 0)).any()  # partners never together
    detected = torch.relu(toy.acts("l0", x) @ e.T)
    assert torch.allclose(detected, x, atol=1e-5)


@pytest.mark.parametrize("magnitude", [[0.6, 1.0], [1.0, 1.0], [0.51, 1.0]])
def test_gates_are_exact_boolean_functions_for_every_allowed_magnitude(
    magnitude: list[float],
) -> None:
    toy = make(magnitude=magnitude, p_active=0.4)
    b = toy.sample(4000, seed=1)
    bits = b.features["l1"]
    assert torch.equal(bits, bits.round())  # exactly 0 or 1 at the gates
    assert torch.allclose(toy(b.inputs), bits, atol=1e-5)  # read back up to round-off
    x = b.inputs > 0
    expected = torch.stack(
        [x[:, 0] & x[:, 2], x[:, 1] & x[:, 8], x[:, 4] | x[:, 9], x[:, 3] | x[:, 10],
         x[:, 2] & x[:, 9]], dim=1).float()  # fmt: skip
    assert torch.equal(bits, expected)
    assert bits.any(dim=0).all() and (bits == 0).any(dim=0).all()
    l1 = toy.acts("l1", b.inputs)
    assert torch.allclose(l1, bits @ toy.ground_truth("l1").directions_KD, atol=1e-6)


def test_ablating_an_input_changes_exactly_the_gates_its_edges_predict() -> None:
    toy = make(p_active=0.4)
    b = toy.sample(3000, seed=2)
    e = toy.ground_truth("l0").directions_KD
    h0 = toy.acts("l0", b.inputs)
    bits = toy.downstream("l0")(h0)
    predicted: dict[int, set[int]] = {i: set() for i in range(12)}
    for sa, i, sb, g in toy.edges():
        assert (sa, sb) == ("l0", "l1")
        predicted[i].add(g)
    for i in range(12):
        diff = (toy.downstream("l0")(h0 - b.inputs[:, i : i + 1] * e[i]) - bits).abs()
        flipped = {g for g in range(5) if diff[:, g].max() > 0.999}
        assert flipped == predicted[i], f"input {i}"
        untouched = [g for g in range(5) if g not in predicted[i]]
        assert diff[:, untouched].max() < 1e-5, f"input {i}"


def test_data_only_inputs_feed_no_gate() -> None:
    gt = make().ground_truth("l0")
    data_only = {i for i, m in enumerate(gt.is_model) if not m}
    assert data_only == {5, 6, 7, 11}
    assert all(i not in data_only for _, i, _, _ in make().edges())


def test_l1_site_downstream_is_the_readout_and_edges_default_to_empty() -> None:
    toy = make()
    b = toy.sample(100, seed=3)
    out = toy.downstream("l1")(toy.acts("l1", b.inputs))
    assert torch.allclose(out, b.features["l1"], atol=1e-5)
    assert build_toy("composed", {}, seed=0).edges() == []


def test_thresholds_sit_strictly_inside_the_exact_intervals() -> None:
    for op, k, lo, hi in [("and", 2, 0.6, 1.0), ("and", 3, 0.8, 1.0), ("or", 2, 0.5, 2.0)]:
        theta, gain = gate_threshold(op, k, lo, hi)
        true_min, false_max = (k * lo, (k - 1) * hi) if op == "and" else (lo, 0.0)
        assert false_max < theta < true_min
        assert gain * (true_min - theta) == pytest.approx(2.0)
        assert gain * (false_max - theta) == pytest.approx(-2.0)


def test_gate_parsing() -> None:
    assert parse_gate("0&2&5") == ("and", (0, 2, 5))
    assert parse_gate("1 | 3") == ("or", (1, 3))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"gates": ["0&1"]}, "antipodal pair"),
        ({"magnitude": [0.5, 1.0]}, "no exact threshold"),
        ({"gates": ["0&12"]}, ">= n_features"),
        ({"gates": ["0&2|3"]}, "one operator"),
        ({"gates": ["0"]}, "one operator"),
        ({"gates": ["2&2"]}, "repeats"),
        ({"n_features": 17}, "two features per axis"),
        ({"d_l1": 4}, "do not fit"),
    ],
)
def test_invalid_params_are_rejected_with_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        build_toy("circuit", params, seed=0)
    assert "\n" not in str(info.value)


def test_the_and_threshold_is_checked_exactly_at_its_boundary() -> None:
    """A 3-input AND on [0.8, 1.2]: 2 * 1.2 = 3 * 0.8 exactly, no threshold separates true
    from false (floats would say 2.4 < 2.4000000000000004); just inside is accepted."""
    on = {"gates": ["0&2&4"], "magnitude": [0.8, 1.2]}
    with pytest.raises(UserError, match="no exact threshold for '0&2&4'") as info:
        build_toy("circuit", on, seed=0)
    assert "got 2.4 vs 2.4" in str(info.value)
    toy = build_toy("circuit", {**on, "magnitude": [0.8, 1.1999999]}, seed=0)
    theta, _ = gate_threshold("and", 3, 0.8, 1.1999999)
    assert 2 * 1.1999999 < theta < 3 * 0.8
    assert isinstance(toy, Circuit)
