"""`sae-topk` — sparse autoencoder keeping the k largest ReLU pre-activations per sample.

Loss: ||x - x_hat||^2, plus the auxiliary-k loss of Gao et al. (2024) on dead latents
(``aux_coef`` = 1/32 and ``aux_k`` = d/2 as there; set ``aux_coef: 0`` to switch it off).
Sparsity is fixed by construction (L0 <= k).

Training step: on large minibatches (see ``FAST_MIN_ELEMENTS`` in ``sae.py``) the decoder,
its backward and the encoder's backward touch only the k active latents per sample
(``methods/sparse_decode.py``); only the encoder's forward matmul stays dense, since every
pre-activation is needed to choose the top k. Same loss and gradients as the dense step
up to float rounding.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from decompbench.methods.sae import SAEMethod, SAEParams, SparseAutoencoder, reused_buffer
from decompbench.methods.sparse_decode import pick_pre_acts, sparse_decode, top_picks
from decompbench.registry import register_method


class TopKParams(SAEParams):
    k: int = Field(default=4, ge=1, description="active latents per sample")
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

    def sparse_step(self, x_BD: Tensor) -> bool:
        """The sparse step reproduces the loss of this class only (subclasses that change
        the activation, e.g. BatchTopK, or patch it on the instance, train densely)."""
        return type(self) is TopKSAE and "activation" not in vars(self) and self.fast_step(x_BD)

    def loss(self, x_BD: Tensor) -> Tensor:
        if not self.sparse_step(x_BD):
            return super().loss(x_BD)
        xs_BD = x_BD * self.in_scale
        c_M = self.folded_bias()
        with torch.no_grad():
            shape = (x_BD.shape[0], self.b_enc_M.shape[0])
            pre_BM = torch.addmm(
                c_M, xs_BD, self.W_enc_DM, out=reused_buffer(self.step_buffers, "pre", shape, xs_BD)
            )
        _, picks = top_picks(pre_BM, self.k)
        vals_BK = pick_pre_acts(xs_BD, self.W_enc_DM, c_M, pre_BM, picks).relu()
        fired_M = picks.counts((vals_BK.detach() > 0).to(xs_BD.dtype))
        self.fire_rate_M = fired_M.double() / x_BD.shape[0]
        err_BD = xs_BD - (sparse_decode(vals_BK, picks, self.W_dec_MD) + self.b_dec_D)
        mse = err_BD.pow(2).sum(dim=1).mean()
        return mse + self.sparse_aux_loss(xs_BD, c_M, pre_BM, err_BD)

    def sparse_aux_loss(self, xs_BD: Tensor, c_M: Tensor, pre_BM: Tensor, err_BD: Tensor) -> Tensor:
        """``auxk_loss`` (sae.py) on the sparse path: the top-k dead latents' ReLU
        pre-activations reconstruct the main residual."""
        if self.aux_coef == 0 or self.dead_M is None or self.aux_k == 0:
            return err_BD.new_zeros(())
        dead_idx = self.dead_M.nonzero().squeeze(1)
        if dead_idx.numel() == 0:
            return err_BD.new_zeros(())
        _, picks = top_picks(pre_BM, min(self.aux_k, dead_idx.numel()), among=dead_idx)
        vals_BK = pick_pre_acts(xs_BD, self.W_enc_DM, c_M, pre_BM, picks).relu()
        recon_BD = sparse_decode(vals_BK, picks, self.W_dec_MD)
        return self.aux_coef * (recon_BD - err_BD.detach()).pow(2).sum(dim=1).mean()


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
