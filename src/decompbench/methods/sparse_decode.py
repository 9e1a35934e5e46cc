"""Sparse TopK decoding: forward and backward touch only the k active latents per sample.

A TopK SAE's latents ``z_BM`` have k non-zero entries per row, yet the dense decoder
``z_BM @ W_dec_MD`` costs 2·B·m·d FLOPs forward and twice that backward, and the dense
encoder backward (``x.T @ g_pre``) another 2·B·m·d although ``g_pre`` is zero outside the
same k entries. Here the B·k picks are a ``Picks`` pattern and:

* ``sparse_decode(vals_BK, picks, W_dec_MD)`` = sum_k vals[b,k] W_dec[idx[b,k]]
  (``embedding_bag`` with per-sample weights); backward: the gradient of each pick is a
  sampled dot product (``torch.sparse.sampled_addmm``), the decoder-weight gradient a
  sparse accumulation of rows (CSR matrix product, the transposed ``index_add``);
* ``pick_pre_acts(x_BD, W_enc_DM, c_M, pre_BM, picks)`` = pre[b, idx[b,k]] for
  pre = x W_enc + c already computed (dense forward, needed to choose the top k), whose
  backward accumulates the encoder gradient only into the k picked columns per sample.

Both are exact: the gradients equal the dense ones up to float summation order
(``tests/test_sparse_decode.py``). Work: 2·B·k·d per product instead of 2·B·m·d.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _csr(ptr: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor without torch's "beta" warning; patterns built here are valid by
    construction (row pointers from counts, in-range columns), so checks are skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(ptr, cols, vals, shape, check_invariants=False)


class Picks:
    """B·k (row, latent) pairs, latents sorted within each row, in both CSR layouts.

    ``by_row``: row b holds its k latents (offsets 0, k, 2k, ...). ``by_latent``: the
    same pairs grouped by latent (for accumulating weight gradients), with ``order``
    mapping them back to the row-major pair list.
    """

    def __init__(self, idx_BK: Tensor, m: int) -> None:
        self.idx_BK, (self.B, self.k), self.m = idx_BK, idx_BK.shape, m
        n, dev = idx_BK.numel(), idx_BK.device
        self.row_ptr = torch.arange(0, n + 1, self.k, device=dev)
        flat = idx_BK.reshape(-1)
        self.order = torch.argsort(flat, stable=True)
        self.latent_ptr = torch.zeros(m + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(flat, minlength=m), 0, out=self.latent_ptr[1:])
        self.latent_rows = torch.div(self.order, self.k, rounding_mode="floor")

    def by_row(self, vals_BK: Tensor) -> Tensor:
        """[B, m] CSR holding ``vals_BK`` at the picks."""
        return _csr(self.row_ptr, self.idx_BK.reshape(-1), vals_BK.reshape(-1), (self.B, self.m))

    def by_latent(self, vals_BK: Tensor) -> Tensor:
        """[m, B] CSR: the transpose of ``by_row``."""
        vals = vals_BK.reshape(-1)[self.order]
        return _csr(self.latent_ptr, self.latent_rows, vals, (self.m, self.B))

    def scatter_rows(self, w_BK: Tensor, y_BD: Tensor) -> Tensor:
        """[m, d]: row j = sum over picks (b, k) of latent j of w[b,k] y[b]."""
        return self.by_latent(w_BK) @ y_BD

    def sampled_dots(self, y_BD: Tensor, table_MD: Tensor) -> Tensor:
        """[B, k]: <y[b], table[idx[b,k]]>."""
        pattern = self.by_row(y_BD.new_zeros(self.B * self.k))
        out = torch.sparse.sampled_addmm(pattern, y_BD, table_MD.T, beta=0.0)
        return out.values().view(self.B, self.k)

    def counts(self, w_BK: Tensor) -> Tensor:
        """[m]: sum of ``w`` over the picks of each latent."""
        out = w_BK.new_zeros(self.m)
        return out.index_add_(0, self.idx_BK.reshape(-1), w_BK.reshape(-1))


def top_picks(pre_BM: Tensor, k: int, among: Tensor | None = None) -> tuple[Tensor, Picks]:
    """The k largest entries of each row of ``pre_BM`` (values, pattern), latents sorted.

    ``among``: latent indices to choose from (default all), e.g. the dead latents.
    """
    pool_BN = pre_BM if among is None else pre_BM.index_select(1, among)
    vals_BK, idx_BK = pool_BN.topk(k, dim=1, sorted=False)
    if among is not None:
        idx_BK = among[idx_BK]
    idx_BK, perm = idx_BK.sort(dim=1)
    return vals_BK.gather(1, perm), Picks(idx_BK, pre_BM.shape[1])


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, vals_BK: Tensor, W_dec_MD: Tensor, picks: Picks) -> Tensor:
        ctx.save_for_backward(vals_BK, W_dec_MD)
        ctx.picks = picks  # type: ignore[attr-defined]
        return F.embedding_bag(picks.idx_BK, W_dec_MD, per_sample_weights=vals_BK, mode="sum")

    @staticmethod
    def backward(ctx: Any, g_BD: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        vals_BK, W_dec_MD = ctx.saved_tensors
        picks: Picks = ctx.picks
        g_vals = picks.sampled_dots(g_BD, W_dec_MD) if ctx.needs_input_grad[0] else None
        g_W = picks.scatter_rows(vals_BK, g_BD) if ctx.needs_input_grad[1] else None
        return g_vals, g_W, None


class _PickPreActs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, x_BD: Tensor, W_enc_DM: Tensor, c_M: Tensor, pre_BM: Tensor,
        picks: Picks,
    ) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x_BD, W_enc_DM)
        ctx.picks = picks  # type: ignore[attr-defined]
        return pre_BM.gather(1, picks.idx_BK)

    @staticmethod
    def backward(
        ctx: Any, g_BK: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x_BD, W_enc_DM = ctx.saved_tensors
        picks: Picks = ctx.picks
        g_x = g_W = g_c = None
        if ctx.needs_input_grad[0]:
            table_MD = W_enc_DM.T.contiguous()
            g_x = F.embedding_bag(picks.idx_BK, table_MD, per_sample_weights=g_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            g_W = picks.scatter_rows(g_BK, x_BD).T
        if ctx.needs_input_grad[2]:
            g_c = picks.counts(g_BK)
        return g_x, g_W, g_c, None, None


def sparse_decode(vals_BK: Tensor, picks: Picks, W_dec_MD: Tensor) -> Tensor:
    """[B, d] = sum_k vals[b,k] W_dec[idx[b,k]]; gradients touch only the picked rows."""
    out: Tensor = _SparseDecode.apply(vals_BK, W_dec_MD, picks)
    return out


def pick_pre_acts(
    x_BD: Tensor, W_enc_DM: Tensor, c_M: Tensor, pre_BM: Tensor, picks: Picks
) -> Tensor:
    """[B, k] = pre[b, idx[b,k]] for ``pre_BM`` = x W_enc + c (computed by the caller).

    Differentiable in x, W_enc and c as if computed densely; ``pre_BM`` itself is a
    constant (its values must be those of x W_enc + c).
    """
    out: Tensor = _PickPreActs.apply(x_BD, W_enc_DM, c_M, pre_BM.detach(), picks)
    return out
