"""`curve` — DESIGN.md §1 example 2: the model's dictionary is not the data's.

What it models
    A closed 1-D curve in a 2 * ``n_freq`` (default 10) dimensional subspace of
    ``d_model`` (default 12) dimensions,

        c(t) = sum_{f=1..n_freq} alpha_f (cos(f t) a_f + sin(f t) b_f),   alpha_f^2 ∝ 1/f,

    with orthonormal a_f, b_f (a random rotation) and sum alpha_f^2 = 1, so |c(t)| = 1
    and c(t) . c(s) = K(t - s) with the kernel K(D) = sum_f alpha_f^2 cos(f D). Inputs are
    positions t ~ U[0, 2 pi); the site ``hidden`` holds h = c(t).

    The next layer is ``n_units`` (default 100) ReLU units tuned to positions s_j on the
    curve: unit j = ReLU(g_j (w_j . h - theta_j)) with w_j = c(s_j), threshold
    theta_j = K(r_j) for a tuning half-width r_j, and gain g_j = 1 / (1 - theta_j) (peak
    output 1). Unit j fires exactly on the arc |t - s_j| < r_j, because K decreases on
    its main lobe and stays below every threshold outside it (checked: parameters for
    which a threshold falls under the side lobes are rejected). The half-width is
    ``overlap`` times the local spacing of the units, so every point of the curve drives
    about 2 units.

Twins (``use``; activations identical bit for bit, only the read units differ)
    * ``focused`` (the example): a share ``fine_frac`` of the units sits densely on one
      arc of length ``fine_arc`` (0.5 rad, 8 % of the curve), the rest coarsely on the
      remaining 92 %: coarse in most places, fine only where it matters downstream.
    * ``uniform``: the same number of units, evenly spaced.
    A dictionary that follows the data density (which is uniform in t) tiles the curve
    evenly, like the ``uniform`` twin, whichever twin it is run on.

Ground truth at ``hidden`` (why it is the truth)
    The read directions w_j (unit norm): unit j's output depends on h only through
    w_j . h (moving h orthogonally to w_j leaves it unchanged; moving along w_j by delta
    changes it by g_j delta where it fires; tested). All are model features; there are no
    data-only features. The true activation of feature j is the unit's
    *post*-activation: it is what the next layer passes on, and it is local (non-zero
    only on the unit's arc), whereas the pre-activation w_j . h = K(t - s_j) is a dense
    kernel bump that is non-zero almost everywhere on the curve.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy

TWO_PI = 2 * math.pi
SIDE_LOBE_MARGIN = 1e-3


class CurveParams(StrictModel):
    d_model: int = Field(
        default=12, ge=2, description="activation dimension of the curve's ambient space"
    )
    n_freq: int = Field(default=5, ge=1, description="the curve spans 2 * n_freq dims")
    n_units: int = Field(default=100, ge=2, description="read directions of the next layer")
    fine_frac: float = Field(default=0.5, gt=0, lt=1, description="share of units on the arc")
    fine_arc: float = Field(default=0.5, gt=0, lt=TWO_PI, description="radians")
    overlap: float = Field(default=1.0, gt=0, description="tuning half-width / spacing")
    use: Literal["focused", "uniform"] = Field(
        default="focused",
        description="twin: next-layer units focused on an arc, or uniform around the curve",
    )

    @model_validator(mode="after")
    def _check(self) -> CurveParams:
        if 2 * self.n_freq > self.d_model:
            raise ValueError(f"2 * n_freq = {2 * self.n_freq} exceeds d_model = {self.d_model}")
        n_fine = fine_count(self.n_units, self.fine_frac)
        if not 0 < n_fine < self.n_units:
            raise ValueError(f"fine_frac = {self.fine_frac} leaves no fine or no coarse unit")
        # Float on purpose: the boundary fine_arc = 2 pi n_fine / n_units is irrational, so
        # no decimal input lies on it and exact arithmetic (decompbench.exact) has no
        # intended answer to protect; float errs only within ~1e-15 of it.
        spacing_fine = self.fine_arc / n_fine
        spacing_coarse = (TWO_PI - self.fine_arc) / (self.n_units - n_fine)
        if spacing_fine >= spacing_coarse:
            raise ValueError(
                f"the fine arc is not finer: spacing {spacing_fine:.3g} there vs "
                f"{spacing_coarse:.3g} elsewhere"
            )
        widest = self.overlap * max(spacing_coarse, TWO_PI / self.n_units)
        side = side_lobe_max(self.n_freq)
        if kernel(self.n_freq, widest) <= side + SIDE_LOBE_MARGIN:
            raise ValueError(
                f"tuning half-width {widest:.3g} rad is too wide for the curve's kernel "
                f"(units would fire on several arcs): use more units or a smaller overlap"
            )
        return self


def fine_count(n_units: int, fine_frac: float) -> int:
    return round(n_units * fine_frac)


def kernel_weights(n_freq: int) -> Tensor:
    """alpha_f^2 ∝ 1/f, summing to 1 (float64)."""
    w = 1.0 / torch.arange(1, n_freq + 1, dtype=torch.float64)
    return w / w.sum()


def kernel(n_freq: int, delta: float | Tensor) -> float:
    """K(delta) = c(t) . c(t + delta)."""
    f = torch.arange(1, n_freq + 1, dtype=torch.float64)
    return float((kernel_weights(n_freq) * torch.cos(f * float(delta))).sum())


@lru_cache(maxsize=64)
def side_lobe_max(n_freq: int) -> float:
    """Largest value of K beyond its main lobe (past the first local minimum)."""
    d = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    f = torch.arange(1, n_freq + 1, dtype=torch.float64)
    k = (kernel_weights(n_freq) * torch.cos(d[:, None] * f)).sum(dim=1)
    rising = (k[1:] > k[:-1]).nonzero()
    return float(k[int(rising[0]) :].max()) if len(rising) else -1.0


def unit_layout(p: CurveParams) -> tuple[Tensor, Tensor]:
    """Positions s_j and tuning half-widths r_j of the read units (float64)."""
    j = torch.arange(p.n_units, dtype=torch.float64)
    if p.use == "uniform":
        return TWO_PI * (j + 0.5) / p.n_units, torch.full_like(j, p.overlap * TWO_PI / p.n_units)
    n_fine = fine_count(p.n_units, p.fine_frac)
    n_coarse = p.n_units - n_fine
    fine = p.fine_arc * (j[:n_fine] + 0.5) / n_fine
    coarse = p.fine_arc + (TWO_PI - p.fine_arc) * (j[:n_coarse] + 0.5) / n_coarse
    widths = torch.cat(
        [
            torch.full((n_fine,), p.overlap * p.fine_arc / n_fine, dtype=torch.float64),
            torch.full(
                (n_coarse,), p.overlap * (TWO_PI - p.fine_arc) / n_coarse, dtype=torch.float64
            ),
        ]
    )
    return torch.cat([fine, coarse]), widths


@register_toy("curve")
class Curve(Toy):
    summary = "closed curve in 10-D; the next layer reads 100 directions, dense on one arc"
    Params = CurveParams
    params: CurveParams
    axes_AD: Tensor  # buffer: the curve's cos / sin axes, scaled by alpha_f

    def __init__(self, params: CurveParams, seed: int) -> None:
        super().__init__(params, seed)
        p = params
        g = generator(seed, "curve/directions")
        q_DD, _ = torch.linalg.qr(torch.randn(p.d_model, p.d_model, generator=g))
        # Rows 2(f-1), 2(f-1)+1: the cos and sin axes of frequency f, scaled by alpha_f.
        alpha = kernel_weights(p.n_freq).sqrt().float().repeat_interleave(2)
        self.register_buffer("axes_AD", q_DD[:, : 2 * p.n_freq].T * alpha[:, None])
        self.positions, self.widths = unit_layout(p)
        self.units = self._make_units()

    @property
    def sites(self) -> tuple[str, ...]:
        return ("hidden",)

    def embed(self, t_N: Tensor) -> Tensor:
        """[n, d] the curve c(t)."""
        f = torch.arange(1, self.params.n_freq + 1, dtype=t_N.dtype)
        angle = t_N.reshape(-1, 1) * f
        trig = torch.stack([torch.cos(angle), torch.sin(angle)], dim=2).flatten(1)
        return trig @ self.axes_AD

    def _make_units(self) -> nn.Sequential:
        thetas = torch.tensor([kernel(self.params.n_freq, r) for r in self.widths])
        gains = 1.0 / (1.0 - thetas)
        w_UD = self.embed(self.positions.float())
        lin = nn.Linear(self.params.d_model, self.params.n_units)
        lin.weight.data = (gains[:, None] * w_UD).float()
        lin.bias.data = (-gains * thetas).float()
        return nn.Sequential(lin, nn.ReLU())

    def sample(self, n: int, seed: int) -> Batch:
        t_N1 = TWO_PI * torch.rand(n, 1, generator=generator(seed, "curve/sample"))
        feats = self.units(self.embed(t_N1))
        return Batch(inputs=t_N1, features={"hidden": feats})

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        return self.embed(inputs)

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.units

    def forward(self, inputs: Tensor) -> Tensor:
        return self.units(self.embed(inputs))

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        lin = self.units[0]
        assert isinstance(lin, nn.Linear)
        w_UD = lin.weight.data
        dirs = w_UD / w_UD.norm(dim=1, keepdim=True)
        names = tuple(f"unit{j}@{float(s):.3f}" for j, s in enumerate(self.positions))
        return GroundTruth(dirs, names, (True,) * len(names))
