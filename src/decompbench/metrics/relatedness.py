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
    centred R^2.
    """
    return pursuit_counts(y_N[:, None], C_NM, r2, max_terms)[0]


def pursuit_counts(
    Y_NT: Tensor, C_NM: Tensor, r2: float = R2, max_terms: int = 64
) -> list[int | None]:
    """``pursuit_count`` of every column of ``Y_NT``, run side by side.

    Everything happens in the M-dimensional coefficient space, from the Gram matrix
    C^T C and the correlations C^T y (so the cost does not grow with N): each target
    keeps its chosen columns as a basis q_k = C u_k orthonormal in the data space (two
    Gram-Schmidt passes), and updates its residual's correlations and energy by one
    projection per step. A chosen column already in the span (within ``SPAN_TOL`` of its
    norm) adds nothing to the basis but still counts as a term. Targets leave the batch
    as soon as they reach ``r2``.
    """
    C = C_NM.double()
    G_MM, corr_TM = C.T @ C, Y_NT.double().T @ C
    total_T = Y_NT.double().pow(2).sum(dim=0)
    counts: list[int | None] = [0 if float(t) <= 0 else None for t in total_T]
    ids_T = (total_T > 0).nonzero().flatten()  # the targets still open
    state = Pursuit(G_MM, corr_TM[ids_T], total_T[ids_T].clone(), total_T[ids_T])
    for n_terms in range(1, min(max_terms, C.shape[1]) + 1):
        if len(ids_T) == 0:
            break
        state.step()
        reached_T = 1.0 - state.energy_T / state.total_T >= r2 - 1e-9
        for t in ids_T[reached_T].tolist():
            counts[t] = n_terms
        ids_T = ids_T[~reached_T]
        state.keep(~reached_T)
    return counts


# A chosen column whose part outside the span of the columns chosen before is below this
# fraction of its norm adds nothing. Inputs are float32 (rounding ~1e-7), so a set that is
# rank-deficient by construction (the composed twins' 16 true directions span 13
# dimensions) must not write vectors outside its span through its rounding noise, with
# coefficients of 1e8. (A tolerance of 1e-10 did allow that; so does plain lstsq.)
SPAN_TOL = 1e-6


class Pursuit:
    """The state of greedy OMP for T targets over one dictionary, in coefficient space."""

    def __init__(self, G_MM: Tensor, corr_TM: Tensor, energy_T: Tensor, total_T: Tensor):
        T, M = corr_TM.shape
        self.G_MM, self.corr_TM, self.energy_T, self.total_T = G_MM, corr_TM, energy_T, total_T
        self.norms_M = G_MM.diagonal().clamp_min(1e-24).sqrt()
        self.taken_TM = torch.zeros(T, M, dtype=torch.bool)
        self.U_TKM = G_MM.new_zeros(T, 0, M)  # basis coefficients (zero rows: nothing new)
        self.GU_TKM = G_MM.new_zeros(T, 0, M)  # G u_k = C^T q_k

    def step(self) -> None:
        """Take each target's best column and project it out of the residual."""
        score_TM = self.corr_TM.abs() / self.norms_M
        score_TM[self.taken_TM] = -1.0
        j_T = score_TM.argmax(dim=1)
        rows = torch.arange(len(j_T))
        self.taken_TM[rows, j_T] = True
        u_TM = torch.zeros_like(self.corr_TM)
        u_TM[rows, j_T] = 1.0
        for _ in range(2):  # Gram-Schmidt against the basis, twice for numerical safety
            u_TM = u_TM - torch.einsum("tkm,tk->tm", self.U_TKM,
                                       torch.einsum("tkm,tm->tk", self.GU_TKM, u_TM))  # fmt: skip
        Gu_TM = u_TM @ self.G_MM
        sq_T = (u_TM * Gu_TM).sum(dim=1)
        new_T = sq_T > (SPAN_TOL * self.norms_M[j_T]) ** 2
        scale_T = torch.where(new_T, sq_T.clamp_min(1e-300).rsqrt(), 0.0)[:, None]
        u_TM, Gu_TM = u_TM * scale_T, Gu_TM * scale_T
        self.U_TKM = torch.cat([self.U_TKM, u_TM[:, None]], dim=1)
        self.GU_TKM = torch.cat([self.GU_TKM, Gu_TM[:, None]], dim=1)
        a_T = (u_TM * self.corr_TM).sum(dim=1)  # q . residual (= q . y)
        self.corr_TM = self.corr_TM - a_T[:, None] * Gu_TM
        self.energy_T = self.energy_T - a_T**2

    def keep(self, keep_T: Tensor) -> None:
        for name in ("corr_TM", "energy_T", "total_T", "taken_TM", "U_TKM", "GU_TKM"):
            setattr(self, name, getattr(self, name)[keep_T])


def direction_relatedness(G_KD: Tensor, D_MD: Tensor, r2: float = R2) -> list[int | None]:
    """For each true direction, the fewest learned directions that write it."""
    return pursuit_counts(G_KD.T, D_MD.T, r2)


def activation_relatedness(A_NK: Tensor, Z_NM: Tensor, r2: float = R2) -> list[int | None]:
    """For each true feature's activations, the fewest latents whose activations fit them."""
    A = A_NK.double() - A_NK.double().mean(dim=0)
    Z = Z_NM.double() - Z_NM.double().mean(dim=0)
    return pursuit_counts(A, Z, r2)


def summarise(counts: list[int | None], s: int = SPARSE_S) -> tuple[float | None, float]:
    """(median count with unreachable counted as infinite, share of counts <= s)."""
    if not counts:
        return None, 0.0
    vals = [float("inf") if c is None else float(c) for c in counts]
    med = statistics.median(vals)
    share = sum(v <= s for v in vals) / len(vals)
    return (None if med == float("inf") else med), share
