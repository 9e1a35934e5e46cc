"""Activation-only methods: planted-dictionary recovery, direct-sum detection, loop features."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from decompbench import metrics as M
from decompbench.bench.runner import site_data
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.methods.direct_sum import DirectSum, third_order_dependence
from decompbench.methods.sae import auxk_loss, geometric_median
from decompbench.methods.sae_batchtopk import batch_topk
from decompbench.methods.sae_jumprelu import jumprelu, step_l0
from decompbench.methods.sae_matryoshka import doubling_prefixes
from decompbench.methods.train import TrainParams, sparsity_factor
from decompbench.toys.base import ActivationSite, build_toy


def planted_nonneg(seed: int = 0, k: int = 8, d: int = 16, n: int = 8192):
    """k non-negative, overlapping unit directions (max |cos| about 0.6); sparse U[0,1]
    coefficients with firing probabilities 0.4 * 0.75^i (mean L0 about 1.4)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.rand(k, d, generator=g) * (torch.rand(k, d, generator=g) < 0.25)
    dirs[torch.arange(k), torch.arange(k)] += 1.5
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    p = 0.4 * 0.75 ** torch.arange(k)
    coef = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < p)
    return dirs, coef, coef @ dirs


SAE = {"width": 16, "steps": 1500, "batch_size": 128, "lr": 1e-2}
# (params, MCC it must reach). Measured on this data, seeds 0-1 (see the report):
# relu/topk/jumprelu/ica/nmf/direct-sum >= 0.93, batchtopk 0.93-0.96, matryoshka
# 0.82-0.83 (its short prefixes blend features on a dictionary this small).
RECOVERY: dict[str, tuple[dict[str, Any], float]] = {
    "sae-relu": ({**SAE, "l1": 0.05}, 0.9),
    "sae-topk": ({**SAE, "k": 2}, 0.9),
    "sae-batchtopk": ({**SAE, "k": 2}, 0.9),
    "sae-matryoshka": ({**SAE, "k": 2}, 0.75),
    "sae-jumprelu": (SAE, 0.9),
    "ica": ({}, 0.95),
    "nmf": ({"width": 8}, 0.95),
    "direct-sum": ({}, 0.95),
}


@pytest.mark.parametrize("name", sorted(RECOVERY))
def test_recovers_a_small_planted_dictionary(name: str) -> None:
    dirs, _, X = planted_nonneg()
    params, floor = RECOVERY[name]
    method = build_method(name, params)
    method.fit(ActivationSite("x", X), seed=0)
    assert M.mcc(dirs, method.directions()) >= floor


def composed_site(use: str, **extra: Any):
    toy = build_toy("composed", {"values": [4, 4], "d_model": 16, "use": use, **extra}, seed=0)
    return toy, site_data(toy, "hidden", 8192, 1024, 0)


@pytest.mark.parametrize("extra", [{}, {"magnitude": [0.6, 1.1], "p_absent": 0.2}])
def test_direct_sum_finds_the_factor_subspaces_of_composed(extra: dict[str, Any]) -> None:
    toy, data = composed_site("factored", **extra)
    method = build_method("direct-sum", {})
    assert isinstance(method, DirectSum)
    method.fit(ActivationSite("hidden", data.train_ND), seed=0)
    assert method.n_subspaces == 2
    assert method.extra_metrics() == {"n_subspaces": 2.0}
    G = toy.ground_truth("hidden").directions_KD.double()
    spans = [G[:4], G[4:]]
    for B in method.subspaces:
        # Each detected subspace lies inside exactly one factor's span.
        outside = [float((B - B @ S.T @ S).norm()) / B.shape[0] ** 0.5 for S in spans]
        assert min(outside) < 0.1 and max(outside) > 0.9


def test_direct_sum_split_is_identical_on_both_twins() -> None:
    _, df = composed_site("factored")
    _, dc = composed_site("composed")
    f, c = build_method("direct-sum", {}), build_method("direct-sum", {})
    f.fit(ActivationSite("hidden", df.train_ND), seed=0)
    c.fit(ActivationSite("hidden", dc.train_ND), seed=0)
    assert isinstance(f, DirectSum) and isinstance(c, DirectSum)
    assert f.groups == c.groups and torch.equal(f.directions(), c.directions())


def test_third_order_dependence_catches_pairwise_independent_triples() -> None:
    g = torch.Generator().manual_seed(0)
    s1 = torch.randint(2, (20000,), generator=g).double() * 2 - 1
    s2 = torch.randint(2, (20000,), generator=g).double() * 2 - 1
    s4 = torch.randint(2, (20000,), generator=g).double() * 2 - 1
    dep = third_order_dependence(torch.stack([s1, s2, s1 * s2, s4], dim=1))
    assert dep[0, 1] > 0.9 and dep[0, 2] > 0.9 and dep[1, 2] > 0.9
    assert dep[:3, 3].max() < 0.01


def test_nmf_refuses_negative_activations_with_one_line() -> None:
    _, data = composed_site("factored")
    with pytest.raises(UserError, match="non-negative") as info:
        build_method("nmf", {}).fit(ActivationSite("hidden", data.train_ND), seed=0)
    assert "\n" not in str(info.value)


# --- training-loop features -------------------------------------------------------------


