"""`sae-topk` — sparse autoencoder keeping the k largest ReLU pre-activations per sample.

Loss: ||x - x_hat||^2, plus the auxiliary-k loss of Gao et al. (2024) on dead latents
(``aux_coef`` = 1/32 and ``aux_k`` = d/2 as there; set ``aux_coef: 0`` to switch it off).
Sparsity is fixed by construction (L0 <= k).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from decompbench.methods.sae import SAEMethod, SAEParams, SparseAutoencoder
from decompbench.registry import register_method


class TopKParams(SAEParams):
    k: int = Field(default=4, ge=1)
    aux_k: int | None = Field(default=None, ge=1, description="dead latents used; None: d/2")
    aux_coef: float = Field(default=1 / 32, ge=0, description="weight of the aux-k loss")

    @model_validator(mode="after")
    def _k_fits(self) -> TopKParams:
        if self.k > self.width:
            raise ValueError(f"k = {self.k} exceeds width = {self.width}")
        return self


class TopKSAE(SparseAutoencoder):
    k: int = 1

    def activation(self, pre_BM: Tensor) -> Tensor:
        vals, idx = torch.relu(pre_BM).topk(self.k, dim=1)
        return torch.zeros_like(pre_BM).scatter(1, idx, vals)


def configure_auxk(sae: SparseAutoencoder, params: TopKParams, d: int) -> None:
    sae.aux_k = params.aux_k if params.aux_k is not None else max(1, d // 2)
    sae.aux_coef = params.aux_coef


@register_method("sae-topk")
class SAETopK(SAEMethod):
    summary = "sparse autoencoder, top-k ReLU latents per sample"
    Params = TopKParams
    Module = TopKSAE
    params: TopKParams

    def make_module(self, d: int, gen: torch.Generator) -> TopKSAE:
        sae = TopKSAE(d, self.params.width, gen)
        sae.k = self.params.k
        configure_auxk(sae, self.params, d)
        return sae
