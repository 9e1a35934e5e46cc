"""Polysemantic readouts: neurons that each read several features, then an exact un-mixing.

Shared by the polysemantic toys (``composed-poly``, ``hierarchy-poly``). A monosemantic
readout applies ``f(R h + b)`` to the site's activations h, one row of R per feature
(``f`` the readout's nonlinearity). Its polysemantic version inserts a layer of
``neurons_per_feature * K`` *neurons* in front of it:

    n = A (R h)                 # neurons: each row of A has ``fan_in`` non-zero entries
    out = f(pinv(A) n + b)      # exact linear un-mixing, then the original readout

A is a random sparse mixing matrix (random features per neuron, magnitudes U[0.5, 1] with
random signs), drawn until it has full column rank with a condition number below
``MAX_COND``, so pinv(A) A = I and ``out`` equals the monosemantic readout for every h (up
to float rounding, about 1e-6). The first linear map the downstream applies is ``A R``:
its rows are mixtures of ``fan_in`` features, so reading them (the ``weights`` baseline)
does not give the features, while the model's features (the directions its first
nonlinearity reads) are still the rows of R. The neurons are linear: no nonlinearity sits
between them and the un-mixing, so they are not a privileged basis; that is what makes
the construction exact (a ReLU on the neurons would clip off-distribution, e.g. after an
ablation, and break the un-mixing).

Reading A R's rows gives, per feature, at best a cosine of about 1/sqrt(fan_in) with the
feature (for orthonormal features and equal weights), and there are
``neurons_per_feature`` rows per feature to pay for in a strict score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MAX_COND = 20.0  # the mixing must be well conditioned so the un-mixing is accurate
MAX_DRAWS = 100


class MixingError(ValueError):
    """No well-conditioned mixing was found (too few features for the fan-in)."""


def draw_sparse_mixing(n_feat: int, n_neurons: int, fan_in: int, g: torch.Generator) -> Tensor:
    """[n_neurons, n_feat] float64: each row reads ``fan_in`` distinct features; every
    feature is read by at least ``n_neurons // n_feat`` neurons; full column rank."""
    for _ in range(MAX_DRAWS):
        own_N = torch.randperm(n_feat, generator=g).repeat(n_neurons // n_feat + 1)[:n_neurons]
        A_NK = torch.zeros(n_neurons, n_feat, dtype=torch.float64)
        for j in range(n_neurons):
            others = torch.randperm(n_feat, generator=g)
            others = others[others != own_N[j]][: fan_in - 1]
            cols = torch.cat([own_N[j : j + 1], others])
            mag = 0.5 + 0.5 * torch.rand(fan_in, generator=g, dtype=torch.float64)
            sign = torch.randint(0, 2, (fan_in,), generator=g).double() * 2 - 1
            A_NK[j, cols] = mag * sign
        if float(torch.linalg.cond(A_NK)) < MAX_COND:
            return A_NK
    raise MixingError(
        f"no mixing of {n_feat} features into {n_neurons} neurons with fan_in {fan_in} "
        f"has condition number < {MAX_COND}"
    )


def polysemantic_readout(
    read_KD: Tensor, bias_K: Tensor | None, mixing_NK: Tensor, final: nn.Module
) -> nn.Sequential:
    """``final(pinv(A) (A R) h + b)`` as modules: Linear(d -> neurons, weight A R, no bias),
    Linear(neurons -> K, weight pinv(A), bias b), ``final``."""
    n_neurons, k = mixing_NK.shape
    d = read_KD.shape[1]
    neurons = nn.Linear(d, n_neurons, bias=False)
    neurons.weight.data = (mixing_NK @ read_KD.double()).float()
    unmix = nn.Linear(n_neurons, k)
    unmix.weight.data = torch.linalg.pinv(mixing_NK).float()
    unmix.bias.data = torch.zeros(k) if bias_K is None else bias_K.clone().float()
    return nn.Sequential(neurons, unmix, final)
