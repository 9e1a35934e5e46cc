"""`superposed-circuits`: the example's ratios, exact functions, edges by ablation, and the
null space that makes the per-function truth a construction-level choice."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.superposed_circuits import SuperposedCircuits, function_weights, knots


def make(**params: object) -> SuperposedCircuits:
    toy = build_toy("superposed-circuits", params, seed=5)
    assert isinstance(toy, SuperposedCircuits)
    return toy


def test_ratios_of_the_example() -> None:
    toy = make()
    c = toy.c_FN
    assert (toy.n_inputs, toy.n_neurons, toy.n_functions, toy.params.d_resid) == (12, 48, 96, 6)
    assert toy.n_functions == 2 * toy.n_neurons and toy.params.d_resid < toy.n_neurons
    assert ((c != 0).sum(dim=1) == 3).all()  # each function uses a fixed handful of neurons
    assert ((c != 0).sum(dim=0) == 6).all()  # each neuron serves 2s functions
    u = c / c.norm(dim=1, keepdim=True)
    cos = (u @ u.T).abs() - torch.eye(96)
    assert cos.max() < 0.99  # no two functions are the same up to scale


def test_neurons_compute_exact_ramps_of_their_input() -> None:
    toy = make(p_active=0.3)
    b = toy.sample(2000, seed=0)
    x = b.inputs
    assert not ((x[:, 0::2] > 0) & (x[:, 1::2] > 0)).any()  # partners never together
    h = toy.acts("neurons", x)
    expected = torch.relu(x.repeat_interleave(4, dim=1) - knots(4).repeat(12))
    assert torch.allclose(h, expected, atol=1e-6)


def test_function_features_are_exact_piecewise_linear_functions_of_their_input() -> None:
    toy = make(p_active=0.3)
    b = toy.sample(1000, seed=1)
    ramps = torch.relu(b.inputs[:, :, None] - knots(4))  # [n, inputs, K]
    expected = torch.einsum("nak,jk->naj", ramps, function_weights(4, 3)).flatten(1)
    assert torch.allclose(b.features["neurons"], expected, atol=1e-6)


def test_the_write_is_the_sum_of_function_values_along_their_output_directions() -> None:
    toy = make(p_active=0.3)
    b = toy.sample(500, seed=2)
    assert torch.allclose(toy(b.inputs), b.features["neurons"] @ toy.out_FD, atol=1e-5)


def test_ablating_an_input_changes_exactly_the_functions_its_edges_predict() -> None:
    toy = make(p_active=0.3)
    b = toy.sample(3000, seed=3)
    e = toy.ground_truth("resid").directions_KD
    r = toy.acts("resid", b.inputs)
    f = toy.acts("neurons", b.inputs) @ toy.c_FN.T
    predicted: dict[int, set[int]] = {a: set() for a in range(12)}
    for sa, a, sb, i in toy.edges():
        assert (sa, sb) == ("resid", "neurons")
        predicted[a].add(i)
    for a in range(12):
        h_ablated = torch.relu(toy.mlp_in(r - b.inputs[:, a : a + 1] * e[a]))
        diff = (h_ablated @ toy.c_FN.T - f).abs()
        changed = {i for i in range(96) if diff[:, i].max() > 1e-4}
        assert changed == predicted[a], f"input {a}"


def test_the_output_has_a_null_space_that_moves_the_function_values() -> None:
    """Why the per-function truth is a choice: W_out alone does not determine it."""
    toy = make()
    w_out = toy.mlp_out.weight.data
    null = torch.linalg.svd(w_out, full_matrices=True).Vh[toy.params.d_resid :]
    assert null.shape[0] == 48 - 6
    h = toy.acts("neurons", toy.sample(200, seed=4).inputs)
    moved = h + 0.5 * null[0]
    assert torch.allclose(toy.downstream("neurons")(moved), toy.downstream("neurons")(h),
                          atol=1e-5)  # fmt: skip
    assert ((moved - h) @ toy.c_FN.T).abs().max() > 0.01


def test_invalid_params_are_rejected_with_one_line() -> None:
    with pytest.raises(UserError, match="must be below") as info:
        build_toy("superposed-circuits", {"neurons_per_input": 3, "neurons_per_function": 3}, 0)
    assert "\n" not in str(info.value)
