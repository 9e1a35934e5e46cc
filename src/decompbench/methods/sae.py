"""Shared sparse-autoencoder body: parameters, decoding, unit-norm decoder rows.

Variants (one file each) subclass ``SparseAutoencoder`` and define ``activation`` (how
pre-activations become latents) and ``sparsity_loss``. The fit/encode/decode plumbing of
every SAE variant is ``SAEMethod``.

Training features every variant gets, each a validated parameter in ``SAEParams``:

* ``normalize`` — scale inputs by one scalar so that E||x||^2 = d on the training data
  (so hyper-parameters such as an L1 or L0 coefficient mean the same on every site);
  ``decode`` undoes it and the loss is measured in the normalised units.
  Default off (the toys' activations are already of order one).
* ``init_b_dec`` — ``zeros`` (default; also the April-2024 Anthropic recipe), ``mean``,
  or ``geometric_median`` of the (normalised) training data (Bricken et al. 2023).
* the TopK family's auxiliary-k loss on dead latents (Gao et al. 2024), see
  ``auxk_loss``; on for the TopK variants, off (``aux_coef = 0``) otherwise.
* dead/dense latent tracking and the sparsity warm-up come from ``methods/train.py``:
  the module reports ``fire_rate_M`` after every loss and receives the dead mask and the
  warm-up factor through ``set_train_state``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from decompbench.methods.base import Decomposition
from decompbench.methods.train import TrainLog, TrainParams, TrainState, train
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

InitBDec = Literal["zeros", "mean", "geometric_median"]


class SAEParams(TrainParams):
    width: int = Field(default=32, ge=1)
    normalize: bool = Field(default=False, description="scale inputs so E||x||^2 = d")
    init_b_dec: InitBDec = "zeros"


def geometric_median(X_ND: Tensor, iters: int = 100, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    x = X_ND.double()
    y = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(dim=0) / w.sum()
        if (y_new - y).norm() <= tol * max(1.0, float(y.norm())):
            return y_new.to(X_ND.dtype)
        y = y_new
    return y.to(X_ND.dtype)


def auxk_loss(err_BD: Tensor, pre_BM: Tensor, dead_M: Tensor, W_dec_MD: Tensor, k: int) -> Tensor:
    """Gao et al. 2024: reconstruct the main residual from the top-k dead latents.

    ``err_BD`` is x - x_hat (treated as a constant target). Only the dead latents'
    ReLU pre-activations are used, so their encoder and decoder rows get a gradient.
    """
    n_dead = int(dead_M.sum())
    if n_dead == 0:
        return pre_BM.new_zeros(())
    k = min(k, n_dead)
    masked_BM = torch.where(dead_M, pre_BM, torch.full_like(pre_BM, float("-inf")))
    vals, idx = masked_BM.topk(k, dim=1)
    z_BM = torch.zeros_like(pre_BM).scatter(1, idx, torch.relu(vals))
    return (z_BM @ W_dec_MD - err_BD.detach()).pow(2).sum(dim=1).mean()


class SparseAutoencoder(nn.Module):
    """x_hat = act((x s - b_dec) W_enc + b_enc) W_dec / s + b_dec / s, unit decoder rows.

    ``s`` (buffer ``in_scale``) is 1 unless ``normalize`` is on; ``b_dec`` lives in the
    normalised units.
    """

    in_scale: Tensor  # buffer: the input scale s (1 unless ``normalize``)
    normalize: bool = False
    init_b_dec: InitBDec = "zeros"
    aux_k: int = 0
    aux_coef: float = 0.0

    def __init__(self, d: int, width: int, gen: torch.Generator) -> None:
        super().__init__()
        w_dec_MD = torch.randn(width, d, generator=gen)
        w_dec_MD /= w_dec_MD.norm(dim=1, keepdim=True)
        self.W_dec_MD = nn.Parameter(w_dec_MD)
        self.W_enc_DM = nn.Parameter(w_dec_MD.T.clone())
        self.b_enc_M = nn.Parameter(torch.zeros(width))
        self.b_dec_D = nn.Parameter(torch.zeros(d))
        self.register_buffer("in_scale", torch.ones(()))
        self.sparsity_scale = 1.0
        self.dead_M: Tensor | None = None
        self.fire_rate_M: Tensor | None = None

    # -- training hooks (see methods/train.py) ---------------------------------------
    @torch.no_grad()
    def prepare(self, x_ND: Tensor, *rest: Tensor) -> None:
        """Set the input scale and the decoder-bias initialisation from the training data."""
        if self.normalize:
            self.in_scale.fill_((x_ND.shape[1] / x_ND.pow(2).sum(dim=1).mean()).sqrt())
        xn_ND = x_ND * self.in_scale
        if self.init_b_dec == "mean":
            self.b_dec_D.copy_(xn_ND.mean(dim=0))
        elif self.init_b_dec == "geometric_median":
            self.b_dec_D.copy_(geometric_median(xn_ND))

    def set_train_state(self, state: TrainState) -> None:
        self.sparsity_scale = state.sparsity_scale
        self.dead_M = state.dead_M

    # -- the model ---------------------------------------------------------------------
    def pre_acts(self, x_BD: Tensor) -> Tensor:
        return (x_BD * self.in_scale - self.b_dec_D) @ self.W_enc_DM + self.b_enc_M

    def activation(self, pre_BM: Tensor) -> Tensor:
        raise NotImplementedError

    def sparsity_loss(self, z_BM: Tensor) -> Tensor:
        return z_BM.new_zeros(())

    def penalty(self, z_BM: Tensor, pre_BM: Tensor) -> Tensor:
        """The sparsity term of the loss; variants that need pre-activations override it."""
        return self.sparsity_loss(z_BM)

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x_BD))

    def decode_normalised(self, z_BM: Tensor) -> Tensor:
        return z_BM @ self.W_dec_MD + self.b_dec_D

    def decode(self, z_BM: Tensor) -> Tensor:
        return self.decode_normalised(z_BM) / self.in_scale

    def aux_loss(self, err_BD: Tensor, pre_BM: Tensor) -> Tensor:
        if self.aux_coef == 0 or self.dead_M is None or self.aux_k == 0:
            return pre_BM.new_zeros(())
        return self.aux_coef * auxk_loss(err_BD, pre_BM, self.dead_M, self.W_dec_MD, self.aux_k)

    def note_firing(self, z_BM: Tensor) -> None:
        """Record which latents fired on this minibatch (read by the training loop)."""
        self.fire_rate_M = (z_BM.detach() != 0).double().mean(dim=0)

    def loss(self, x_BD: Tensor) -> Tensor:
        pre_BM = self.pre_acts(x_BD)
        z_BM = self.activation(pre_BM)
        self.note_firing(z_BM)
        err_BD = x_BD * self.in_scale - self.decode_normalised(z_BM)
        mse = err_BD.pow(2).sum(dim=1).mean()
        sparsity = self.sparsity_scale * self.penalty(z_BM, pre_BM)
        return mse + sparsity + self.aux_loss(err_BD, pre_BM)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec_MD.div_(self.W_dec_MD.norm(dim=1, keepdim=True).clamp_min(1e-12))


class SAEMethod(Decomposition):
    """Fit/encode/decode for any ``SparseAutoencoder`` subclass named by ``Module``."""

    Module: ClassVar[type[SparseAutoencoder]]
    params: SAEParams

    def make_module(self, d: int, gen: torch.Generator) -> SparseAutoencoder:
        return self.Module(d, self.params.width, gen)

    def configure(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """Copy the shared training features from the params onto the module."""
        sae.normalize = self.params.normalize
        sae.init_b_dec = self.params.init_b_dec
        return sae

    def fit(self, site: ActivationSite, seed: int) -> None:
        sae = self.make_module(site.d, generator(seed, f"method/{self.name}/init"))
        self.sae = self.configure(sae)
        self.sae.train()
        self.log: TrainLog = train(
            self.sae, site.acts_ND, self.params, seed, f"{self.name} @ {site.name}"
        )
        self.sae.eval()

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