def test_sparsity_warmup_ramps_linearly() -> None:
    assert [sparsity_factor(s, 10, 0.4) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert sparsity_factor(0, 10, 0.0) == 1.0


def test_geometric_median_of_a_square_with_an_outlier() -> None:
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    # Mean is (20.4, 20.4). On the diagonal (t, t) the unit vectors to the five points sum
    # to zero when 6 t^2 - 6 t + 1 = 0, i.e. t = (3 + sqrt 3) / 6 = 0.7887.
    gm = geometric_median(X)
    t = (3 + math.sqrt(3)) / 6
    assert gm.tolist() == pytest.approx([t, t], abs=1e-4)


def test_normalisation_scales_to_mean_squared_norm_d_and_is_undone() -> None:
    X = 3.0 * torch.randn(4096, 4, generator=torch.Generator().manual_seed(0))
    m = build_method("sae-topk", {"width": 8, "k": 2, "steps": 300, "normalize": True})
    m.fit(ActivationSite("x", X), seed=0)
    s = float(m.sae.in_scale)
    assert (X * s).pow(2).sum(dim=1).mean() == pytest.approx(4.0, rel=1e-4)
    assert s == pytest.approx(1 / 3, rel=0.05)
    assert M.fvu(X, m.decode(m.encode(X))) < 0.5  # decode returns the raw scale


def test_geometric_median_init_sets_the_decoder_bias() -> None:
    X = torch.rand(512, 3, generator=torch.Generator().manual_seed(0)) + 5.0
    m = build_method(
        "sae-relu", {"width": 4, "steps": 1, "lr": 1e-9, "init_b_dec": "geometric_median"}
    )
    m.fit(ActivationSite("x", X), seed=0)
    assert torch.allclose(m.sae.b_dec_D.detach(), geometric_median(X), atol=1e-4)


def test_dead_latents_are_counted_and_auxk_revives_them() -> None:
    X = torch.rand(2048, 4, generator=torch.Generator().manual_seed(0))
    base = {"width": 16, "k": 1, "steps": 400, "dead_after_steps": 50, "lr": 3e-3}
    # Latents 8-15 start with tiny encoder rows: positive pre-activations that never win
    # the top-1, so they die; only the aux-k loss gives them a gradient.
    runs = {}
    for coef in (0.0, 1.0):
        m = build_method("sae-topk", {**base, "aux_coef": coef})
        sae = m.make_module(4, torch.Generator().manual_seed(0))
        with torch.no_grad():
            sae.W_enc_DM[:, 8:] = 0.01 * sae.W_enc_DM[:, 8:].abs()
        m.make_module = lambda d, gen, sae=sae: sae  # type: ignore[method-assign]
        m.fit(ActivationSite("x", X), seed=0)
        runs[coef] = m.log
    assert max(runs[0.0].n_dead) >= 8 and runs[0.0].steps_since_fired_M is not None
    assert int(runs[0.0].steps_since_fired_M[8:].min()) > 300
    assert runs[1.0].n_dead[-1] < runs[0.0].n_dead[-1]


def test_auxk_loss_uses_only_dead_latents() -> None:
    W = torch.eye(3)
    pre = torch.tensor([[5.0, 1.0, 2.0]])
    err = torch.tensor([[0.0, 1.0, 2.0]])
    dead = torch.tensor([False, True, True])
    # Dead latents 1, 2 reconstruct err exactly; latent 0 (alive, largest) is ignored.
    assert auxk_loss(err, pre, dead, W, k=2) == 0.0
    assert auxk_loss(err, pre, dead, W, k=1) == pytest.approx(1.0)  # only latent 2 kept
    assert auxk_loss(err, pre, torch.zeros(3, dtype=torch.bool), W, k=2) == 0.0


def test_batch_topk_keeps_k_times_batch_largest() -> None:
    pre = torch.tensor([[3.0, 0.1, -1.0], [2.0, 1.0, 0.5]])
    assert torch.equal(batch_topk(pre, 1), torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))


def test_batchtopk_inference_threshold_gives_about_k_active() -> None:
    _, _, X = planted_nonneg()
    m = build_method("sae-batchtopk", {**SAE, "k": 2})
    m.fit(ActivationSite("x", X), seed=0)
    assert float(m.sae.threshold) > 0
    assert 1.5 < M.l0(m.encode(X)) < 2.5


def test_jumprelu_pseudo_gradients_match_the_paper() -> None:
    pre = torch.tensor([[0.50, 0.52, 0.40]])
    theta = torch.tensor([0.51, 0.51, 0.51], requires_grad=True)
    eps = 0.04  # kernel window: |pre - theta| < 0.02 -> latents 0 and 1
    jumprelu(pre, theta, eps).sum().backward()
    assert theta.grad is not None
    assert torch.allclose(theta.grad, torch.tensor([-0.51 / 0.04, -0.51 / 0.04, 0.0]))
    theta.grad = None
    step_l0(pre, theta, eps).backward()
    assert torch.allclose(theta.grad, torch.tensor([-1 / 0.04, -1 / 0.04, 0.0]))


def test_matryoshka_prefixes() -> None:
    assert doubling_prefixes(32, 4) == [4, 8, 16, 32]
    assert doubling_prefixes(6, 4) == [1, 3, 6]
    with pytest.raises(UserError, match="last prefix"):
        build_method("sae-matryoshka", {"width": 8, "prefixes": [2, 4]})


def test_train_params_reject_bad_values() -> None:
    with pytest.raises(UserError, match="sparsity_warmup_frac"):
        build_method("sae-relu", {"sparsity_warmup_frac": 2})
    assert TrainParams().dead_after_steps > 0 and not math.isnan(TrainParams().dense_rate)
