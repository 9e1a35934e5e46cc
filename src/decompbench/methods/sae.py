"""Shared sparse-autoencoder body: parameters, decoding, unit-norm decoder rows.

Variants (one file each) subclass ``SparseAutoencoder`` and define ``activation`` (how
pre-activations become latents) and ``sparsity_loss``. The fit/encode/decode plumbing of
every SAE variant is ``SAEMethod``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from decompbench.methods.base import Decomposition
from decompbench.methods.train import TrainParams, train
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite


class SAEParams(TrainParams):
    width: int = Field(default=32, ge=1)


class SparseAutoencoder(nn.Module):
    """x_hat = act((x - b_dec) W_enc + b_enc) W_dec + b_dec, decoder rows of unit norm."""

    def __init__(self, d: int, width: int, gen: torch.Generator) -> None:
        super().__init__()
        w_dec_MD = torch.randn(width, d, generator=gen)
        w_dec_MD /= w_dec_MD.norm(dim=1, keepdim=True)
        self.W_dec_MD = nn.Parameter(w_dec_MD)
        self.W_enc_DM = nn.Parameter(w_dec_MD.T.clone())
        self.b_enc_M = nn.Parameter(torch.zeros(width))
        self.b_dec_D = nn.Parameter(torch.zeros(d))

    def pre_acts(self, x_BD: Tensor) -> Tensor:
        return (x_BD - self.b_dec_D) @ self.W_enc_DM + self.b_enc_M

    def activation(self, pre_BM: Tensor) -> Tensor:
        raise NotImplementedError

    def sparsity_loss(self, z_BM: Tensor) -> Tensor:
        return z_BM.new_zeros(())

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x_BD))

    def decode(self, z_BM: Tensor) -> Tensor:
        return z_BM @ self.W_dec_MD + self.b_dec_D

    def loss(self, x_BD: Tensor) -> Tensor:
        z_BM = self.encode(x_BD)
        mse = (self.decode(z_BM) - x_BD).pow(2).sum(dim=1).mean()
        return mse + self.sparsity_loss(z_BM)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec_MD.div_(self.W_dec_MD.norm(dim=1, keepdim=True).clamp_min(1e-12))


class SAEMethod(Decomposition):
    """Fit/encode/decode for any ``SparseAutoencoder`` subclass named by ``Module``."""

    Module: ClassVar[type[SparseAutoencoder]]
    params: SAEParams

    def make_module(self, d: int, gen: torch.Generator) -> SparseAutoencoder:
        return self.Module(d, self.params.width, gen)

    def fit(self, site: ActivationSite, seed: int) -> None:
        self.sae = self.make_module(site.d, generator(seed, f"method/{self.name}/init"))
        train(self.sae, site.acts_ND, self.params, seed, f"{self.name} @ {site.name}")

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        return self.sae.encode(acts_ND)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return self.sae.decode(latents_NM)

    @torch.no_grad()
    def directions(self) -> Tensor:
        w = self.sae.W_dec_MD.detach()
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
