"""`planted` — a planted sparse dictionary (Sharkey, Braun & Millidge 2022 style).

What it models
    ``n_features`` ground-truth unit directions g_i in ``d`` dimensions (random Gaussian
    directions from the toy's seed; more features than dimensions, so in
    superposition). Each sample activates feature i independently with probability
    p_i, decaying geometrically with the index, p_i ∝ ``decay``^i, scaled so that on
    average ``mean_active`` features are active (each p_i capped at 1); an active feature
    gets a coefficient c_i ~ U[0, 1]. The activation at site ``hidden`` is

        h = sum_i c_i g_i.

    Defaults: 512 features in 256 dims, about 5 active, decay 0.99 per index (the
    setting of DESIGN.md §5; the exact decay rate is this toy's choice). Use small
    ``n_features`` / ``d`` for tests.

Downstream (``readout``)
    * ``identity``: the output is h itself (the site is the output);
    * ``features``: output i = g_i . h, a linear read-out of every feature (with the
      interference superposition implies).

Ground truth at ``hidden`` (why it is the truth)
    The data is generated from the g_i: h is exactly sum_i c_i g_i (tested), the c_i are
    the features' activations, and both read-outs are linear in them, so ablating
    c_i g_i removes exactly feature i's contribution from every output. Every feature is
    a model feature; there are no factor groups.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy


class PlantedParams(StrictModel):
    n_features: int = Field(default=512, ge=1, description="planted dictionary directions")
    d: int = Field(default=256, ge=1, description="activation dimension")
    mean_active: float = Field(
        default=5.0, gt=0, description="expected number of active features per sample"
    )
    decay: float = Field(default=0.99, gt=0, le=1, description="p_{i+1} / p_i")
    readout: Literal["identity", "features"] = Field(
        default="identity", description="downstream: identity, or a readout of each feature"
    )

    @model_validator(mode="after")
    def _fits(self) -> PlantedParams:
        if self.mean_active > self.n_features:
            raise ValueError(
                f"mean_active = {self.mean_active} exceeds n_features = {self.n_features}"
            )
        return self


def feature_probs(n: int, mean_active: float, decay: float) -> Tensor:
    """p_i ∝ decay^i with sum p_i = mean_active, each capped at 1 (the cap is re-spread)."""
    w = decay ** torch.arange(n, dtype=torch.float64)
    p = torch.zeros(n, dtype=torch.float64)
    for _ in range(n):
        free = p < 1
        p[free] = w[free] * (mean_active - p[~free].sum()) / w[free].sum()
        if not bool((p > 1).any()):
            break
        p = p.clamp(max=1.0)
    return p.float()


@register_toy("planted")
class Planted(Toy):
    summary = "planted sparse dictionary: n_features random unit directions, ~5 active, U[0,1]"
    Params = PlantedParams
    params: PlantedParams
    dirs_KD: Tensor  # buffer: the planted unit directions
    probs_K: Tensor  # buffer: each feature's firing probability

    def __init__(self, params: PlantedParams, seed: int) -> None:
        super().__init__(params, seed)
        g = generator(seed, "planted/directions")
        dirs = torch.randn(params.n_features, params.d, generator=g)
        self.register_buffer("dirs_KD", dirs / dirs.norm(dim=1, keepdim=True))
        self.register_buffer("probs_K", feature_probs(params.n_features, params.mean_active,
                                                      params.decay))  # fmt: skip
        self.readout: nn.Module = nn.Identity()
        if params.readout == "features":
            lin = nn.Linear(params.d, params.n_features, bias=False)
            lin.weight.data = self.dirs_KD.clone()
            self.readout = lin

    @property
    def sites(self) -> tuple[str, ...]:
        return ("hidden",)

    def sample(self, n: int, seed: int) -> Batch:
        g = generator(seed, "planted/sample")
        k = self.params.n_features
        active = torch.rand(n, k, generator=g) < self.probs_K
        coef_NK = torch.rand(n, k, generator=g) * active
        return Batch(inputs=coef_NK, features={"hidden": coef_NK.clone()})

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        return inputs @ self.dirs_KD

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.readout

    def first_linear(self, site: str) -> Tensor:
        """The identity matrix when the readout is the identity, else its weight."""
        self.check_site(site)
        if isinstance(self.readout, nn.Linear):
            return self.readout.weight.detach().clone()
        return torch.eye(self.params.d)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.readout(self.acts("hidden", inputs))

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        k = self.params.n_features
        names = tuple(f"g{i}" for i in range(k))
        return GroundTruth(self.dirs_KD.clone(), names, (True,) * k, None)
