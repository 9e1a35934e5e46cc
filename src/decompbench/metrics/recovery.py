"""Ground-truth recovery scores (DESIGN.md §4). Pure functions of tensors.

``G_KD`` are the k true unit directions, ``D_MD`` the m learned unit directions (pass
only alive latents), ``A_NK`` / ``Z_NM`` their activations on the same samples.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

TAU = 0.9


def unit_rows(X_MD: Tensor) -> Tensor:
    return X_MD / X_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def abs_cos(G_KD: Tensor, D_MD: Tensor) -> Tensor:
    """[k, m] |cosine| between true and learned directions."""
    assert G_KD.shape[1] == D_MD.shape[1], f"dims differ: {G_KD.shape} vs {D_MD.shape}"
    return (unit_rows(G_KD.double()) @ unit_rows(D_MD.double()).T).abs()


def hungarian(sim_KM: Tensor) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs maximising the summed similarity."""
    if sim_KM.numel() == 0:
        return []
    rows, cols = linear_sum_assignment(sim_KM.cpu().numpy(), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _matched_sum(sim_KM: Tensor) -> float:
    """Sum of a Hungarian one-to-one matching maximising similarity."""
    return float(sum(float(sim_KM[r, c]) for r, c in hungarian(sim_KM)))


def mmcs(G_KD: Tensor, D_MD: Tensor) -> float:
    """Mean over true features of the max |cos| with any learned direction."""
    if D_MD.shape[0] == 0:
        return 0.0
    return float(abs_cos(G_KD, D_MD).max(dim=1).values.mean())


def mcc(G_KD: Tensor, D_MD: Tensor) -> float:
    """Hungarian one-to-one matching on |cos|, summed and divided by the true features."""
    return _matched_sum(abs_cos(G_KD, D_MD)) / G_KD.shape[0]


def mcc_strict(G_KD: Tensor, D_MD: Tensor) -> float:
    """As ``mcc`` but divided by max(true features, learned latents): extra latents cost."""
    return _matched_sum(abs_cos(G_KD, D_MD)) / max(G_KD.shape[0], D_MD.shape[0])


def abs_corr(A_NK: Tensor, Z_NM: Tensor) -> Tensor:
    """[k, m] |Pearson correlation| between columns; constant columns correlate 0."""
    a = A_NK.double() - A_NK.double().mean(dim=0)
    z = Z_NM.double() - Z_NM.double().mean(dim=0)
    na, nz = a.norm(dim=0), z.norm(dim=0)
    corr = (a.T @ z) / (na[:, None] * nz[None, :]).clamp_min(1e-12)
    corr[na < 1e-9, :] = 0.0
    corr[:, nz < 1e-9] = 0.0
    return corr.abs()


def mcc_act(A_NK: Tensor, Z_NM: Tensor) -> float:
    """Hungarian matching on |activation correlation|, divided by the true features."""
    return _matched_sum(abs_corr(A_NK, Z_NM)) / A_NK.shape[1]


def recall(G_KD: Tensor, D_MD: Tensor, tau: float = TAU) -> float:
    """Share of true features matched by some learned direction with |cos| >= tau."""
    if D_MD.shape[0] == 0:
        return 0.0
    return float((abs_cos(G_KD, D_MD).max(dim=1).values >= tau).double().mean())


def precision(G_KD: Tensor, D_MD: Tensor, tau: float = TAU) -> float:
    """Share of learned directions that match some true feature with |cos| >= tau."""
    if D_MD.shape[0] == 0:
        return 0.0
    return float((abs_cos(G_KD, D_MD).max(dim=0).values >= tau).double().mean())


def _best_composite_cos(G_KD: Tensor, groups: list[int], d_D: Tensor) -> float:
    """Max cos of ``d`` with a normalised sum of >= 2 features from distinct groups.

    Per group only the feature most aligned with ``d`` can help; the best sum takes
    the top-r groups for some r, so r = 2..n_groups is searched exhaustively.
    """
    cos_K = unit_rows(G_KD) @ (d_D / d_D.norm())
    best_feature: dict[int, int] = {}
    for i, g in enumerate(groups):
        if g not in best_feature or cos_K[i] > cos_K[best_feature[g]]:
            best_feature[g] = i
    order = sorted(best_feature.values(), key=lambda i: -float(cos_K[i]))
    best = -1.0
    for r in range(2, len(order) + 1):
        s_D = unit_rows(G_KD[order[:r]]).sum(dim=0)
        best = max(best, float(s_D @ d_D / (s_D.norm() * d_D.norm())))
    return best


def composition(G_KD: Tensor, groups: list[int], D_MD: Tensor, tau: float = TAU) -> float:
    """Share of learned directions aligned (cos >= tau, either sign) with a composite."""
    if D_MD.shape[0] == 0 or len(set(groups)) < 2:
        return 0.0
    G, D = G_KD.double(), D_MD.double()
    hits = [any(_best_composite_cos(G, groups, s * d) >= tau for s in (1, -1)) for d in D]
    return sum(hits) / D.shape[0]


def span_basis(X_ND: Tensor, rel_tol: float = 1e-5) -> Tensor:
    """[r, d] orthonormal basis of the row span of the data (uncentred)."""
    _, s, vh = torch.linalg.svd(X_ND.double(), full_matrices=False)
    rank = int((s > rel_tol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return vh[:rank]


def random_dictionary(m: int, basis_RD: Tensor, gen: torch.Generator) -> Tensor:
    """[m, d] unit directions drawn isotropically inside the span of ``basis_RD``."""
    coef = torch.randn(m, basis_RD.shape[0], generator=gen, dtype=torch.float64)
    return unit_rows(coef @ basis_RD)
