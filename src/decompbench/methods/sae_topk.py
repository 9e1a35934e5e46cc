"""`sae-topk` — sparse autoencoder keeping the k largest ReLU pre-activations per sample.

Loss: ||x - x_hat||^2 only; sparsity is fixed by construction (L0 <= k).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from decompbench.methods.sae import SAEMethod, SAEParams, SparseAutoencoder
from decompbench.registry import register_method


class TopKParams(SAEParams):
    k: int = Field(default=4, ge=1)

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


@register_method("sae-topk")
class SAETopK(SAEMethod):
    summary = "sparse autoencoder, top-k ReLU latents per sample"
    Params = TopKParams
    Module = TopKSAE
    params: TopKParams

    def make_module(self, d: int, gen: torch.Generator) -> TopKSAE:
        sae = TopKSAE(d, self.params.width, gen)
        sae.k = self.params.k
        return sae
