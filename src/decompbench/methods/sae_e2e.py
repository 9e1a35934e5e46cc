"""`sae-e2e` — an end-to-end SAE: trained so that the *network's output* is preserved.

    x_hat = SAE(x);   loss = D(downstream(x_hat), downstream(x)) + sparsity

with D the KL divergence for categorical outputs and the squared error divided by the
output's variance otherwise (Braun et al. 2024). There is no local reconstruction term:
the SAE only needs to keep what later layers use. Sparsity: L1 on ReLU latents with
unit-norm decoder rows, or TopK when ``k`` is set (then ``l1`` is ignored).

Gradients reach the SAE through the frozen downstream network. Through a ReLU a
reconstruction that falls below threshold gets no gradient, and training can lose every
latent; each downstream ``nn.ReLU`` therefore gets a straight-through leak of slope
``relu_leak`` in its backward pass while training (the forward pass is unchanged).

Selection (no ground truth): ``l1`` may be a list; every value is fitted on 90 % of the
training activations and, among the fits whose output divergence on the other 10 % stays
within ``tol``, the one with the smallest held-out L0 is kept. Directions: decoder rows.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.methods.downstream import (
    SparsityChoice,
    capture_linear_outputs,
    choose_sparsest,
    divergence,
    holdout_split,
    output_scale,
    relu_leak,
    require_downstream,
)
from decompbench.methods.sae import SAEMethod, SAEParams, SparseAutoencoder
from decompbench.methods.train import TrainLog, train
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite, DownstreamSite


class E2EParams(SAEParams, SparsityChoice):
    relu_leak: float = Field(default=0.01, ge=0, description="straight-through ReLU leak")


class E2ESAE(SparseAutoencoder):
    """A ReLU/TopK SAE whose loss is measured at the network's output."""

    l1: float = 0.0
    k: int | None = None
    ds_coef: float = 0.0

    def bind(self, site: DownstreamSite, x_ND: Tensor) -> None:
        """Attach the frozen downstream and the output-scale normalisers."""
        self.site = (site,)  # a tuple keeps the frozen network out of parameters()
        with torch.no_grad():
            out, layers = self.run(x_ND)
        self.scale = output_scale(out, site.output_kind)
        self.layer_scales = [output_scale(h, "mse") for h in layers]

    def run(self, x_BD: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output and the downstream linear layers' outputs with ``x_BD`` at the site."""
        layers: list[Tensor] = []
        with capture_linear_outputs(self.site[0].downstream, layers):
            out = self.site[0].output(x_BD)
        return out, layers

    def activation(self, pre_BM: Tensor) -> Tensor:
        relu_BM = torch.relu(pre_BM)
        if self.k is None:
            return relu_BM
        vals, idx = relu_BM.topk(self.k, dim=1)
        return torch.zeros_like(pre_BM).scatter(1, idx, vals)

    def sparsity_loss(self, z_BM: Tensor) -> Tensor:
        return z_BM.new_zeros(()) if self.k is not None else self.l1 * z_BM.abs().sum(1).mean()

    def downstream_error(self, x_BD: Tensor, xhat_BD: Tensor) -> Tensor:
        """Output divergence (normalised) plus ``ds_coef`` x downstream-layer errors."""
        with torch.no_grad():
            out, layers = self.run(x_BD)
        out_hat, layers_hat = self.run(xhat_BD)
        err = divergence(out_hat, out, self.site[0].output_kind) / self.scale
        if self.ds_coef > 0:
            for h, h_hat, s in zip(layers, layers_hat, self.layer_scales, strict=True):
                err = err + self.ds_coef * divergence(h_hat, h, "mse") / s
        return err

    def loss(self, x_BD: Tensor) -> Tensor:
        z_BM = self.encode(x_BD)
        self.note_firing(z_BM)
        err = self.downstream_error(x_BD, self.decode(z_BM))
        return err + self.sparsity_scale * self.sparsity_loss(z_BM)


@register_method("sae-e2e")
class SAEE2E(SAEMethod):
    summary = "SAE trained so the network's output with its reconstruction matches (no local MSE)"
    access = "downstream_aware"
    directions_kind = "decoder"
    Params = E2EParams
    params: E2EParams

    def make_module(self, d: int, gen: torch.Generator) -> E2ESAE:
        sae = E2ESAE(d, self.params.width, gen)
        sae.k, sae.ds_coef = self.params.k, float(getattr(self.params, "ds_coef", 0.0))
        return sae

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        x_tr, x_ho = holdout_split(ds.acts_ND, self.params.holdout_frac, seed)
        l1s = self.params.l1 if isinstance(self.params.l1, list) else [self.params.l1]
        fits, logs, self.selection = [], [], []
        for l1 in sorted(l1s):
            sae, log = self._fit_one(ds, x_tr, l1, seed)
            logs.append(log)
            with torch.no_grad():
                z = sae.encode(x_ho)
                err = float(sae.downstream_error(x_ho, sae.decode(z)))
            self.selection.append(
                {"l1": l1, "error": err, "l0": float((z > 0).float().sum(1).mean())}
            )
            fits.append(sae)
        self.chosen = choose_sparsest(
            [s["error"] for s in self.selection], [s["l0"] for s in self.selection], self.params.tol
        )
        self.sae, self.log = fits[self.chosen], logs[self.chosen]

    def _fit_one(
        self, ds: DownstreamSite, x_ND: Tensor, l1: float, seed: int
    ) -> tuple[E2ESAE, TrainLog]:
        sae = self.make_module(ds.d, generator(seed, f"method/{self.name}/init"))
        sae = self.configure(sae)  # type: ignore[assignment]
        sae.l1 = l1
        sae.bind(ds, x_ND)
        sae.train()
        with relu_leak(ds.downstream, self.params.relu_leak):
            log = train(sae, x_ND, self.params, seed, f"{self.name} @ {ds.name} (l1 {l1:g})")
        return sae.eval(), log
