"""`composed-poly` — the composed twins with a polysemantic first downstream layer.

What it models
    The activations of ``composed`` exactly (same parameters, same seeds, same sampler:
    h = sum_f m_f u_{f, v_f}, value directions orthonormal, factor subspaces orthogonal),
    read by a downstream whose first layer is polysemantic, as neurons of real networks
    are: ``neurons_per_feature * K`` neurons (K = the twin's number of read features),
    each reading ``fan_in`` features with random signs and magnitudes (a random sparse
    mixing A), followed by the exact linear un-mixing pinv(A) and the twin's own readout
    (``decompbench.toys.mixing``):

        factored: out = ReLU(pinv(A) A U h)              (U: the value directions)
        composed: out = ReLU(pinv(A) A C h - theta)      (C: the combination rows)

    pinv(A) A = I (A is drawn with full column rank and condition number < 20), so each
    twin computes exactly what its ``composed`` counterpart computes (tested to 1e-5);
    only the weights differ. The first linear map the downstream applies is A U (or A C),
    whose rows each mix ``fan_in`` features, so the ``weights`` baseline, which reads
    those rows, no longer finds the features (its strict MCC is measured <= 0.5 in
    tests/test_toy_composed_poly.py).

Ground truth at ``hidden`` (why it is the truth)
    That of ``composed`` for the same ``use``: the value directions (``factored``) or the
    normalised combination sums (``composed``). They are the directions the downstream's
    first nonlinearity reads: the neuron layer is linear, so it is not a privileged
    basis, and the function from h to the output is the monosemantic twin's. Subtracting
    a feature's contribution zeroes exactly its own output and leaves the others
    unchanged; moving h along a direction orthogonal to every value direction changes
    nothing (tests/test_toy_composed_poly.py).

The twins
    ``use: factored`` and ``use: composed`` share the embedding and the sampler (the
    ``composed`` seeds), so their activations are identical bit for bit, and identical to
    ``composed``'s with the same parameters (tested). The mixing has its own seed tag.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.composed import Composed, ComposedParams, conjunction_threshold
from decompbench.toys.mixing import draw_sparse_mixing, polysemantic_readout


class ComposedPolyParams(ComposedParams):
    fan_in: int = Field(default=3, ge=2, description="features each neuron reads")
    neurons_per_feature: int = Field(
        default=2, ge=1, description="neurons in the mixing layer per read feature"
    )

    @model_validator(mode="after")
    def _fan_in_fits(self) -> ComposedPolyParams:
        n_feat = n_read_features(self)
        if self.fan_in > n_feat:
            raise ValueError(
                f"fan_in = {self.fan_in} exceeds the {n_feat} features the '{self.use}' twin reads"
            )
        return self


def n_read_features(p: ComposedParams) -> int:
    """Value directions (``factored``) or combinations (``composed``)."""
    if p.use == "factored":
        return sum(p.values)
    out = 1
    for v in p.values:
        out *= v
    return out


@register_toy("composed-poly")
class ComposedPoly(Composed):
    summary = "composed twins read through polysemantic neurons (sparse mixing, exact un-mixing)"
    Params = ComposedPolyParams
    params: ComposedPolyParams

    def _make_readout(self) -> nn.Sequential:
        p = self.params
        n_feat = n_read_features(p)
        g = generator(self.seed, "composed-poly/mixing")
        mixing_NK = draw_sparse_mixing(n_feat, p.neurons_per_feature * n_feat, p.fan_in, g)
        if p.use == "factored":
            return polysemantic_readout(self.value_dirs_VD, None, mixing_NK, nn.ReLU())
        theta = conjunction_threshold(len(p.values), *p.magnitude)
        bias_C = -theta * self._combo_rows().new_ones(n_feat)
        return polysemantic_readout(self._combo_rows(), bias_C, mixing_NK, nn.ReLU())
