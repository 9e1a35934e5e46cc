"""`data-structure` — DESIGN.md §1 example 1: an intricate curve the model ignores.

What it models
    The inputs lie on a closed 1-D curve in ``d_model`` dimensions,

        h(t) = sum_c  A_c cos(f_c t + phi_c) a_c  +  B_c sin(f_c t + phi_c) b_c,   t ~ U[0, 2 pi),

    one ellipse (a "Fourier component") per frequency f_c, with orthonormal axes a_c, b_c
    and semi-axes A_c = s / sqrt(f_c), B_c = 0.6 A_c. The coordinates split in two blocks:
    R, the first ``n_read`` coordinates, and U, the rest. The ``freqs_read`` components
    lie in R, the ``freqs_unread`` ones in U (scale s = ``unread_scale``, default 3, so the
    curve's largest variance lies in U). Inside each block the axes are a random rotation
    of the coordinate axes, so no Fourier direction is a coordinate axis. The site
    ``hidden`` is the model's first activation; its embedding is the identity, so input
    space and activation space coincide, as in the example.

Twins (``use``; activations identical bit for bit, only the downstream differs)
    * ``coordinates`` (the example): output i = LeakyReLU_0.5(h_i) for i in R, an
      elementwise nonlinearity per coordinate; the U coordinates are never read.
    * ``curve``: output c = LeakyReLU_0.5(v . h) for every Fourier axis v of the curve;
      the model reads the curve's own components.

Ground truth at ``hidden`` (why it is the truth)
    * ``coordinates``: model features are the coordinate axes e_i of R, activation h_i.
      The readout is elementwise and strictly monotone, so e_i is the only direction (up
      to scale) that moves exactly one output, and it moves output i on every sample.
      Data-only features are the Fourier axes in U, activations A cos(.) and B sin(.):
      U is never read, so moving h along them leaves every output unchanged exactly. They
      are the structure an activation decomposition latches onto (with distinct
      frequencies and semi-axes they are exactly the principal axes of the covariance
      restricted to U); any other basis of U would be equally output-irrelevant.
    * ``curve``: every Fourier axis is read by one output unit and is a model feature.
    In both twins the features reconstruct h exactly (the directions are orthonormal).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy

MINOR_RATIO = 0.6
LEAK = 0.5


class DataStructureParams(StrictModel):
    d_model: int = Field(default=10, ge=2, description="activation dimension")
    n_read: int = Field(default=4, ge=1, description="coordinates read by use=coordinates")
    freqs_read: list[int] = Field(
        default=[1, 2], min_length=1, description="curve frequencies lying in the read coordinates"
    )
    freqs_unread: list[int] = Field(
        default=[3, 5, 7], description="curve frequencies lying in the unread coordinates"
    )
    unread_scale: float = Field(
        default=3.0,
        gt=0,
        description="scale of the unread frequencies (carry most of the variance)",
    )
    use: Literal["coordinates", "curve"] = Field(
        default="coordinates",
        description="twin: read coordinates elementwise, or the read frequencies' Fourier axes",
    )

    @model_validator(mode="after")
    def _check(self) -> DataStructureParams:
        freqs = self.freqs_read + self.freqs_unread
        if any(f < 1 for f in freqs) or len(set(freqs)) != len(freqs):
            raise ValueError(f"frequencies must be distinct positive integers, got {freqs}")
        if self.n_read > self.d_model:
            raise ValueError(f"n_read = {self.n_read} exceeds d_model = {self.d_model}")
        if 2 * len(self.freqs_read) > self.n_read:
            raise ValueError(
                f"{len(self.freqs_read)} read components need 2 dims each: "
                f"n_read = {self.n_read} is too small"
            )
        if 2 * len(self.freqs_unread) > self.d_model - self.n_read:
            raise ValueError(
                f"{len(self.freqs_unread)} unread components need 2 dims each: "
                f"d_model - n_read = {self.d_model - self.n_read} is too small"
            )
        return self


def _block_axes(g: torch.Generator, offset: int, size: int, d: int, n_axes: int) -> Tensor:
    """[n_axes, d] orthonormal rows: a random rotation of the coordinate block [offset, +size)."""
    if n_axes == 0:
        return torch.zeros(0, d)
    q_SS, _ = torch.linalg.qr(torch.randn(size, size, generator=g))
    axes = torch.zeros(n_axes, d)
    axes[:, offset : offset + size] = q_SS[:, :n_axes].T
    return axes


@register_toy("data-structure")
class DataStructure(Toy):
    summary = "inputs on an intricate closed curve; the model reads coordinates independently"
    Params = DataStructureParams
    params: DataStructureParams
    fourier_CD: Tensor  # buffer: rows 2c, 2c+1 are the cos / sin axes of component c
    semi_axes_C: Tensor  # buffer: the semi-axis of each axis (A_c, B_c interleaved)
    phases: Tensor  # buffer: phi_c

    def __init__(self, params: DataStructureParams, seed: int) -> None:
        super().__init__(params, seed)
        p = params
        g = generator(seed, "data-structure/directions")
        r, d = p.n_read, p.d_model
        ax_read = _block_axes(g, 0, r, d, 2 * len(p.freqs_read))
        ax_unread = _block_axes(g, r, d - r, d, 2 * len(p.freqs_unread))
        # Rows 2c, 2c+1: the cos and sin axes of component c (read components first).
        self.register_buffer("fourier_CD", torch.cat([ax_read, ax_unread]))
        self.freqs = p.freqs_read + p.freqs_unread
        scale = [1.0] * len(p.freqs_read) + [p.unread_scale] * len(p.freqs_unread)
        major = torch.tensor([s / math.sqrt(f) for s, f in zip(scale, self.freqs, strict=True)])
        self.register_buffer("semi_axes_C", torch.stack([major, MINOR_RATIO * major], 1).ravel())
        self.register_buffer("phases", 2 * math.pi * torch.rand(len(self.freqs), generator=g))
        self.readout = self._make_readout()

    @property
    def sites(self) -> tuple[str, ...]:
        return ("hidden",)

    def _make_readout(self) -> nn.Sequential:
        p = self.params
        rows = torch.eye(p.d_model)[: p.n_read] if p.use == "coordinates" else self.fourier_CD
        lin = nn.Linear(p.d_model, rows.shape[0])
        lin.weight.data = rows.clone()
        lin.bias.data.zero_()
        return nn.Sequential(lin, nn.LeakyReLU(LEAK))

    def component_coefs(self, t_N: Tensor) -> Tensor:
        """[n, 2C] the curve's coordinates along each Fourier axis at positions ``t_N``."""
        angle_NC = t_N[:, None] * torch.tensor(self.freqs, dtype=t_N.dtype) + self.phases
        trig = torch.stack([torch.cos(angle_NC), torch.sin(angle_NC)], dim=2).flatten(1)
        return trig * self.semi_axes_C

    def sample(self, n: int, seed: int) -> Batch:
        t_N = 2 * math.pi * torch.rand(n, generator=generator(seed, "data-structure/sample"))
        coefs = self.component_coefs(t_N)
        inputs_ND = coefs @ self.fourier_CD
        if self.params.use == "curve":
            feats = coefs
        else:
            n_read_axes = 2 * len(self.params.freqs_read)
            feats = torch.cat([inputs_ND[:, : self.params.n_read], coefs[:, n_read_axes:]], 1)
        return Batch(inputs=inputs_ND, features={"hidden": feats})

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        return inputs.clone()

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.readout

    def forward(self, inputs: Tensor) -> Tensor:
        return self.readout(inputs)

    def _fourier_names(self) -> list[str]:
        return [f"f{f}{trig}" for f in self.freqs for trig in ("cos", "sin")]

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        p = self.params
        names = self._fourier_names()
        if p.use == "curve":
            return GroundTruth(self.fourier_CD.clone(), tuple(names), (True,) * len(names))
        n_read_axes = 2 * len(p.freqs_read)
        unread = self.fourier_CD[n_read_axes:]
        dirs = torch.cat([torch.eye(p.d_model)[: p.n_read], unread])
        all_names = [f"coord{i}" for i in range(p.n_read)] + names[n_read_axes:]
        is_model = (True,) * p.n_read + (False,) * unread.shape[0]
        return GroundTruth(dirs, tuple(all_names), is_model)
