"""`random` — a baseline: random unit directions in the span of the activations.

``width`` directions (by default the data's rank) are drawn isotropically inside the
row span of the training activations (``metrics.recovery.span_basis`` and
``random_dictionary``), from a seed derived from the run's seed and a fixed tag, so
both twins get the same dictionary. Latents are the least-squares coefficients of the
centred activations on the directions (pseudo-inverse, in double precision); decode is
mean + z @ D, exact on the span when width >= rank. It sees the activations only and
learns nothing but the span and the mean: any method worth its name beats it.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.metrics.recovery import random_dictionary, span_basis
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

SEED_TAG = "random-baseline"


class RandomParams(StrictModel):
    width: int | None = Field(
        default=None, ge=1, description="number of directions; default the data's rank"
    )


@register_method("random")
class RandomDirections(Decomposition):
    summary = "baseline: random unit directions in the span of the activations"
    baseline = True
    directions_kind = "random"
    Params = RandomParams
    params: RandomParams

    mean_D: Tensor
    dirs_MD: Tensor  # float64, unit rows
    pinv_DM: Tensor  # float64, least-squares coefficients: z = (x - mean) @ pinv

    def fit(self, site: ActivationSite, seed: int) -> None:
        x_ND = site.acts_ND.double()
        basis_RD = span_basis(x_ND)
        if basis_RD.shape[0] == 0:
            raise UserError(f"random: the activations at site '{site.name}' are all zero")
        m = basis_RD.shape[0] if self.params.width is None else self.params.width
        self.mean_D = x_ND.mean(dim=0)
        self.dirs_MD = random_dictionary(m, basis_RD, generator(seed, SEED_TAG))
        self.pinv_DM = torch.linalg.pinv(self.dirs_MD)

    def encode(self, acts_ND: Tensor) -> Tensor:
        return ((acts_ND.double() - self.mean_D) @ self.pinv_DM).float()

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (self.mean_D + latents_NM.double() @ self.dirs_MD).float()

    def directions(self) -> Tensor:
        return self.dirs_MD.float()
