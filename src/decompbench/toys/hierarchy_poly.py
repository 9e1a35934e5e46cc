"""`hierarchy-poly` — the absorption toy read through polysemantic neurons.

What it models
    The activations of ``hierarchy`` exactly (same parameters and seeds: parents, their
    mutually exclusive children and independent features, near-orthogonal unit directions
    u_i, h = sum_i a_i u_i), read by a downstream whose first layer is polysemantic:
    ``neurons_per_feature * K`` neurons, each reading ``fan_in`` of the K features through
    the dual basis R (r_i . u_j = delta_ij) with random signs and magnitudes (a random
    sparse mixing A), then the exact linear un-mixing pinv(A) and the per-feature ReLU
    (``decompbench.toys.mixing``):

        out = ReLU(pinv(A) A R h)  =  ReLU(R h)  =  a      (pinv(A) A = I)

    So the toy computes exactly what ``hierarchy`` computes (tested to 1e-5), but the
    first linear map the downstream applies is A R, whose rows each mix ``fan_in``
    features: reading the weights (the ``weights`` baseline) does not give the features
    (strict MCC measured <= 0.5 in tests/test_toy_hierarchy_poly.py).

Ground truth at ``hidden`` (why it is the truth)
    That of ``hierarchy``: the directions u_i, all model features, activations a_i, the
    same groups. The neuron layer is linear, so it is not a privileged basis; the first
    nonlinearity reads r_i . h = a_i. Subtracting a_i u_i from h zeroes exactly out_i and
    leaves every other output unchanged; a direction orthogonal to every u_i (there are
    d_model - K of them when d_model > K) changes nothing (tests).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.hierarchy import Hierarchy, HierarchyParams, dual_basis
from decompbench.toys.mixing import draw_sparse_mixing, polysemantic_readout


class HierarchyPolyParams(HierarchyParams):
    fan_in: int = Field(default=3, ge=2, description="features each neuron reads")
    neurons_per_feature: int = Field(
        default=2, ge=1, description="neurons in the mixing layer per feature"
    )

    @model_validator(mode="after")
    def _fan_in_fits(self) -> HierarchyPolyParams:
        if self.fan_in > self.n_features:
            raise ValueError(f"fan_in = {self.fan_in} exceeds n_features = {self.n_features}")
        return self


@register_toy("hierarchy-poly")
class HierarchyPoly(Hierarchy):
    summary = "hierarchy read through polysemantic neurons (sparse mixing, exact un-mixing)"
    Params = HierarchyPolyParams
    params: HierarchyPolyParams

    def __init__(self, params: HierarchyPolyParams, seed: int) -> None:
        super().__init__(params, seed)
        k = params.n_features
        g = generator(seed, "hierarchy-poly/mixing")
        mixing_NK = draw_sparse_mixing(k, params.neurons_per_feature * k, params.fan_in, g)
        read_KD = dual_basis(self.directions_KD)
        self.readout = polysemantic_readout(read_KD, None, mixing_NK, nn.ReLU())
