"""`transcoder` — a sparse code of the site that predicts the next layer's output.

    z = act(x W_enc + b_enc),   y_hat = z W_dec + b_dec  (+ x W_skip for `transcoder-skip`)

trained on pairs (site activation x, next layer's output y = next_layer(x)) with loss
||y - y_hat||^2 / Var(y) + sparsity. Sparsity is an L1 penalty ``l1 * sum |z|`` on ReLU
latents (decoder rows kept at unit norm), or TopK when ``k`` is set. The latents are
features *of the computation* from the site to the next layer, not of the site alone.

Selection (no ground truth): ``l1`` may be a list; every value is fitted on 90 % of the
training pairs and, among the fits whose normalised prediction error on the other 10 %
stays within ``tol``, the one with the smallest held-out L0 is kept.

Directions at the site: a transcoder has no decoder into the site, and its encoder rows
are unconstrained outside the data's span, so each latent reports its *activation-weighted
input centroid* sum_n z_n x_n / sum_n z_n over the training data (a latent that never
fires falls back to its encoder row projected onto the data's span). The site
reconstruction is a least-squares readout of the latents. Encoder rows start at random
centred training inputs, so every latent fires from the start.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.downstream import (
    Readout,
    SparsityChoice,
    choose_sparsest,
    holdout_split,
    output_scale,
    require_downstream,
)
from decompbench.methods.train import TrainLog, TrainParams, train
from decompbench.metrics import span_basis
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite


class TranscoderParams(TrainParams, SparsityChoice):
    """Training-loop settings plus the width/sparsity sweep."""


class TranscoderModule(nn.Module):
    """Encoder from the site, decoder (unit rows) to the next layer, optional linear skip."""

    def __init__(self, d: int, o: int, width: int, skip: bool, gen: torch.Generator) -> None:
        super().__init__()
        w_enc_DM = torch.randn(d, width, generator=gen)
        self.W_enc_DM = nn.Parameter(w_enc_DM / w_enc_DM.norm(dim=0, keepdim=True))
        self.b_enc_M = nn.Parameter(torch.zeros(width))
        w_dec_MO = torch.randn(width, o, generator=gen)
        self.W_dec_MO = nn.Parameter(w_dec_MO / w_dec_MO.norm(dim=1, keepdim=True))
        self.b_dec_O = nn.Parameter(torch.zeros(o))
        self.W_skip_DO = nn.Parameter(torch.zeros(d, o)) if skip else None
        self.l1, self.scale = 0.0, 1.0
        self.k: int | None = None
        self.fire_rate_M: Tensor | None = None
        self.gen = gen

    @torch.no_grad()
    def prepare(self, x_ND: Tensor, y_NO: Tensor) -> None:
        """Encoder rows start at random centred training inputs, scaled to the targets'
        spread, so every latent fires on some data from the first step; b_dec = mean(y)."""
        nonzero = torch.nonzero(x_ND.norm(dim=1) > 0).flatten()
        if nonzero.numel() == 0:
            return
        pick = nonzero[
            torch.randint(nonzero.numel(), (self.W_enc_DM.shape[1],), generator=self.gen)
        ]
        rows = x_ND[pick] - x_ND.mean(dim=0)
        self.W_enc_DM.copy_((rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).T)
        # Start with codes of the targets' size, so the first steps are not spent shrinking.
        spread_y = (y_NO - y_NO.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt()
        spread_x = (x_ND - x_ND.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)
        self.W_enc_DM.mul_(spread_y / spread_x)
        self.b_dec_O.copy_(y_NO.mean(dim=0))

    def encode(self, x_BD: Tensor) -> Tensor:
        pre_BM = torch.relu(x_BD @ self.W_enc_DM + self.b_enc_M)
        if self.k is None:
            return pre_BM
        vals, idx = pre_BM.topk(self.k, dim=1)
        return torch.zeros_like(pre_BM).scatter(1, idx, vals)

    def predict(self, x_BD: Tensor, z_BM: Tensor) -> Tensor:
        y_BO = z_BM @ self.W_dec_MO + self.b_dec_O
        return y_BO if self.W_skip_DO is None else y_BO + x_BD @ self.W_skip_DO

    def error(self, x_BD: Tensor, y_BO: Tensor) -> Tensor:
        z_BM = self.encode(x_BD)
        return (self.predict(x_BD, z_BM) - y_BO).pow(2).sum(dim=1).mean() / self.scale

    def loss(self, x_BD: Tensor, y_BO: Tensor) -> Tensor:
        z_BM = self.encode(x_BD)
        self.fire_rate_M = (z_BM.detach() != 0).double().mean(dim=0)
        err = (self.predict(x_BD, z_BM) - y_BO).pow(2).sum(dim=1).mean() / self.scale
        if self.k is not None:
            return err
        return err + self.l1 * z_BM.abs().sum(dim=1).mean()

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec_MO.div_(self.W_dec_MO.norm(dim=1, keepdim=True).clamp_min(1e-12))


@register_method("transcoder")
class Transcoder(Decomposition):
    summary = "sparse code of the site trained to predict the next layer's output"
    access = "downstream_aware"
    directions_kind = "activation-weighted input centroids"
    Params = TranscoderParams
    params: TranscoderParams
    skip = False

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        with torch.no_grad():
            y_NO = ds.next_output(ds.acts_ND).detach()
        if y_NO.ndim != 2 or y_NO.shape[0] != ds.acts_ND.shape[0]:
            raise UserError(f"{self.name}: next layer output of '{ds.name}' is not [n, out]")
        x_tr, x_ho = holdout_split(ds.acts_ND, self.params.holdout_frac, seed)
        y_tr, y_ho = holdout_split(y_NO, self.params.holdout_frac, seed)
        l1s = self.params.l1 if isinstance(self.params.l1, list) else [self.params.l1]
        fits, logs, self.selection = [], [], []
        for l1 in sorted(l1s):
            tc, log = self._fit_one(x_tr, y_tr, l1, seed, ds.name)
            logs.append(log)
            with torch.no_grad():
                err, l0 = (
                    float(tc.error(x_ho, y_ho)),
                    float((tc.encode(x_ho) > 0).float().sum(1).mean()),
                )
            self.selection.append({"l1": l1, "error": err, "l0": l0})
            fits.append(tc)
        self.chosen = choose_sparsest(
            [s["error"] for s in self.selection], [s["l0"] for s in self.selection], self.params.tol
        )
        self.tc, self.log = fits[self.chosen], logs[self.chosen]
        self._directions_MD = self._site_directions(ds.acts_ND)
        self.readout = Readout.fit(self.encode(ds.acts_ND), ds.acts_ND)

    def _fit_one(
        self, x: Tensor, y: Tensor, l1: float, seed: int, where: str
    ) -> tuple[TranscoderModule, TrainLog]:
        gen = generator(seed, f"method/{self.name}/init")
        tc = TranscoderModule(x.shape[1], y.shape[1], self.params.width, self.skip, gen)
        tc.l1, tc.k, tc.scale = l1, self.params.k, output_scale(y, "mse")
        log = train(tc, (x, y), self.params, seed, f"{self.name} @ {where} (l1 {l1:g})")
        return tc.eval(), log

    def training_log(self) -> TrainLog | None:
        return getattr(self, "log", None)

    @torch.no_grad()
    def _site_directions(self, x_ND: Tensor) -> Tensor:
        z_NM = self.tc.encode(x_ND)
        centroid_MD = (z_NM.T @ x_ND) / z_NM.sum(dim=0).clamp_min(1e-12)[:, None]
        basis_RD = span_basis(x_ND).float()
        enc_MD = self.tc.W_enc_DM.T @ basis_RD.T @ basis_RD
        if basis_RD.shape[0] == 0:
            enc_MD = self.tc.W_enc_DM.T
        fired = z_NM.sum(dim=0) > 0
        dirs = torch.where(fired[:, None], centroid_MD, enc_MD)
        return dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        return self.tc.encode(acts_ND)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return self.readout(latents_NM)

    def directions(self) -> Tensor:
        return self._directions_MD
