"""An example decompbench plugin: spherical k-means as an activation-only method.

Installed, its entry point (group ``decompbench.plugins``) makes decompbench import this
module, which registers ``example-kmeans``; nothing in decompbench names it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decompbench import ActivationSite, Decomposition, StrictModel, register_method


class KMeansParams(StrictModel):
    width: int = 8
    iters: int = 50
    restarts: int = 2


@register_method("example-kmeans")
class SphericalKMeans(Decomposition):
    """Unit centroids of the activation directions; one active latent per sample."""

    Params = KMeansParams
    summary = "example plugin: spherical k-means (one latent per sample)"

    def fit(self, site: ActivationSite, seed: int) -> None:
        p = self.params
        assert isinstance(p, KMeansParams)
        X = site.acts_ND.float()
        U = X / X.norm(dim=1, keepdim=True).clamp_min(1e-8)
        g = torch.Generator().manual_seed(seed)
        best, best_fit = None, -1.0
        for _ in range(p.restarts):
            C = U[torch.randperm(U.shape[0], generator=g)[: p.width]].clone()
            for _ in range(p.iters):
                assign = (U @ C.T).argmax(dim=1)
                for j in range(C.shape[0]):
                    members = U[assign == j]
                    if members.shape[0]:
                        c = members.sum(dim=0)
                        C[j] = c / c.norm().clamp_min(1e-8)
            fit = float((U @ C.T).max(dim=1).values.mean())
            if fit > best_fit:
                best, best_fit = C, fit
        assert best is not None
        self.C_MD = best

    def encode(self, acts_ND: Tensor) -> Tensor:
        proj = acts_ND.float() @ self.C_MD.T
        keep = proj.abs().argmax(dim=1, keepdim=True)
        return torch.zeros_like(proj).scatter(1, keep, proj.gather(1, keep))

    def decode(self, latents_NM: Tensor) -> Tensor:
        return latents_NM @ self.C_MD

    def directions(self) -> Tensor:
        return self.C_MD
