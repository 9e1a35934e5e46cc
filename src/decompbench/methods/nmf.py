"""`nmf` — non-negative matrix factorisation X ~ C H with C, H >= 0 (Lee & Seung 2001).

Only meaningful for non-negative activations (e.g. after a ReLU): ``fit`` refuses
activations with negative entries with a one-line ``UserError``, unless
``signs: split``, which factorises [max(x, 0), max(-x, 0)] (2d columns) and reads each
component's direction as h+ - h- (a standard sign-split trick, not the default).

Multiplicative updates for the Frobenius loss, with an optional L1 penalty on codes;
random non-negative start from the run's seed (scaled as in scikit-learn's "random"
init). ``encode`` solves for non-negative codes with the dictionary fixed (the same
updates from a constant start), so it is deterministic. Latents are scaled so that
``decode(z) = z @ directions + 0`` with unit directions.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.metrics.recovery import span_basis
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

EPS = 1e-12


class NMFParams(StrictModel):
    width: int | None = Field(default=None, ge=1, description="components; default the rank")
    iters: int = Field(default=400, ge=1, description="multiplicative-update iterations of the fit")
    encode_iters: int = Field(
        default=200, ge=1, description="code iterations when encoding new data"
    )
    l1: float = Field(default=0.0, ge=0, description="L1 penalty on codes")
    signs: Literal["refuse", "split"] = Field(
        default="refuse",
        description="refuse negative activations, or split x into [max(x,0), max(-x,0)]",
    )


def mu_codes(X_NF: Tensor, H_MF: Tensor, C_NM: Tensor, l1: float, iters: int) -> Tensor:
    """Multiplicative updates of the codes C >= 0 with H fixed."""
    HHt = H_MF @ H_MF.T
    XHt = X_NF @ H_MF.T
    for _ in range(iters):
        C_NM = C_NM * XHt / (C_NM @ HHt + l1 + EPS)
    return C_NM


def mu_dictionary(X_NF: Tensor, H_MF: Tensor, C_NM: Tensor) -> Tensor:
    """One multiplicative update of the dictionary H >= 0 with C fixed."""
    return H_MF * (C_NM.T @ X_NF) / (C_NM.T @ C_NM @ H_MF + EPS)


def nmf(X_NF: Tensor, m: int, iters: int, l1: float, gen: torch.Generator) -> Tensor:
    """The dictionary H [m, f] >= 0 with rows of unit norm."""
    scale = (X_NF.mean() / m).sqrt()
    C = scale * torch.rand(X_NF.shape[0], m, generator=gen, dtype=X_NF.dtype)
    H = scale * torch.rand(m, X_NF.shape[1], generator=gen, dtype=X_NF.dtype)
    for _ in range(iters):
        C = mu_codes(X_NF, H, C, l1, 1)
        H = mu_dictionary(X_NF, H, C)
        norms = H.norm(dim=1, keepdim=True).clamp_min(EPS)
        H, C = H / norms, C * norms.T
    return H


@register_method("nmf")
class NMF(Decomposition):
    summary = "non-negative matrix factorisation (multiplicative updates); needs acts >= 0"
    Params = NMFParams
    params: NMFParams

    def lift(self, acts_ND: Tensor) -> Tensor:
        x = acts_ND.double()
        return torch.cat([x.clamp_min(0), (-x).clamp_min(0)], 1) if self.split else x

    def fit(self, site: ActivationSite, seed: int) -> None:
        x = site.acts_ND
        self.split = self.params.signs == "split"
        if not self.split and float(x.min()) < -1e-7 * float(x.abs().max()):
            raise UserError(
                f"nmf: activations at site '{site.name}' have negative entries "
                f"(min {float(x.min()):.3g}); NMF needs non-negative activations "
                "(or signs: split)"
            )
        m = self.params.width or max(1, span_basis(x).shape[0])
        H_MF = nmf(self.lift(x), m, self.params.iters, self.params.l1,
                   generator(seed, "method/nmf/init"))  # fmt: skip
        d = x.shape[1]
        dirs_MD = H_MF[:, :d] - H_MF[:, d:] if self.split else H_MF
        self.norms_M = dirs_MD.norm(dim=1).clamp_min(EPS)
        self.H_MF, self.dirs_MD = H_MF, dirs_MD / self.norms_M[:, None]

    def encode(self, acts_ND: Tensor) -> Tensor:
        X = self.lift(acts_ND)
        C0 = torch.full((X.shape[0], self.H_MF.shape[0]), float(X.mean()) + EPS, dtype=X.dtype)
        C = mu_codes(X, self.H_MF, C0, self.params.l1, self.params.encode_iters)
        return (C * self.norms_M).to(acts_ND.dtype)

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (latents_NM.double() @ self.dirs_MD).to(latents_NM.dtype)

    def directions(self) -> Tensor:
        return self.dirs_MD.float()
