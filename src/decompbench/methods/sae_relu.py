"""`sae-relu` — the standard sparse autoencoder: ReLU latents and an L1 penalty.

Loss: ||x - x_hat||^2 + l1 * sum_i |z_i| (decoder rows kept at unit norm, so the L1 term
cannot be dodged by shrinking codes and growing decoder rows).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.methods.sae import SAEMethod, SAEParams, SparseAutoencoder
from decompbench.registry import register_method


class ReLUParams(SAEParams):
    l1: float = Field(default=0.1, ge=0, description="L1 penalty coefficient on the latents")


class ReLUSAE(SparseAutoencoder):
    l1: float = 0.0

    def activation(self, pre_BM: Tensor) -> Tensor:
        return torch.relu(pre_BM)

    def sparsity_loss(self, z_BM: Tensor) -> Tensor:
        return self.l1 * z_BM.abs().sum(dim=1).mean()

    def relu_l1(self) -> float | None:
        """ReLU latents, penalty l1 · mean sum |z| = l1 · mean sum z: the fused step applies."""
        return self.l1


@register_method("sae-relu")
class SAERelu(SAEMethod):
    summary = "sparse autoencoder, ReLU latents, L1 penalty"
    Params = ReLUParams
    Module = ReLUSAE
    params: ReLUParams

    def make_module(self, d: int, gen: torch.Generator) -> ReLUSAE:
        sae = ReLUSAE(d, self.params.width, gen)
        sae.l1 = self.params.l1
        return sae
