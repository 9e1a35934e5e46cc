"""Feature absorption (Chanin et al. 2024): a child latent swallows its parent's direction.

When a child feature fires its parent fires too (hierarchy), so a sparse dictionary can
save one active latent by folding the parent into each child's latent and letting the
parent's latent fall silent whenever a child is active. The absorption rate of a parent
is the share of samples with some child active on which the parent's latent is silent:
0 for a dictionary that keeps the parent as its own feature, 1 for full absorption.
Pure functions of tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scipy.optimize import linear_sum_assignment
from torch import Tensor

from decompbench.metrics.reconstruction import active
from decompbench.metrics.recovery import abs_cos


def match_latents(G_KD: Tensor, D_MD: Tensor) -> list[int]:
    """Latent matched to each true feature by Hungarian matching on |cos| (-1: none)."""
    if D_MD.shape[0] == 0:
        return [-1] * G_KD.shape[0]
    rows, cols = linear_sum_assignment(abs_cos(G_KD, D_MD).cpu().numpy(), maximize=True)
    out = [-1] * G_KD.shape[0]
    for r, c in zip(rows, cols, strict=True):
        out[int(r)] = int(c)
    return out


def absorption_rate(child_active_N: Tensor, parent_latent_active_N: Tensor) -> float:
    """Share of samples with a child active on which the parent's latent is silent."""
    n = int(child_active_N.sum())
    if n == 0:
        return float("nan")
    return float((child_active_N & ~parent_latent_active_N).sum()) / n


def absorption_rates(
    A_NK: Tensor, Z_NM: Tensor, latent_of: Sequence[int], children: Mapping[int, Sequence[int]]
) -> dict[int, float]:
    """Absorption rate per parent feature index.

    ``A_NK`` true feature activations, ``Z_NM`` latent activations on the same samples,
    ``latent_of[k]`` the latent matched to feature k (-1: none, counted as rate 1),
    ``children[p]`` the child feature indices of parent p.
    """
    fires_NM = active(Z_NM)
    rates = {}
    for parent, kids in children.items():
        child_active_N = (A_NK[:, list(kids)] > 0).any(dim=1)
        j = latent_of[parent]
        if j < 0:
            rates[parent] = 1.0 if bool(child_active_N.any()) else float("nan")
            continue
        rates[parent] = absorption_rate(child_active_N, fires_NM[:, j])
    return rates
