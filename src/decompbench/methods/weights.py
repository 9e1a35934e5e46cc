"""`weights` — a baseline: the rows of the first weight matrix the downstream applies.

The toy names the first linear map its downstream applies to the site
(``Toy.first_linear``, carried to the method as ``DownstreamSite.first_linear_OD``, never
through the ground truth). Its non-zero rows, normalised, are the directions; one latent
per row, so the width is the number of rows. Latents are the pre-activations
z = x @ W_norm^T (two-sided, no bias); decode is the least-squares inverse
mean + (z - mean @ W_norm^T) @ pinv(W_norm^T) (the orthogonal projection of x - mean on
the rows' span), exact when the rows span the data.
Nothing is learned: a downstream-aware method should at least match what reading the
next layer's weights gives for free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.downstream import require_downstream
from decompbench.registry import register_method
from decompbench.toys.base import ActivationSite

MIN_ROW_NORM = 1e-12  # rows at or below this norm carry no direction and are dropped
# Singular values below this share of the largest are rank deficiency, not signal: the
# weights are float32, so a rank-deficient set of rows (e.g. `composed`'s 9 conjunction
# rows span 5 dims) has spurious singular values around 1e-8 that pinv must not invert.
PINV_RTOL = 1e-6


class WeightsParams(StrictModel):
    pass


def unit_nonzero_rows(W_OD: Tensor) -> Tensor:
    """[m, d] float64 normalised rows of ``W_OD``, zero rows dropped."""
    W = W_OD.double()
    norms_O = W.norm(dim=1)
    keep_O = norms_O > MIN_ROW_NORM
    return W[keep_O] / norms_O[keep_O, None]


@register_method("weights")
class FirstLayerWeights(Decomposition):
    summary = "baseline: normalised rows of the first linear map the downstream applies"
    baseline = True
    access = "downstream_aware"
    directions_kind = "first downstream weight rows"
    Params = WeightsParams
    params: WeightsParams

    mean_D: Tensor
    rows_MD: Tensor  # float64 unit rows
    pinv_MD: Tensor  # float64 pinv(rows^T): least-squares decode

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        if ds.first_linear_OD is None:
            raise UserError(f"weights: site '{ds.name}' offers no first linear map to read")
        if ds.first_linear_OD.shape[-1] != ds.d:
            raise UserError(
                f"weights: first linear map at site '{ds.name}' reads "
                f"{ds.first_linear_OD.shape[-1]} dims, the site has {ds.d}"
            )
        self.rows_MD = unit_nonzero_rows(ds.first_linear_OD)
        if self.rows_MD.shape[0] == 0:
            raise UserError(f"weights: the first linear map at site '{ds.name}' is zero")
        self.mean_D = ds.acts_ND.double().mean(dim=0)
        self.pinv_MD = torch.linalg.pinv(self.rows_MD.T, rtol=PINV_RTOL)

    def encode(self, acts_ND: Tensor) -> Tensor:
        return (acts_ND.double() @ self.rows_MD.T).float()

    def decode(self, latents_NM: Tensor) -> Tensor:
        centred_NM = latents_NM.double() - self.mean_D @ self.rows_MD.T
        return (self.mean_D + centred_NM @ self.pinv_MD).float()

    def directions(self) -> Tensor:
        return self.rows_MD.float()
