"""The baselines `random` and `weights`: what they read, and that they run on every toy."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from decompbench import metrics as M
from decompbench.bench.runner import site_data, site_view
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.registry import all_toys
from decompbench.toys.base import ActivationSite, NoFirstLinear, build_toy, downstream_site
from tests.conftest import SMALL, TRAINED_FAST

BASELINES = ["random", "weights"]


pytestmark = pytest.mark.usefixtures("toy_cache")


def test_the_table_covers_every_registered_toy() -> None:
    assert {name for name, _ in SMALL} == set(all_toys())


@pytest.mark.parametrize(("toy_name", "params"), SMALL, ids=[n for n, _ in SMALL])
def test_baselines_run_on_every_site(toy_name: str, params: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    toy = build_toy(toy_name, params, seed=0)
    for site in toy.sites:
        data = site_data(toy, site, 256, 64, seed=0)
        d = data.eval_ND.shape[1]
        for name in BASELINES:
            method = build_method(name, {})
            method.fit(site_view(toy, data, method), seed=0)
            Z = method.encode(data.eval_ND)
            X = method.decode(Z)
            D = method.directions()
            assert Z.shape[0] == 64 and X.shape == data.eval_ND.shape, (name, site)
            assert D.shape == (Z.shape[1], d) and Z.dtype == X.dtype == D.dtype == torch.float32
            assert torch.isfinite(Z).all() and torch.isfinite(X).all(), (name, site)
            assert torch.allclose(D.norm(dim=1), torch.ones(D.shape[0]), atol=1e-5)
        first = toy.first_linear(site)
        assert first.ndim == 2 and first.shape[1] == d, (toy_name, site)


def unit_rows_of(W: torch.Tensor) -> torch.Tensor:
    return (W.double() / W.double().norm(dim=1, keepdim=True)).float()


@pytest.mark.parametrize("use", ["factored", "composed"])
def test_weights_on_composed_are_the_normalised_rows_of_the_first_linear(use: str) -> None:
    toy = build_toy("composed", {"values": [3, 3], "d_model": 8, "use": use}, seed=0)
    data = site_data(toy, "hidden", 256, 64, seed=0)
    method = build_method("weights", {})
    method.fit(site_view(toy, data, method), seed=0)
    lin = toy.readout[0]
    assert isinstance(lin, nn.Linear)
    assert torch.equal(method.directions(), unit_rows_of(lin.weight))
    assert method.directions().shape[0] == (6 if use == "factored" else 9)
    # latents are the pre-activations with the normalised rows (no bias)
    Z = method.encode(data.eval_ND)
    assert torch.allclose(Z, data.eval_ND @ unit_rows_of(lin.weight).T, atol=1e-5)
    # the value directions span the data: the least-squares decode is exact
    assert M.fvu(data.eval_ND, method.decode(Z)) < 1e-8


def test_weights_on_tms_is_the_readout_transpose_and_the_identity_before_it() -> None:
    toy = build_toy("tms", {**TRAINED_FAST, "identity": True}, seed=0)
    W_HF = toy.net.W_HF.detach()
    assert torch.equal(toy.first_linear("identity"), W_HF.T)
    assert torch.equal(toy.first_linear("hidden"), torch.eye(2))


def test_planted_identity_readout_gives_the_identity() -> None:
    toy = build_toy("planted", {"n_features": 48, "d": 24}, seed=0)
    assert torch.equal(toy.first_linear("hidden"), torch.eye(24))


def test_zero_rows_are_dropped() -> None:
    from decompbench.methods.weights import unit_nonzero_rows

    W = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    expected = torch.tensor([[0.6, 0.8], [0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(unit_nonzero_rows(W), expected, rtol=0, atol=1e-15)


def test_a_downstream_without_a_linear_is_named_and_weights_refuses_it() -> None:
    toy = build_toy("composed", {"values": [2, 2], "d_model": 4}, seed=0)
    toy.downstream = lambda site: nn.ReLU()  # type: ignore[method-assign]
    with pytest.raises(NoFirstLinear, match=r"toy 'composed' site 'hidden'.*no nn.Linear"):
        toy.first_linear("hidden")
    view = downstream_site(toy, "hidden", torch.randn(16, 4))
    assert view.first_linear_OD is None
    with pytest.raises(UserError, match="offers no first linear map"):
        build_method("weights", {}).fit(view, seed=0)


def test_weights_refuses_an_activation_only_site() -> None:
    method = build_method("weights", {})
    assert method.access == "downstream_aware"
    with pytest.raises(UserError, match=r"downstream-aware.*activations only"):
        method.fit(ActivationSite("hidden", torch.randn(32, 4)), seed=0)


def test_random_sees_activations_only_and_spans_the_data() -> None:
    toy = build_toy("composed", {"values": [3, 3], "d_model": 8}, seed=0)
    data = site_data(toy, "hidden", 512, 128, seed=0)
    method = build_method("random", {})
    assert method.access == "activation_only"
    view = site_view(toy, data, method)
    assert type(view) is ActivationSite
    method.fit(view, seed=3)
    D = method.directions()
    basis = M.span_basis(data.train_ND)
    assert D.shape == (5, 8) == (basis.shape[0], 8)  # the data's rank: u_i + v_j span 5 dims
    in_span = (D.double() @ basis.T).norm(dim=1)  # norm of the projection on the span
    assert torch.allclose(in_span, torch.ones(5, dtype=torch.float64), atol=1e-6)
    assert M.fvu(data.eval_ND, method.decode(method.encode(data.eval_ND))) < 1e-8
    other = build_method("random", {"width": 3})
    other.fit(view, seed=4)
    assert other.directions().shape == (3, 8) and not torch.equal(other.directions(), D[:3])
