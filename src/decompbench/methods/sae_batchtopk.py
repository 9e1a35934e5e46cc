"""`sae-batchtopk` — BatchTopK sparse autoencoder (Bussmann, Leask & Nanda 2024).

Training: the k * batch largest ReLU pre-activations of the whole minibatch are kept
(so L0 averages k per sample but varies between samples), plus the auxiliary-k loss on
dead latents. Inference: batch membership must not matter, so latents fire as a
JumpReLU with one global threshold theta, estimated during training as an exponential
moving average (``threshold_momentum``) of the smallest kept activation per minibatch,
as the authors do.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.methods.sae import SAEMethod
from decompbench.methods.sae_topk import TopKParams, TopKSAE, configure_auxk
from decompbench.registry import register_method


class BatchTopKParams(TopKParams):
    threshold_momentum: float = Field(
        default=0.01, gt=0, le=1, description="EMA rate of the inference threshold"
    )


def batch_topk(pre_BM: Tensor, k: int) -> Tensor:
    """Keep the k * B largest ReLU pre-activations of the batch, zero the rest."""
    relu_BM = torch.relu(pre_BM)
    flat = relu_BM.flatten()
    vals, idx = flat.topk(min(k * pre_BM.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre_BM)


class BatchTopKSAE(TopKSAE):
    threshold: Tensor  # buffer: the inference threshold theta (< 0 until estimated)
    threshold_momentum: float = 0.01

    def __init__(self, d: int, width: int, gen: torch.Generator) -> None:
        super().__init__(d, width, gen)
        self.register_buffer("threshold", torch.full((), -1.0))  # < 0: not yet estimated

    @torch.no_grad()
    def update_threshold(self, z_BM: Tensor) -> None:
        kept = z_BM[z_BM > 0]
        if kept.numel() == 0:
            return
        low = kept.min()
        if self.threshold < 0:
            self.threshold.copy_(low)
        else:
            m = self.threshold_momentum
            self.threshold.mul_(1 - m).add_(m * low)

    def activation(self, pre_BM: Tensor) -> Tensor:
        if self.training:
            z_BM = batch_topk(pre_BM, self.k)
            self.update_threshold(z_BM)
            return z_BM
        return torch.relu(pre_BM) * (pre_BM > self.threshold.clamp_min(0))


@register_method("sae-batchtopk")
class SAEBatchTopK(SAEMethod):
    summary = "BatchTopK SAE: top k*batch over the minibatch; a learned threshold at inference"
    Params = BatchTopKParams
    Module = BatchTopKSAE
    params: BatchTopKParams

    def make_module(self, d: int, gen: torch.Generator) -> BatchTopKSAE:
        sae = BatchTopKSAE(d, self.params.width, gen)
        sae.k = self.params.k
        sae.threshold_momentum = self.params.threshold_momentum
        configure_auxk(sae, self.params, d)
        return sae
