"""Joint decomposition: one TopK SAE per site, trained together with a penalty on the
cross-layer edges between them.

Each site s gets a TopK SAE (``sae-topk``'s module and loss). Their losses are summed,
plus ``edge_coef`` times the L1 norm of the ablation attributions between the latents of
consecutive sites on the minibatch, a differentiable stand-in for the number of edges:

    e_nab = (f(x_n) - f(x_n - z_na d_a)) . w_b     (d_a: decoder row of latent a at s,
    penalty = mean_n sum_ab |e_nab|                  w_b: encoder column of latent b at
                                                     s+1, f: the next layer)

the same ablation the pipeline's edges use (``edges.py``), linear in the next site's
encoder. Ablations, not gradients: on ``circuit`` the gates are saturated on every sample
(their Jacobian is exactly zero), so a gradient-based penalty would be a no-op there. The
next layers are ``frozen_copy``s of ``toy.to_next_site`` (frozen; kept out of the optimiser). With
``edge_coef: 0`` this is exactly per-site ``sae-topk`` (same initialisation, same
minibatches; tested).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from decompbench.methods.sae import SparseAutoencoder
from decompbench.methods.sae_topk import SAETopK, TopKParams
from decompbench.methods.train import TrainState, train
from decompbench.seeding import generator


class JointParams(TopKParams):
    edge_coef: float = Field(default=0.01, ge=0, description="weight of the edge L1 penalty")


def edge_penalty(x_BD: Tensor, z_BA: Tensor, W_dec_AD: Tensor, layer: nn.Module,
                 W_enc_OM: Tensor) -> Tensor:  # fmt: skip
    """mean_n sum_ab |(f(x_n) - f(x_n - z_na d_a)) . w_b| (see the module docstring)."""
    b, a = z_BA.shape
    y_BO = layer(x_BD)
    c_BAD = z_BA[:, :, None] * W_dec_AD[None]
    y_BAO = layer((x_BD[:, None, :] - c_BAD).reshape(b * a, -1)).reshape(b, a, -1)
    attr_BAM = (y_BO[:, None, :] - y_BAO) @ W_enc_OM
    return attr_BAM.abs().sum(dim=(1, 2)).mean()


class JointSAEs(nn.Module):
    """The per-site SAEs; ``loss`` takes one minibatch of every site's activations."""

    def __init__(
        self, saes: list[SparseAutoencoder], layers: list[nn.Module], edge_coef: float
    ) -> None:
        super().__init__()
        self.saes = nn.ModuleList(saes)
        self.layers = list(layers)  # a plain list: not parameters of this model
        self.edge_coef = edge_coef
        self.fire_rate_M: Tensor | None = None

    def _parts(self) -> list[SparseAutoencoder]:
        return [s for s in self.saes if isinstance(s, SparseAutoencoder)]

    @torch.no_grad()
    def prepare(self, *tensors: Tensor) -> None:
        for sae, x in zip(self._parts(), tensors, strict=False):
            sae.prepare(x)

    def set_train_state(self, state: TrainState) -> None:
        start = 0
        for sae in self._parts():
            width = sae.W_dec_MD.shape[0]
            dead = None if state.dead_M is None else state.dead_M[start : start + width]
            sae.set_train_state(TrainState(state.step, state.steps, state.sparsity_scale, dead))
            start += width

    def loss(self, *tensors: Tensor) -> Tensor:
        saes = self._parts()
        xs = tensors
        total = torch.stack([sae.loss(x) for sae, x in zip(saes, xs, strict=True)]).sum()
        self.fire_rate_M = torch.cat([s.fire_rate_M for s in saes if s.fire_rate_M is not None])
        if self.edge_coef == 0:
            return total
        for s, layer in enumerate(self.layers):
            z = saes[s].activation(saes[s].pre_acts(xs[s]))
            pen = edge_penalty(xs[s], z, saes[s].W_dec_MD, layer, saes[s + 1].W_enc_DM)
            total = total + self.edge_coef * pen
        return total

    def after_step(self) -> None:
        for sae in self._parts():
            sae.after_step()


def fit_joint(
    train_acts: dict[str, Tensor], next_layers: dict[str, nn.Module], params: JointParams,
    seed: int,
) -> dict[str, SAETopK]:  # fmt: skip
    """Train one TopK SAE per site (in ``train_acts`` order) jointly; each returned as a
    fitted ``sae-topk`` decomposition. ``next_layers[s]`` maps site s to the next site."""
    sites = list(train_acts)
    methods = {s: SAETopK(params) for s in sites}
    saes: list[SparseAutoencoder] = []
    for s in sites:
        gen = generator(seed, f"method/{methods[s].name}/init")
        saes.append(methods[s].configure(methods[s].make_module(train_acts[s].shape[1], gen)))
    model = JointSAEs(saes, [next_layers[s] for s in sites[:-1]], params.edge_coef)
    model.train()
    train(model, tuple(train_acts[s] for s in sites), params, seed, "joint")
    model.eval()
    for s, sae in zip(sites, saes, strict=True):
        methods[s].sae = sae
    return methods
