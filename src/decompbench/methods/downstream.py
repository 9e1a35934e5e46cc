"""Shared plumbing of the downstream-aware methods (not a method itself).

Everything here reads only a ``DownstreamSite``: the site's activations and the frozen
copy of the network after it. Pure loss functions (output divergence, normalisation),
the one-line refusal for sites that lack what a method needs, a straight-through leak
for downstream ReLUs, capture of the downstream's linear layers and their inputs, and a
least-squares readout that lets methods without a site decoder still report a
reconstruction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.toys.base import ActivationSite, DownstreamSite, OutputKind


def require_downstream(site: ActivationSite, method: str) -> DownstreamSite:
    """The site as a ``DownstreamSite``, or a one-line ``UserError`` saying what is missing."""
    if not isinstance(site, DownstreamSite):
        raise UserError(
            f"method '{method}' is downstream-aware: it needs the network after site "
            f"'{site.name}', but was given its activations only"
        )
    return site


def nonneg_choices(v: float | list[float], name: str) -> float | list[float]:
    """A coefficient that is one non-negative number or a non-empty list of them."""
    vals = v if isinstance(v, list) else [v]
    if not vals or any(x < 0 for x in vals):
        raise ValueError(f"{name} must be a non-negative number or a non-empty list")
    return v


class SparsityChoice(StrictModel):
    """Width and sparsity settings of a downstream-aware dictionary chosen on held-out data.

    ``l1`` may list several coefficients: each is trained and one is kept by
    ``choose_setting`` (the sparsest whose held-out error is well inside ``tol``).
    """

    sweep_fields: ClassVar[tuple[str, ...]] = ("l1",)  # a list: one fit per value

    width: int = Field(default=32, ge=1, description="dictionary size (latents)")
    l1: float | list[float] = Field(default=0.01, description="L1 coefficient(s); list: select")
    k: int | None = Field(default=None, ge=1, description="TopK instead of L1 when set")
    tol: float = Field(default=0.02, gt=0, description="selection: max held-out error")
    holdout_frac: float = Field(
        default=0.1, gt=0, lt=1, description="share of samples held out to choose among l1 values"
    )

    @field_validator("l1")
    @classmethod
    def _nonneg(cls, v: float | list[float]) -> float | list[float]:
        return nonneg_choices(v, "l1")

    @model_validator(mode="after")
    def _k_fits(self) -> SparsityChoice:
        if self.k is not None and self.k > self.width:
            raise ValueError(f"k = {self.k} exceeds width = {self.width}")
        return self


def divergence(pred_BO: Tensor, target_BO: Tensor, kind: OutputKind) -> Tensor:
    """Mean over the batch of KL(target || pred) for logits, or of the summed squared error."""
    if kind == "categorical":
        logp = torch.log_softmax(pred_BO, dim=-1)
        logq = torch.log_softmax(target_BO, dim=-1)
        return (logq.exp() * (logq - logp)).sum(dim=-1).mean()
    return (pred_BO - target_BO).pow(2).sum(dim=-1).mean()


def output_scale(target_NO: Tensor, kind: OutputKind) -> float:
    """Divisor that makes an MSE divergence scale-free (total output variance); 1 for KL."""
    if kind == "categorical":
        return 1.0
    var = float(target_NO.double().var(dim=0, unbiased=False).sum())
    return var if var > 0 else 1.0


def _leaky_relu_hook(leak: float):  # type: ignore[no-untyped-def]
    def hook(_mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        x = inp[0]
        # Forward value unchanged; backward gets slope ``leak`` where the ReLU is off.
        return out + leak * torch.where(x < 0, x - x.detach(), torch.zeros_like(x))

    return hook


@contextmanager
def relu_leak(module: nn.Module, leak: float) -> Iterator[None]:
    """Give every ``nn.ReLU`` inside ``module`` a straight-through leak in its backward pass.

    Without it an end-to-end SAE trained through a downstream ReLU can lose every latent:
    no gradient reaches reconstructions that fall below the ReLU's threshold.
    """
    handles = []
    if leak > 0:
        for sub in module.modules():
            if isinstance(sub, nn.ReLU):
                handles.append(sub.register_forward_hook(_leaky_relu_hook(leak)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def linear_calls(module: nn.Module, acts_BD: Tensor) -> list[tuple[str, nn.Linear, Tensor]]:
    """Every ``nn.Linear`` of ``module`` in call order, with its name and its input."""
    calls: list[tuple[str, nn.Linear, Tensor]] = []
    handles = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):

            def hook(mod: nn.Module, inp: tuple[Tensor, ...], _out: Tensor, n: str = name) -> None:
                assert isinstance(mod, nn.Linear)
                calls.append((n, mod, inp[0].detach()))

            handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(acts_BD)
    finally:
        for h in handles:
            h.remove()
    return calls


@contextmanager
def capture_linear_outputs(module: nn.Module, into: list[Tensor]) -> Iterator[None]:
    """Append the output of every ``nn.Linear`` call inside ``module`` to ``into``."""
    handles = [
        sub.register_forward_hook(lambda _m, _i, out: into.append(out))
        for sub in module.modules()
        if isinstance(sub, nn.Linear)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class Readout:
    """Least-squares affine map latents -> site activations, fitted on training data.

    For methods whose latents have no decoder into the site (transcoders, parameter
    components): ``decode`` reports how much of the site the code determines linearly.
    """

    W_MD: Tensor
    b_D: Tensor

    @staticmethod
    def fit(Z_NM: Tensor, X_ND: Tensor, ridge: float = 1e-6) -> Readout:
        z = Z_NM.double()
        zc, xc = z - z.mean(dim=0), X_ND.double() - X_ND.double().mean(dim=0)
        gram = zc.T @ zc
        reg = ridge * float(gram.diagonal().mean().clamp_min(1e-12)) * torch.eye(z.shape[1])
        W = torch.linalg.solve(gram + reg.double(), zc.T @ xc)
        b = X_ND.double().mean(dim=0) - z.mean(dim=0) @ W
        return Readout(W.float(), b.float())

    def __call__(self, Z_NM: Tensor) -> Tensor:
        return Z_NM @ self.W_MD + self.b_D


# Selection among fitted settings (no ground truth). A fit is admissible only when its
# held-out error is *well inside* the tolerance: at most tol / SELECTION_MARGIN.
SELECTION_MARGIN = 4.0
# Held-out L0s within this relative distance of the sparsest admissible one are a tie,
# broken by the lower held-out error.
L0_TIE = 0.05


@dataclass(frozen=True)
class Candidate:
    """One fitted setting as the selection sees it: held-out error and held-out L0."""

    error: float
    l0: float


def choose_setting(cands: list[Candidate], tol: float, margin: float = SELECTION_MARGIN) -> int:
    """Selection rule shared by every downstream-aware method that fits several settings.

    The sparsest fit (smallest held-out L0; L0s within ``L0_TIE`` of it tie, broken by the
    lower error) among those whose held-out error is at most ``tol / margin``; when none
    is, the most accurate fit. Why not "error <= tol, then sparsest": a sparsity penalty
    distorts the dictionary (shrinks, merges, splits latents) before it visibly breaks the
    reconstruction, so the sparsest fit within the tolerance is, by construction, one
    whose penalty has started trading the output for sparsity, and which fit lands just
    under the line depends on noise in the held-out error. Requiring a margin of
    ``margin`` (4) keeps only fits whose penalty is not yet biting; the tolerance keeps
    its meaning (the worst acceptable error), and the rule reads only the candidates'
    (error, L0) records, never the ground truth.
    """
    if not cands:
        raise ValueError("no candidates to choose from")
    inside = [i for i, c in enumerate(cands) if c.error <= tol / margin]
    if not inside:
        return min(range(len(cands)), key=lambda i: cands[i].error)
    sparsest = min(cands[i].l0 for i in inside)
    ties = [i for i in inside if cands[i].l0 <= sparsest * (1 + L0_TIE)]
    return min(ties, key=lambda i: cands[i].error)


def choose_from_records(records: list[dict[str, float]], error_key: str, tol: float) -> int:
    """``choose_setting`` on a method's selection records (dicts with ``error_key``, l0)."""
    return choose_setting([Candidate(r[error_key], r["l0"]) for r in records], tol)


def holdout_split(x_ND: Tensor, frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded (train, held-out) split of the rows; both parts non-empty."""
    from decompbench.seeding import generator

    perm = torch.randperm(x_ND.shape[0], generator=generator(seed, "method/holdout"))
    n_hold = min(max(1, int(frac * x_ND.shape[0])), x_ND.shape[0] - 1)
    return x_ND[perm[n_hold:]], x_ND[perm[:n_hold]]
