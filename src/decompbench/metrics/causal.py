"""Faithfulness and causal agreement of a decomposition, measured through the downstream.

``f`` is the network from the site to its output. Pure functions of tensors and ``f``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Downstream = Callable[[Tensor], Tensor]


def output_fvu(f: Downstream, X_ND: Tensor, Xhat_ND: Tensor) -> float:
    """Output variance left unexplained when the reconstruction is spliced in."""
    y, yhat = f(X_ND).double(), f(Xhat_ND).double()
    total = (y - y.mean(dim=0)).pow(2).sum()
    return float((y - yhat).pow(2).sum() / total) if total > 0 else float("nan")


def change_agreement(delta_true_NO: Tensor, delta_latent_NO: Tensor) -> tuple[float, float]:
    """(cosine, relative error) between two output changes over all samples and outputs."""
    t, lat = delta_true_NO.double().flatten(), delta_latent_NO.double().flatten()
    nt = float(t.norm())
    if nt == 0:
        return float("nan"), float("nan")
    cos = float(t @ lat) / (nt * max(float(lat.norm()), 1e-12))
    return cos, float((lat - t).norm()) / nt


def ablation_agreement(
    f: Downstream,
    X_ND: Tensor,
    g_D: Tensor,
    a_N: Tensor,
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    latent: int,
) -> tuple[float, float]:
    """Ablate a true feature (subtract a * g) and, separately, its matched latent.

    The true change is measured on the toy's own activations; the latent change on the
    spliced reconstruction, with and without that latent zeroed.
    """
    delta_true = f(X_ND - a_N[:, None] * g_D) - f(X_ND)
    Z_NM = encode(X_ND)
    Z_ablated = Z_NM.clone()
    Z_ablated[:, latent] = 0
    delta_latent = f(decode(Z_ablated)) - f(decode(Z_NM))
    return change_agreement(delta_true, delta_latent)


@torch.no_grad()
def causal_agreement(
    f: Downstream,
    X_ND: Tensor,
    G_KD: Tensor,
    A_NK: Tensor,
    match: list[tuple[int, int]],
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
) -> tuple[float | None, float | None]:
    """Mean cosine and median relative error of the matched ablations (features that act)."""
    cosines, errors = [], []
    for k, m in match:
        cos, err = ablation_agreement(f, X_ND, G_KD[k], A_NK[:, k], encode, decode, m)
        if cos == cos:  # not NaN: the feature changes the output somewhere
            cosines.append(cos)
            errors.append(err)
    if not cosines:
        return None, None
    return sum(cosines) / len(cosines), float(torch.tensor(errors).median())
