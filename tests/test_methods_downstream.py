"""Downstream-aware methods: what they may see, refusals, and recovery on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decompbench import metrics as M
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.methods.downstream import (
    Readout,
    divergence,
    relu_leak,
)
from decompbench.methods.lib import jacobian_gram
from decompbench.methods.spd import WeightCalls, duplicates_removed, plan
from decompbench.registry import all_methods
from decompbench.toys.base import ActivationSite, DownstreamSite, build_toy, downstream_site
from tests.conftest import fast_params

DOWNSTREAM = sorted(n for n, c in all_methods().items() if c.access == "downstream_aware")
OURS = ["grad-pca", "lib", "sae-e2e", "sae-e2e-ds", "spd", "transcoder", "transcoder-skip"]


def test_every_method_of_this_family_is_registered_as_downstream_aware() -> None:
    assert set(OURS) <= set(DOWNSTREAM)


# -- the site view ---------------------------------------------------------------------------


def test_downstream_site_is_a_frozen_private_copy() -> None:
    toy = build_toy("composed", {"values": [2, 2], "d_model": 4}, seed=0)
    x = toy.acts("hidden", toy.sample(8, seed=0).inputs)
    view = downstream_site(toy, "hidden", x)
    assert view.next_layer is not None and view.output_kind == "mse"
    assert torch.equal(view.output(x), toy.downstream("hidden")(x))
    assert torch.equal(view.next_output(x), view.output(x))  # one layer: next = whole
    view.downstream.register_forward_hook(lambda _m, _i, out: out * 0)
    assert toy.downstream("hidden")(x).abs().sum() > 0  # the toy is untouched
    assert not any(p.requires_grad for p in view.downstream.parameters())


# -- pure helpers ---------------------------------------------------------------------------


def test_divergence_is_zero_on_equal_outputs_and_kl_for_logits() -> None:
    y = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(divergence(y, y, "mse")) == 0.0
    assert float(divergence(y, y + 5.0, "categorical")) == pytest.approx(0.0, abs=1e-6)
    # KL(target || pred) for target logits (0, 0) and pred logits (log 3, 0): by hand.
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    t, p = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert float(divergence(p, t, "categorical")) == pytest.approx(kl, rel=1e-5)
    assert float(divergence(y + 1, y, "mse")) == pytest.approx(3.0)


def test_readout_recovers_a_linear_map() -> None:
    g = torch.Generator().manual_seed(0)
    Z, W = torch.randn(200, 3, generator=g), torch.randn(3, 5, generator=g)
    r = Readout.fit(Z, Z @ W + 1.0)
    assert torch.allclose(r(Z), Z @ W + 1.0, atol=1e-4)


def test_relu_leak_keeps_the_forward_pass_and_leaks_the_gradient() -> None:
    net = nn.Sequential(nn.ReLU())
    x = torch.tensor([-2.0, 3.0], requires_grad=True)
    with relu_leak(net, 0.1):
        y = net(x)
        y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 3.0]))
    assert torch.allclose(x.grad, torch.tensor([0.1, 1.0]))  # type: ignore[arg-type]
    assert not net[0]._forward_hooks  # removed afterwards


class RawTMS(nn.Module):
    """ReLU(h W + b) with W a raw parameter used through ``@`` (no nn.Linear)."""

    def __init__(self, W_DF: torch.Tensor) -> None:
        super().__init__()
        self.W_DF = nn.Parameter(W_DF, requires_grad=False)
        self.b_F = nn.Parameter(torch.full((W_DF.shape[1],), -0.3), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.W_DF + self.b_F)


def test_weight_calls_find_raw_and_linear_products_with_their_read_side() -> None:
    lin = nn.Linear(3, 4)
    W = torch.randn(3, 5)
    x = torch.randn(2, 3)
    for module, name, read_dim in [(lin, "weight", 1), (RawTMS(W), "W_DF", 0)]:
        weight = dict(module.named_parameters())[name]
        mode = WeightCalls([weight])
        with mode, torch.no_grad():
            module(x)
        assert [(u.index, u.read_dim) for u in mode.uses] == [(0, read_dim)]
        assert torch.equal(mode.uses[0].input, x)


def test_weight_calls_refuse_other_uses_of_a_decomposed_weight() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(torch.ones(2, 2), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.W.sum()

    site = DownstreamSite("x", torch.randn(4, 2), downstream=Odd())
    with pytest.raises(UserError, match="only matmul/linear"):
        plan(site, None)


def test_spd_refuses_a_downstream_without_weight_matrices() -> None:
    site = DownstreamSite("x", torch.randn(8, 3), downstream=nn.ReLU())
    with pytest.raises(UserError, match="no weight matrix"):
        build_method("spd", fast_params("spd")).fit(site, seed=0)


def test_duplicates_removed_keeps_the_larger_of_a_split_mechanism() -> None:
    V = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])  # [in, C]: 0 and 1 parallel
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    keep = duplicates_removed(V, g, torch.tensor([1.0, 3.0, 1.0, 1.0]), tol=0.99)
    assert keep.tolist() == [1, 2, 3]  # 3 reads like 0 but is important elsewhere


# -- every method: refusal, and recovery on a tiny planted case --------------------------------


@pytest.mark.parametrize("name", OURS)
def test_refuses_an_activation_only_site(name: str) -> None:
    method = build_method(name, fast_params(name))
    with pytest.raises(UserError, match=r"downstream-aware.*activations only"):
        method.fit(ActivationSite("hidden", torch.randn(32, 4)), seed=0)


def planted_site(seed: int = 0) -> tuple[DownstreamSite, torch.Tensor]:
    """4 independent sparse features on orthonormal directions in 6 dims (different
    scales), each read by one ReLU unit with a small threshold."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    G = q[:4]
    scale = torch.tensor([1.0, 1.2, 1.4, 1.6])
    on = (torch.rand(4096, 4, generator=g) < 0.25).float()
    A = on * (0.5 + torch.rand(4096, 4, generator=g)) * scale
    lin = nn.Linear(6, 4)
    lin.weight.data = G.clone()
    lin.bias.data = -0.2 * scale  # each unit fires above 20 % of its feature's scale
    down = nn.Sequential(lin, nn.ReLU()).requires_grad_(False)
    return DownstreamSite("x", A @ G, downstream=down, next_layer=down), G


