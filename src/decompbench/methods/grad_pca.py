"""`grad-pca` — principal components of the activations, weighted by how much they matter.

Each centred activation x_n - mu gets the weight w_n = ||J_n (x_n - mu)||^2, the squared
first-order change of the network's output when that sample's deviation from the mean is
removed (J_n is the Jacobian of the output with respect to the site at x_n: an
activation x gradient product). The basis is the eigenvectors of the weighted covariance

    C = sum_n w_n (x_n - mu)(x_n - mu)^T / sum_n w_n,

keeping those with eigenvalue above ``rel_tol`` of the total (or the top ``width``).
Samples the output ignores do not shape the basis; directions are orthonormal; latents
are projections, so the reconstruction is exact on the kept span.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.downstream import require_downstream
from decompbench.methods.pca import CentredBasis
from decompbench.registry import register_method
from decompbench.toys.base import ActivationSite, DownstreamSite

CHUNK = 1024


class GradPCAParams(StrictModel):
    width: int | None = Field(
        default=None, ge=1, description="components kept; default all above rel_tol"
    )
    rel_tol: float = Field(default=1e-4, gt=0, description="eigenvalue share kept")


def output_sensitivity(site: DownstreamSite, x_ND: Tensor, mu_D: Tensor) -> Tensor:
    """[n] ||J_n (x_n - mu)||^2 by forward-mode differentiation, in chunks."""
    out = []
    for start in range(0, x_ND.shape[0], CHUNK):
        x = x_ND[start : start + CHUNK]
        jvp = torch.func.jvp(site.output, (x,), (x - mu_D,))[1]
        out.append(jvp.reshape(x.shape[0], -1).double().pow(2).sum(dim=1))
    return torch.cat(out)


@register_method("grad-pca")
class GradPCA(CentredBasis):
    summary = "PCA of activations weighted by the output's sensitivity to them"
    access = "downstream_aware"
    directions_kind = "principal axes (orthonormal)"
    Params = GradPCAParams
    params: GradPCAParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        x = ds.acts_ND.double()
        self.mean_D = x.mean(dim=0)
        w_N = output_sensitivity(ds, ds.acts_ND, self.mean_D.float())
        if not float(w_N.sum()) > 0:
            raise UserError(f"grad-pca: the output does not respond to site '{ds.name}'")
        xc = x - self.mean_D
        cov = (xc * (w_N / w_N.sum())[:, None]).T @ xc
        vals, vecs = torch.linalg.eigh(cov)
        vals, vecs = vals.flip(0), vecs.flip(1)
        rank = int((vals > self.params.rel_tol * vals.sum()).sum())
        m = rank if self.params.width is None else min(self.params.width, vecs.shape[1])
        self.components_MD = vecs[:, : max(m, 1)].T
