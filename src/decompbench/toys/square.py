"""`square` — DESIGN.md §1 example 4a: x² with 10 ReLU neurons.

What it models
    A one-hidden-layer MLP y = W_out . ReLU(W_in x + b_in) + b_out that approximates
    g(x) = x² on ``interval`` = [lo, hi] with ``n_neurons`` (default 10) ReLU neurons,
    written in closed form as the piecewise-linear interpolant of g at the n + 1 evenly
    spaced knots k_j = lo + j h, h = (hi - lo) / n:

        neuron j = ReLU(x - k_j)            (W_in = 1, b_in = -k_j, j = 0..n-1)
        W_out[0] = s_0,  W_out[j] = s_j - s_{j-1},   s_j = (g(k_{j+1}) - g(k_j)) / h
        b_out = g(k_0)

    On [lo, hi] neuron 0 is linear (x - lo), and each later neuron adds the change of
    slope at its knot. The interpolant is exact at the knots and its error is at most
    h² max|g''| / 8 (= h²/4 for x², reached at the midpoints between knots). Inputs are
    x ~ U[lo, hi]; the site ``hidden`` holds the n post-ReLU activations.

Twins (``use``; hidden activations identical bit for bit, only W_out differs)
    * ``square``: g(x) = x² (the example);
    * ``cube``:   g(x) = x³ with the same knots and neurons.

Ground truth at ``hidden`` (why it is the truth)
    The output is linear in the hidden activations, so the only direction that matters
    downstream is u = W_out / |W_out|, a model feature with activation u . h: moving h by
    delta along u moves the output by |W_out| delta, and moving it along any direction
    orthogonal to u leaves the output unchanged (tested). u is special only through
    W_out: nothing in the activations singles it out.
    The n - 1 data-only features span u's orthogonal complement, which W_out ignores.
    The activations span all n dimensions (the n ramps are linearly independent), so the
    complement is where the data also varies. Its basis is a choice: we take the
    principal axes of the projected activations (eigenvectors of P E[h hᵀ] P, P the
    projector onto the complement, computed in closed form for x ~ U[lo, hi]), largest
    first; any orthonormal basis of the complement would be equally output-irrelevant.
    Activations are the uncentred projections, so the features reconstruct h exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import FloatPair, StrictModel
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy


class SquareParams(StrictModel):
    n_neurons: int = Field(default=10, ge=2, description="ReLU neurons of the interpolant")
    interval: FloatPair = Field(default=(-1.0, 1.0), description="[lo, hi] on which x is drawn")
    use: Literal["square", "cube"] = Field(
        default="square", description="twin: the readout computes x^2 (square) or x^3 (cube)"
    )

    @model_validator(mode="after")
    def _check(self) -> SquareParams:
        lo, hi = self.interval
        if not lo < hi:
            raise ValueError(f"interval must satisfy lo < hi, got [{lo}, {hi}]")
        return self


def target(use: str, x: Tensor) -> Tensor:
    return x**2 if use == "square" else x**3


def knots(p: SquareParams) -> Tensor:
    """The n + 1 interpolation knots (float64)."""
    lo, hi = p.interval
    return torch.linspace(lo, hi, p.n_neurons + 1, dtype=torch.float64)


def interpolation_error_bound(p: SquareParams) -> float:
    """h² max|g''| / 8 on the interval."""
    lo, hi = p.interval
    h = (hi - lo) / p.n_neurons
    max_g2 = 2.0 if p.use == "square" else 6.0 * max(abs(lo), abs(hi))
    return h * h * max_g2 / 8


def ramp_second_moment(k_N: Tensor, lo: float, hi: float) -> Tensor:
    """E[ReLU(x - k_i) ReLU(x - k_j)] for x ~ U[lo, hi] and knots k >= lo (closed form).

    For k_i <= k_j: the integral over [k_j, hi] of (x - k_i)(x - k_j), divided by hi - lo,
    which is (L³/3 + (k_j - k_i) L²/2) / (hi - lo) with L = hi - k_j.
    """
    a = torch.minimum(k_N[:, None], k_N[None, :])
    b = torch.maximum(k_N[:, None], k_N[None, :])
    length = (hi - b).clamp_min(0)
    return (length**3 / 3 + (b - a) * length**2 / 2) / (hi - lo)


@register_toy("square")
class Square(Toy):
    summary = "x² on an interval by 10 ReLU neurons (closed-form interpolant); twin: x³"
    Params = SquareParams
    params: SquareParams

    def __init__(self, params: SquareParams, seed: int) -> None:
        super().__init__(params, seed)
        k = knots(params)
        n = params.n_neurons
        self.w_in = nn.Linear(1, n)
        self.w_in.weight.data = torch.ones(n, 1)
        self.w_in.bias.data = (-k[:n]).float()
        g = target(params.use, k)
        slopes = (g[1:] - g[:-1]) / (k[1:] - k[:-1])
        self.w_out = nn.Linear(n, 1)
        self.w_out.weight.data = torch.cat([slopes[:1], slopes[1:] - slopes[:-1]])[None].float()
        self.w_out.bias.data = g[:1].float()

    @property
    def sites(self) -> tuple[str, ...]:
        return ("hidden",)

    def sample(self, n: int, seed: int) -> Batch:
        lo, hi = self.params.interval
        x_N1 = lo + (hi - lo) * torch.rand(n, 1, generator=generator(seed, "square/sample"))
        h = self.acts("hidden", x_N1)
        return Batch(
            inputs=x_N1, features={"hidden": h @ self.ground_truth("hidden").directions_KD.T}
        )

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        return torch.relu(self.w_in(inputs))

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.w_out

    def forward(self, inputs: Tensor) -> Tensor:
        return self.w_out(torch.relu(self.w_in(inputs)))

    def data_only_directions(self) -> Tensor:
        """[n-1, n] principal axes of the activations inside W_out's orthogonal complement."""
        p = self.params
        u = self.w_out.weight.data[0].double()
        u = u / u.norm()
        proj = torch.eye(p.n_neurons, dtype=torch.float64) - torch.outer(u, u)
        moment = ramp_second_moment(knots(p)[: p.n_neurons], *p.interval)
        evals, evecs = torch.linalg.eigh(proj @ moment @ proj)
        top = evecs[:, evals.argsort(descending=True)[: p.n_neurons - 1]].T
        signs = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
        return (top * signs).float()

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        w = self.w_out.weight.data[0]
        dirs = torch.cat([(w / w.norm())[None], self.data_only_directions()])
        names = ("W_out", *(f"data{i}" for i in range(dirs.shape[0] - 1)))
        return GroundTruth(dirs, names, (True,) + (False,) * (dirs.shape[0] - 1))
