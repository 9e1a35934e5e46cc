"""`ica` — FastICA (Hyvärinen 1999), implemented here in torch (float64), no scikit-learn.

The activations are centred and whitened by PCA (down to their rank, or to ``width``
components); symmetric FastICA then rotates the whitened data to maximise
non-Gaussianity (log-cosh contrast by default) with fixed-point iterations from a
random orthogonal start drawn from the run's seed. Components are sign-flipped to
positive skew, so sparse non-negative sources come out non-negative.

Latents are the estimated sources s = U (x - mean). ``directions`` are the **mixing**
vectors (columns of U^+, i.e. x = mean + sum_i s_i a_i: the analogue of SAE decoder rows
and of the toys' feature directions); the unmixing vectors (rows of U, the analogue of
encoder rows) are kept as ``unmixing_RD``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.methods.base import Decomposition
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

Contrast = Literal["logcosh", "exp", "cube"]


class ICAParams(StrictModel):
    width: int | None = Field(default=None, ge=1, description="components; default the rank")
    fun: Contrast = Field(default="cube", description="FastICA contrast function")
    max_iter: int = Field(default=500, ge=1, description="FastICA fixed-point iterations at most")
    tol: float = Field(
        default=1e-6, gt=0, description="convergence tolerance of the unmixing matrix"
    )
    rel_tol: float = Field(default=1e-4, gt=0, description="variance share kept as rank")


def whiten(X_ND: Tensor, width: int | None, rel_tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean [d], whitening K [r, d] and its pseudo-inverse K^+ [d, r] (float64)."""
    x = X_ND.double()
    mean_D = x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x - mean_D, full_matrices=False)
    var = s.pow(2) / max(x.shape[0] - 1, 1)
    rank = max(1, int((var > rel_tol * var.sum()).sum()))
    r = rank if width is None else min(width, rank)
    sd = var[:r].sqrt()
    return mean_D, vh[:r] / sd[:, None], vh[:r].T * sd[None, :]


def _contrast(u: Tensor, fun: Contrast) -> tuple[Tensor, Tensor]:
    """g(u) and g'(u) for the FastICA fixed point."""
    if fun == "logcosh":
        t = torch.tanh(u)
        return t, 1 - t * t
    if fun == "exp":
        e = torch.exp(-0.5 * u * u)
        return u * e, (1 - u * u) * e
    return u**3, 3 * u * u


def sym_decorrelate(W_RR: Tensor) -> Tensor:
    """(W W^T)^{-1/2} W: the nearest orthogonal matrix's rows."""
    evals, evecs = torch.linalg.eigh(W_RR @ W_RR.T)
    return evecs @ torch.diag(evals.clamp_min(1e-30).rsqrt()) @ evecs.T @ W_RR


def fastica(Y_NR: Tensor, gen: torch.Generator, fun: Contrast, max_iter: int, tol: float) -> Tensor:
    """Orthogonal unmixing W [r, r] of whitened data (sources = Y W^T)."""
    r = Y_NR.shape[1]
    W = sym_decorrelate(torch.randn(r, r, generator=gen, dtype=torch.float64))
    n = Y_NR.shape[0]
    for _ in range(max_iter):
        g, g_prime = _contrast(Y_NR @ W.T, fun)
        W_new = sym_decorrelate(g.T @ Y_NR / n - g_prime.mean(dim=0)[:, None] * W)
        lim = float((torch.diag(W_new @ W.T).abs() - 1).abs().max())
        W = W_new
        if lim < tol:
            break
    return W


def skew_signs(S_NR: Tensor) -> Tensor:
    """+1/-1 per component so that each has non-negative third moment."""
    c = S_NR - S_NR.mean(dim=0)
    return torch.where(c.pow(3).mean(dim=0) >= 0, 1.0, -1.0).to(S_NR.dtype)


def ica_unmixing(
    X_ND: Tensor, params: ICAParams, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean [d], unmixing U [r, d] and mixing A [d, r] (U A = I) of the activations."""
    mean_D, K_RD, Kinv_DR = whiten(X_ND, params.width, params.rel_tol)
    Y_NR = (X_ND.double() - mean_D) @ K_RD.T
    W_RR = fastica(Y_NR, gen, params.fun, params.max_iter, params.tol)
    signs_R = skew_signs(Y_NR @ W_RR.T)
    W_RR = signs_R[:, None] * W_RR
    return mean_D, W_RR @ K_RD, Kinv_DR @ W_RR.T


@register_method("ica")
class ICA(Decomposition):
    summary = "FastICA (own torch implementation); directions are the mixing vectors"
    Params = ICAParams
    directions_kind = "mixing"
    params: ICAParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        gen = generator(seed, "method/ica/init")
        self.mean_D, self.unmixing_RD, self.mixing_DR = ica_unmixing(site.acts_ND, self.params, gen)

    def encode(self, acts_ND: Tensor) -> Tensor:
        return ((acts_ND.double() - self.mean_D) @ self.unmixing_RD.T).to(acts_ND.dtype)

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (latents_NM.double() @ self.mixing_DR.T + self.mean_D).to(latents_NM.dtype)

    def directions(self) -> Tensor:
        a = self.mixing_DR.T
        return (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()
