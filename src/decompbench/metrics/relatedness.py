"""Sparse relatedness (stance 2a): how few learned latents write each true feature.

For a target vector y and a dictionary of candidate vectors, greedy orthogonal matching
pursuit adds, one at a time, the candidate that most reduces the residual, and stops
when R^2 >= ``r2``. The count is the *relatedness* of y to the dictionary; ``None`` when
even every candidate together cannot reach ``r2``. Applied to directions (a true unit
direction written with learned unit directions), to activations (a true feature's
activation over samples regressed on latent activations, with an intercept), and in
reverse (each learned direction written with true directions).
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor

R2 = 0.9
SPARSE_S = 3


def pursuit_count(y_N: Tensor, C_NM: Tensor, r2: float = R2, max_terms: int = 64) -> int | None:
    """Fewest columns of ``C_NM`` whose least-squares fit reaches R^2 >= r2 (greedy OMP).

    R^2 is measured against ||y||^2 (uncentred): centre both inputs first for the usual,
    centred R^2. The chosen columns are kept as an orthonormal basis (Gram-Schmidt), so
    each step is a projection, not a fresh least-squares solve.
    """
    y, C = y_N.double(), C_NM.double()
    total = float(y @ y)
    if total <= 0:
        return 0
    norms_M = C.norm(dim=0).clamp_min(1e-12)
    taken = torch.zeros(C.shape[1], dtype=torch.bool)
    Q_NK = y.new_zeros(y.shape[0], 0)  # orthonormal basis of the chosen columns
    resid = y
    for n_terms in range(1, min(max_terms, C.shape[1]) + 1):
        score_M = (C.T @ resid).abs() / norms_M
        score_M[taken] = -1.0
        j = int(score_M.argmax())
        taken[j] = True
        q = C[:, j] - Q_NK @ (Q_NK.T @ C[:, j])
        q = q - Q_NK @ (Q_NK.T @ q)  # second Gram-Schmidt pass for numerical safety
        qn = float(q.norm())
        if qn > 1e-10 * float(norms_M[j]):
            Q_NK = torch.cat([Q_NK, (q / qn)[:, None]], dim=1)
            resid = resid - (Q_NK[:, -1] @ resid) * Q_NK[:, -1]
        if 1.0 - float(resid @ resid) / total >= r2 - 1e-9:
            return n_terms
    return None


def direction_relatedness(G_KD: Tensor, D_MD: Tensor, r2: float = R2) -> list[int | None]:
    """For each true direction, the fewest learned directions that write it."""
    return [pursuit_count(g_D, D_MD.T, r2) for g_D in G_KD]


def activation_relatedness(A_NK: Tensor, Z_NM: Tensor, r2: float = R2) -> list[int | None]:
    """For each true feature's activations, the fewest latents whose activations fit them."""
    A = A_NK.double() - A_NK.double().mean(dim=0)
    Z = Z_NM.double() - Z_NM.double().mean(dim=0)
    return [pursuit_count(a_N, Z, r2) for a_N in A.T]


def summarise(counts: list[int | None], s: int = SPARSE_S) -> tuple[float | None, float]:
    """(median count with unreachable counted as infinite, share of counts <= s)."""
    if not counts:
        return None, 0.0
    vals = [float("inf") if c is None else float(c) for c in counts]
    med = statistics.median(vals)
    share = sum(v <= s for v in vals) / len(vals)
    return (None if med == float("inf") else med), share
