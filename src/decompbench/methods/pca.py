"""`pca` — principal components of the centred activations.

Latents are the projections on the top components; ``width`` components, or by default
every component with non-negligible variance (the data's rank), chosen without ground
truth.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.methods.base import Decomposition
from decompbench.registry import register_method
from decompbench.toys.base import ActivationSite


class PCAParams(StrictModel):
    width: int | None = Field(
        default=None, ge=1, description="components kept; default the data's rank"
    )
    rel_tol: float = Field(default=1e-4, gt=0, description="variance share kept as rank")


class CentredBasis(Decomposition):
    """Latents are projections of the centred activations on orthonormal rows
    ``components_MD`` (float64), which are also the directions; ``fit`` sets both."""

    mean_D: Tensor
    components_MD: Tensor

    def encode(self, acts_ND: Tensor) -> Tensor:
        return ((acts_ND.double() - self.mean_D) @ self.components_MD.T).to(acts_ND.dtype)

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (latents_NM.double() @ self.components_MD + self.mean_D).to(latents_NM.dtype)

    def directions(self) -> Tensor:
        return self.components_MD.float()


@register_method("pca")
class PCA(CentredBasis):
    summary = "principal components of the centred activations"
    Params = PCAParams
    params: PCAParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        x = site.acts_ND.double()
        self.mean_D = x.mean(dim=0)
        _, s, vh = torch.linalg.svd(x - self.mean_D, full_matrices=False)
        var = s.pow(2)
        rank = int((var > self.params.rel_tol * var.sum()).sum())
        m = rank if self.params.width is None else min(self.params.width, vh.shape[0])
        self.components_MD = vh[:m]