def chance_mcc(G: torch.Tensor, X: torch.Tensor, m: int) -> float:
    basis = M.span_basis(X)
    gen = torch.Generator().manual_seed(1)
    return sum(M.mcc(G, M.random_dictionary(m, basis, gen)) for _ in range(8)) / 8


SPARSE = {"width": 8, "steps": 800, "lr": 0.005, "l1": 0.03}
E2E = {"width": 4, "steps": 800, "lr": 0.005, "l1": 0.1}
PLANTED = {
    "grad-pca": {},
    "lib": {},
    "sae-e2e": E2E,
    "sae-e2e-ds": E2E,
    "spd": {"importance": 0.03, "steps": 600, "batch_size": 128, "components": 8},
    "transcoder": SPARSE,
    "transcoder-skip": SPARSE,
}


@pytest.mark.parametrize("name", OURS)
def test_fits_and_beats_chance_on_a_planted_case(name: str) -> None:
    site, G = planted_site()
    method = build_method(name, PLANTED[name])
    method.fit(site, seed=0)
    Z = method.encode(site.acts_ND)
    alive = M.alive_mask(Z)
    D = method.directions()[alive]
    assert D.shape[0] >= 1
    assert torch.allclose(D.norm(dim=1), torch.ones(D.shape[0]), atol=1e-4)
    score, chance = M.mcc(G, D), chance_mcc(G, site.acts_ND, D.shape[0])
    assert score > chance + 0.1, (score, chance)


def test_spd_recovers_the_columns_of_a_tiny_tms() -> None:
    """5 features in 2 dims (a pentagon), read back by ReLU(h W + b): SPD's read vectors
    at the hidden layer are the columns of W, one subcomponent each."""
    n = 5
    ang = torch.arange(n) * 2 * math.pi / n
    W_DF = torch.stack([ang.cos(), ang.sin()])
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4096, n, generator=g) < 0.05).float() * torch.rand(4096, n, generator=g)
    site = DownstreamSite("hidden", x @ W_DF.T, downstream=RawTMS(W_DF))
    spd = build_method("spd", {"importance": 0.1, "steps": 2000, "components": 10})
    spd.fit(site, seed=0)
    alive = M.alive_mask(spd.encode(site.acts_ND))
    D = spd.directions()[alive]
    assert M.mmcs(W_DF.T, D) > 0.99
    assert M.mcc(W_DF.T, D) > 0.99  # a distinct subcomponent per column
    assert n <= int(alive.sum()) <= n + 1  # at most one spare, rarely important piece


@pytest.mark.parametrize("r", [4, 6])  # r < O = 5: forward mode; r >= O: reverse mode
def test_lib_jacobian_gram_equals_the_per_sample_jacobians(r: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5)).eval()
    site = DownstreamSite("x", torch.randn(40, 6), downstream=net)
    x_ND, unwhiten_DR = torch.randn(40, 6), torch.randn(6, r).double()
    J_NOD = torch.func.vmap(torch.func.jacrev(lambda x: net(x[None])[0]))(x_ND).double()
    Jw_NOR = J_NOD @ unwhiten_DR
    want = torch.einsum("nor,nos->rs", Jw_NOR, Jw_NOR) / len(x_ND)
    got = jacobian_gram(site, x_ND, unwhiten_DR)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
