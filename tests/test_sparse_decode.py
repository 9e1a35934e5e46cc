"""The sparse TopK step and the fused ReLU step equal the dense autograd ones."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from decompbench.methods.sae import SparseAutoencoder
from decompbench.methods.sae_relu import ReLUSAE
from decompbench.methods.sae_topk import TopKSAE
from decompbench.methods.sparse_decode import Picks, pick_pre_acts, sparse_decode, top_picks
from decompbench.methods.train import TrainParams, train


class FusedReLUSAE(ReLUSAE):
    """ReLUSAE declaring its penalty, so that the fused ReLU step can run."""

    def relu_l1(self) -> float | None:
        return self.l1


def _leaves(B: int, d: int, m: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, d), (d, m), (m,), (m, d)]
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def _sparse(x: Tensor, W_enc: Tensor, c: Tensor, W_dec: Tensor, k: int, among: Tensor | None):
    pre = (x @ W_enc + c).detach()
    _, picks = top_picks(pre, k, among)
    return sparse_decode(pick_pre_acts(x, W_enc, c, pre, picks).relu(), picks, W_dec)


def _dense(x: Tensor, W_enc: Tensor, c: Tensor, W_dec: Tensor, k: int, among: Tensor | None):
    pre = x @ W_enc + c
    if among is not None:
        keep = torch.zeros(pre.shape[1], dtype=torch.bool)
        keep[among] = True
        pre = torch.where(keep, pre, torch.full_like(pre, float("-inf")))
    vals, idx = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, idx, vals.relu()) @ W_dec


@pytest.mark.parametrize(("B", "d", "m", "k"), [(1, 3, 5, 1), (7, 4, 9, 3), (32, 8, 40, 8)])
@pytest.mark.parametrize("restrict", [False, True])
def test_sparse_gradients_equal_dense(B: int, d: int, m: int, k: int, restrict: bool) -> None:
    among = torch.arange(0, m, 2) if restrict else None
    k = min(k, m // 2) if restrict else k
    g_out = torch.randn(B, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    results = []
    for fn in (_sparse, _dense):
        leaves = _leaves(B, d, m, seed=B + m)
        out = fn(*leaves, k, among)
        out.backward(g_out)
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results, strict=True):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_picks_layouts_hold_the_same_pairs() -> None:
    idx = torch.tensor([[0, 2], [1, 2], [0, 3]])
    picks = Picks(idx, m=4)
    vals = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    dense = torch.tensor([[1.0, 0, 2, 0], [0, 3, 4, 0], [5, 0, 0, 6]])
    torch.testing.assert_close(picks.by_row(vals).to_dense(), dense)
    torch.testing.assert_close(picks.by_latent(vals).to_dense(), dense.T)
    torch.testing.assert_close(picks.counts(torch.ones(3, 2)), torch.tensor([2.0, 1, 2, 1]))


def _loss_and_grads(sae: SparseAutoencoder, path: str, x: Tensor):
    sae.step_path = path  # type: ignore[assignment]
    sae.zero_grad(set_to_none=True)
    loss = sae.loss(x)
    loss.backward()
    assert sae.fire_rate_M is not None
    grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, sae.fire_rate_M.clone()


def _module(kind: str, dead: bool) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(3)
    sae: SparseAutoencoder
    if kind == "topk":
        sae = TopKSAE(6, 24, g)
        sae.k, sae.aux_k, sae.aux_coef = 4, 5, 0.5
        sae.dead_M = (torch.arange(24) % 3 == 0) if dead else None
    else:
        sae = FusedReLUSAE(6, 24, g)
        sae.l1, sae.sparsity_scale = 0.3, 0.5
    with torch.no_grad():
        sae.b_enc_M.normal_(generator=g)
        sae.b_dec_D.normal_(generator=g)
        sae.in_scale.fill_(1.5)
    return sae


@pytest.mark.parametrize(("kind", "dead"), [("topk", False), ("topk", True), ("relu", False)])
def test_fast_step_equals_generic_step(kind: str, dead: bool) -> None:
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(4))
    sae = _module(kind, dead)
    loss_g, grads_g, rate_g = _loss_and_grads(sae, "generic", x)
    loss_f, grads_f, rate_f = _loss_and_grads(sae, "fast", x)
    assert loss_f == pytest.approx(loss_g, rel=1e-5)
    assert grads_f.keys() == grads_g.keys()
    for name in grads_g:
        torch.testing.assert_close(grads_f[name], grads_g[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rate_f, rate_g)


def test_auto_takes_generic_step_on_toy_sizes_and_under_no_grad() -> None:
    sae = _module("topk", dead=False)
    assert not sae.fast_step(torch.zeros(64, 6))
    sae.step_path = "fast"
    assert sae.fast_step(torch.zeros(64, 6))
    with torch.no_grad():
        assert not sae.fast_step(torch.zeros(64, 6))


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_fast_path_gives_the_same_loss_trajectory(kind: str) -> None:
    x = torch.randn(512, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cfg = TrainParams(steps=60, batch_size=32, lr=1e-2)
    losses = {}
    for path in ("generic", "fast"):
        sae = _module(kind, dead=False).double()
        sae.step_path = path  # type: ignore[assignment]
        losses[path] = train(sae, x, cfg, seed=0, label="t").losses
    assert losses["fast"] == pytest.approx(losses["generic"], rel=1e-9)
    assert losses["fast"][-1] < losses["fast"][0]


def test_fused_relu_step_refuses_a_stale_graph() -> None:
    """Its buffers are reused: backward through an older step's loss must fail loudly."""
    sae = _module("relu", dead=False)
    sae.step_path = "fast"
    x = torch.randn(8, 6)
    first = sae.loss(x)
    sae.loss(x + 1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
    sae.eval()
    assert sae.step_buffers == {}
