"""`sae-matryoshka` — Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

The latents are split into nested prefixes m_1 < m_2 < ... < m_P = width. The loss is
the mean over prefixes of ||x - (z[:m_p] W_dec[:m_p] + b_dec)||^2: the first m_1 latents
must reconstruct x on their own, the next ones refine it. General features then settle
in the early prefixes, and a child feature cannot absorb its parent's direction without
hurting the short prefixes' reconstruction, which is why Matryoshka SAEs absorb less.
Latents are BatchTopK (training) / one learned threshold (inference), with the
auxiliary-k loss, exactly as ``sae-batchtopk``.

``prefixes``: explicit sizes, or by default ``n_prefixes`` sizes doubling up to width
(e.g. width 32, 4 prefixes: 4, 8, 16, 32).
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field, model_validator
from torch import Tensor

from decompbench.methods.sae import SAEMethod
from decompbench.methods.sae_batchtopk import BatchTopKParams, BatchTopKSAE
from decompbench.methods.sae_topk import configure_auxk
from decompbench.registry import register_method


class MatryoshkaParams(BatchTopKParams):
    prefixes: list[int] | None = Field(
        default=None,
        min_length=1,
        description="explicit nested prefix sizes (last = width); default: n_prefixes doublings",
    )
    n_prefixes: int = Field(
        default=4, ge=1, description="number of nested prefixes, doubling up to width"
    )

    @model_validator(mode="after")
    def _check_prefixes(self) -> MatryoshkaParams:
        p = self.prefixes
        if p is not None and (any(b <= a for a, b in itertools.pairwise(p)) or p[0] < 1):
            raise ValueError(f"prefixes must be increasing positive sizes, got {p}")
        if p is not None and p[-1] != self.width:
            raise ValueError(f"the last prefix must equal width = {self.width}, got {p[-1]}")
        return self


def doubling_prefixes(width: int, n: int) -> list[int]:
    """``n`` sizes doubling up to ``width`` (duplicates from small widths removed)."""
    sizes = [max(1, width // 2 ** (n - 1 - i)) for i in range(n)]
    return sorted(set(sizes))


def nested_mse(target_BD: Tensor, z_BM: Tensor, W_dec_MD: Tensor, prefixes: list[int]) -> Tensor:
    """Mean over prefixes of the squared error of the prefix reconstruction.

    ``target_BD`` is x - b_dec (normalised units): the target the latents must explain.
    """
    losses = []
    for m in prefixes:
        recon_BD = z_BM[:, :m] @ W_dec_MD[:m]
        losses.append((target_BD - recon_BD).pow(2).sum(dim=1).mean())
    return torch.stack(losses).mean()


class MatryoshkaSAE(BatchTopKSAE):
    prefixes: tuple[int, ...] = ()

    def loss(self, x_BD: Tensor) -> Tensor:
        pre_BM = self.pre_acts(x_BD)
        z_BM = self.activation(pre_BM)
        self.note_firing(z_BM)
        target_BD = x_BD * self.in_scale - self.b_dec_D
        nested = nested_mse(target_BD, z_BM, self.W_dec_MD, list(self.prefixes))
        err_BD = target_BD - z_BM @ self.W_dec_MD
        return nested + self.aux_loss(err_BD, pre_BM)


@register_method("sae-matryoshka")
class SAEMatryoshka(SAEMethod):
    summary = "Matryoshka BatchTopK SAE: nested prefixes each reconstruct the input"
    Params = MatryoshkaParams
    Module = MatryoshkaSAE
    params: MatryoshkaParams

    def make_module(self, d: int, gen: torch.Generator) -> MatryoshkaSAE:
        p = self.params
        sae = MatryoshkaSAE(d, p.width, gen)
        sae.k = p.k
        sae.threshold_momentum = p.threshold_momentum
        sae.prefixes = tuple(p.prefixes or doubling_prefixes(p.width, p.n_prefixes))
        configure_auxk(sae, p, d)
        return sae
