"""`composed` — the twins: identical activations, different downstream use.

What it models
    Objects built from k factors (e.g. colour x shape). Each sample picks one value of
    every factor (a factor is absent with probability ``p_absent``) and a magnitude in
    ``magnitude = [lo, hi]``. The activation at site ``hidden`` is

        h = sum_f  m_f * u_{f, v_f}

    where the value directions ``u_{f, .}`` of factor f are orthonormal and span a
    subspace of their own; the factor subspaces are mutually orthogonal (a direct sum).

The twins differ only downstream (``use``):
    * ``factored``: one ReLU output per value of each factor, ``ReLU(u_{f,v} . h)``;
      it reads each factor separately and outputs that value's magnitude.
    * ``composed``: one ReLU output per combination of values,
      ``ReLU((sum_f u_{f,v_f}) . h - theta)``, an exact conjunction. It fires iff every
      value of the combination is present, for every allowed magnitude, exactly when
      (k-1)*hi < theta <= k*lo; theta is set to the midpoint of that interval so a
      present conjunction always gives a positive output, and ranges for which the
      interval is empty are rejected. The check is exact, on the decimals given
      (``decompbench.exact``): k = 3, [0.8, 1.2] is rejected since 2 * 1.2 = 3 * 0.8.

Ground truth at ``hidden`` (why it is the truth)
    * ``factored``: the value directions ``u_{f,v}``, one per value, grouped by factor.
      Subtracting a feature's contribution m*u from h zeroes exactly its own output and
      leaves every other output unchanged (tests/test_toy_composed.py).
    * ``composed``: the normalised sums ``c = sum_f u_{f,v_f} / sqrt(k)``, one per
      combination, with activation ``h . c`` when all its values are present (else 0).
      Subtracting that contribution zeroes exactly its own conjunction output.
    Both twins draw their directions and samples from the same seeds, so their
    activations are identical bit for bit; any method that only sees activations must
    return one answer for both, and so is wrong about at least one of them.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import FloatPair, StrictModel
from decompbench.exact import decimal, show
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, EmbedReadoutToy, GroundTruth


class ComposedParams(StrictModel):
    values: list[int] = Field(
        default=[4, 4],
        min_length=1,
        description="values per factor (each >= 2); one factor per entry",
    )
    d_model: int = Field(default=16, ge=1, description="activation dimension (>= sum of values)")
    p_absent: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="probability that a factor is absent in a sample"
    )
    magnitude: FloatPair = Field(
        default=(1.0, 1.0), description="[lo, hi] of a present value's magnitude U[lo, hi]"
    )
    use: Literal["factored", "composed"] = Field(
        default="factored",
        description="twin: read each value (factored) or each combination (composed)",
    )

    @model_validator(mode="after")
    def _check(self) -> ComposedParams:
        if any(v < 2 for v in self.values):
            raise ValueError(
                f"values {self.values}: every factor needs at least 2 values (a factor with "
                "one value is a feature that is always on)"
            )
        if sum(self.values) > self.d_model:
            raise ValueError(
                f"sum(values) = {sum(self.values)} orthonormal directions do not fit in "
                f"d_model = {self.d_model}"
            )
        lo, hi = self.magnitude
        if not 0 < lo <= hi:
            raise ValueError(f"magnitude must satisfy 0 < lo <= hi, got [{lo}, {hi}]")
        k = len(self.values)
        false_max, true_min = (k - 1) * decimal(hi), k * decimal(lo)
        if self.use == "composed" and not false_max < true_min:
            raise ValueError(
                f"magnitude [{lo}, {hi}] admits no exact conjunction threshold for {k} "
                f"factors: need (k-1)*hi < k*lo exactly, got {show(false_max)} vs "
                f"{show(true_min)}"
            )
        return self


def conjunction_threshold(k: int, lo: float, hi: float) -> float:
    """Midpoint of the exact-conjunction interval ((k-1)*hi, k*lo], computed exactly on the
    decimals given (``decompbench.exact``) and rounded once."""
    return float(((k - 1) * decimal(hi) + k * decimal(lo)) / 2)


@register_toy("composed")
class Composed(EmbedReadoutToy):
    summary = "k factors in orthogonal subspaces; twins read them factored or as conjunctions"
    Params = ComposedParams
    params: ComposedParams

    def __init__(self, params: ComposedParams, seed: int) -> None:
        super().__init__(params, seed)
        self.combos = list(itertools.product(*(range(v) for v in params.values)))
        self.offsets = [sum(params.values[:f]) for f in range(len(params.values))]
        g = generator(seed, "composed/directions")
        q_DD, _ = torch.linalg.qr(torch.randn(params.d_model, params.d_model, generator=g))
        # Rows of the embedding: value directions, factor after factor (orthonormal).
        self.embed = nn.Linear(sum(params.values), params.d_model, bias=False)
        self.embed.weight.data = q_DD[:, : sum(params.values)].clone()
        self.readout = self._make_readout()

    @property
    def value_dirs_VD(self) -> Tensor:
        return self.embed.weight.data.T

    def _combo_rows(self) -> Tensor:
        """[combos, d]: unnormalised sum of the value directions of each combination."""
        u = self.value_dirs_VD
        idx = [[self.offsets[f] + v for f, v in enumerate(c)] for c in self.combos]
        return u[torch.tensor(idx)].sum(dim=1)

    def _make_readout(self) -> nn.Sequential:
        p = self.params
        if p.use == "factored":
            lin = nn.Linear(p.d_model, sum(p.values))
            lin.weight.data = self.value_dirs_VD.clone()
            lin.bias.data.zero_()
        else:
            lin = nn.Linear(p.d_model, len(self.combos))
            lin.weight.data = self._combo_rows()
            theta = conjunction_threshold(len(p.values), *p.magnitude)
            lin.bias.data.fill_(-theta)
        return nn.Sequential(lin, nn.ReLU())

    def sample(self, n: int, seed: int) -> Batch:
        p = self.params
        g = generator(seed, "composed/sample")
        lo, hi = p.magnitude
        codes = []
        for v in p.values:
            which = torch.randint(v, (n,), generator=g)
            present = torch.rand(n, generator=g) >= p.p_absent
            mag = lo + (hi - lo) * torch.rand(n, generator=g)
            onehot = nn.functional.one_hot(which, v).float()
            codes.append(onehot * (mag * present)[:, None])
        inputs_NV = torch.cat(codes, dim=1)
        feats = self._true_features(inputs_NV)
        return Batch(inputs=inputs_NV, features={"hidden": feats})

    def _true_features(self, inputs_NV: Tensor) -> Tensor:
        if self.params.use == "factored":
            return inputs_NV.clone()
        h_ND = self.acts("hidden", inputs_NV)
        gt = self.ground_truth("hidden")
        idx = [[self.offsets[f] + v for f, v in enumerate(c)] for c in self.combos]
        all_present_NC = (inputs_NV[:, torch.tensor(idx)] > 0).all(dim=2)
        return (h_ND @ gt.directions_KD.T) * all_present_NC

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        p = self.params
        if p.use == "factored":
            names = tuple(f"f{f}={v}" for f, n in enumerate(p.values) for v in range(n))
            groups = tuple(f for f, n in enumerate(p.values) for _ in range(n))
            dirs = self.value_dirs_VD.clone()
            return GroundTruth(dirs, names, (True,) * len(names), groups)
        rows = self._combo_rows() / math.sqrt(len(p.values))
        names = tuple("&".join(f"f{f}={v}" for f, v in enumerate(c)) for c in self.combos)
        return GroundTruth(rows, names, (True,) * len(names), None)
