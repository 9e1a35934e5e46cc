"""Ground-truth recovery scores (DESIGN.md §4). Pure functions of tensors.

``G_KD`` are the k true unit directions, ``D_MD`` the m learned unit directions (pass
only alive latents), ``A_NK`` / ``Z_NM`` their activations on the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

TAU = 0.9


def unit_rows(X_MD: Tensor) -> Tensor:
    return X_MD / X_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine(G_KD: Tensor, D_MD: Tensor) -> Tensor:
    """[k, m] cosine between true and learned directions (double precision)."""
    assert G_KD.shape[1] == D_MD.shape[1], f"dims differ: {G_KD.shape} vs {D_MD.shape}"
    return unit_rows(G_KD.double()) @ unit_rows(D_MD.double()).T


def abs_cos(G_KD: Tensor, D_MD: Tensor) -> Tensor:
    """[k, m] |cosine| between true and learned directions."""
    return cosine(G_KD, D_MD).abs()


def hungarian(sim_KM: Tensor) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs maximising the summed similarity."""
    if sim_KM.numel() == 0:
        return []
    rows, cols = linear_sum_assignment(sim_KM.cpu().numpy(), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _matched_sum(sim_KM: Tensor) -> float:
    """Sum of a Hungarian one-to-one matching maximising similarity."""
    return float(sum(float(sim_KM[r, c]) for r, c in hungarian(sim_KM)))


def signs_of(acts_NK: Tensor, tol: float = 0.01) -> Tensor:
    """[k] sign of each column's activations: +1 / -1 when (nearly) one-sided, 0 when two-sided.

    A column is one-sided when the mass of its minority sign is below ``tol`` of its total
    absolute mass. Columns that never fire count as +1.
    """
    a = acts_NK.double()
    pos, neg = a.clamp_min(0).sum(dim=0), (-a).clamp_min(0).sum(dim=0)
    total = (pos + neg).clamp_min(1e-300)
    sign_K = torch.zeros(a.shape[1], dtype=torch.int64)
    sign_K[neg <= tol * total] = 1
    sign_K[(pos <= tol * total) & (neg > tol * total)] = -1
    return sign_K


def signed_sim(G_KD: Tensor, sign_K: Tensor, D_MD: Tensor, sign_M: Tensor) -> Tensor:
    """[k, m] sign-aware similarity of true and learned directions.

    Where both the true feature and the latent are one-sided (sign +1 or -1), the latent
    points along ``sign_m * d_m`` and the feature along ``sign_k * g_k``: the similarity is
    their cosine clipped at 0, so ``[q, q]`` does not recover ``[q, -q]``. Where either is
    two-sided (sign 0) the sign carries no meaning and the similarity is ``|cos|``.
    """
    cos_KM = cosine(G_KD, D_MD)
    s_KM = sign_K.double()[:, None] * sign_M.double()[None, :]
    signed = (s_KM * cos_KM).clamp_min(0.0)
    return torch.where(s_KM == 0, cos_KM.abs(), signed)


def match_thresholds(G_KD: Tensor, sign_K: Tensor, tau: float = TAU) -> Tensor:
    """[k] the similarity a latent needs to count as recovering each true feature.

    ``max(tau, (1 + nn_k) / 2)`` where ``nn_k`` is feature k's largest sign-aware similarity
    with another true feature: on dense truths (neighbours at cos 0.99) a latent must sit
    closer to g_k than halfway towards its nearest neighbour, so one latent cannot count
    for a whole neighbourhood. A hair of slack (1e-9) lets an exact copy pass.
    """
    k = G_KD.shape[0]
    if k < 2:
        return torch.full((k,), tau, dtype=torch.float64)
    sim = signed_sim(G_KD, sign_K, G_KD, sign_K)
    sim.fill_diagonal_(-1.0)
    nn_K = sim.max(dim=1).values
    return torch.maximum(torch.full_like(nn_K, tau), (1 + nn_K) / 2) - 1e-9


@dataclass(frozen=True)
class Truth:
    """Every true feature at a site (model and data-only), signed, with its match threshold."""

    G_KD: Tensor
    sign_K: Tensor
    model_K: Tensor  # bool: used by later layers
    tau_K: Tensor

    @classmethod
    def of(cls, G_KD: Tensor, sign_K: Tensor, model_K: Tensor, tau: float = TAU) -> Truth:
        return cls(G_KD, sign_K, model_K.bool(), match_thresholds(G_KD, sign_K, tau))

    @property
    def n_model(self) -> int:
        return int(self.model_K.sum())

    def model(self) -> tuple[Tensor, Tensor, Tensor]:
        """(directions, signs, thresholds) of the model features only."""
        m = self.model_K
        return self.G_KD[m], self.sign_K[m], self.tau_K[m]


TruthLike = Truth | Tensor


def as_truth(truth: TruthLike) -> Truth:
    """A bare [k, d] tensor stands for k model features without a sign (sign 0)."""
    if isinstance(truth, Truth):
        return truth
    k = truth.shape[0]
    return Truth.of(truth, torch.zeros(k, dtype=torch.int64), torch.ones(k, dtype=torch.bool))


def as_signs(sign_M: Tensor | None, D_MD: Tensor) -> Tensor:
    """Latent signs; ``None`` means two-sided latents (sign 0, matched on |cos|)."""
    return torch.zeros(D_MD.shape[0], dtype=torch.int64) if sign_M is None else sign_M


def recovery_scores(
    truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None
) -> dict[str, float]:
    """Every direction-recovery score of ``D_MD`` (latent signs ``sign_M``) from one
    sign-aware similarity matrix and two Hungarian matchings (model features alone; all
    features together). With k model features and m latents:

    * ``mmcs``: mean over model features of the best similarity with any latent;
    * ``mcc``: model features matched one-to-one to latents, summed / k;
    * ``mcc_strict_all``: the same sum / max(k, m) — every latent costs, including latents
      that correctly capture a data-only feature (the first version's strict score; it
      cannot reach 1 on a toy with data-only features);
    * ``mcc_strict``: *all* true features (model and data-only) matched one-to-one; the
      matched model similarities / max(k, m - excused), where a latent is excused when it
      is matched to a data-only feature above that feature's match threshold. The exact
      model + data-only dictionary scores 1; every candidate (factored and composed), or
      every feature twice, does not;
    * ``recall`` / ``precision``: share of model features whose best latent passes the
      feature's match threshold / of latents passing some model feature's threshold.
    """
    truth, sign_M = as_truth(truth), as_signs(sign_M, D_MD)
    k, m = truth.n_model, D_MD.shape[0]
    names = ("mmcs", "mcc", "mcc_strict", "mcc_strict_all", "recall", "precision")
    if k == 0 or m == 0:
        return dict.fromkeys(names, 0.0)
    sim_KM = signed_sim(truth.G_KD, truth.sign_K, D_MD, sign_M)
    model_K, tau_K = truth.model_K, truth.tau_K
    sim_model = sim_KM[model_K]
    model_sum = _matched_sum(sim_model)
    joint_sum, excused = 0.0, 0
    for i, j in hungarian(sim_KM):
        if bool(model_K[i]):
            joint_sum += float(sim_KM[i, j])
        elif float(sim_KM[i, j]) >= float(tau_K[i]):
            excused += 1
    passes_KM = sim_model >= tau_K[model_K][:, None]
    return {
        "mmcs": float(sim_model.max(dim=1).values.mean()),
        "mcc": model_sum / k,
        "mcc_strict": joint_sum / max(k, m - excused),
        "mcc_strict_all": model_sum / max(k, m),
        "recall": float(passes_KM.any(dim=1).double().mean()),
        "precision": float(passes_KM.any(dim=0).double().mean()),
    }


def mmcs(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["mmcs"]


def mcc(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["mcc"]


def mcc_strict(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["mcc_strict"]


def mcc_strict_all(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["mcc_strict_all"]


def recall(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["recall"]


def precision(truth: TruthLike, D_MD: Tensor, sign_M: Tensor | None = None) -> float:
    return recovery_scores(truth, D_MD, sign_M)["precision"]


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


def random_orthonormal(m: int, basis_RD: Tensor, gen: torch.Generator) -> Tensor:
    """[m, d] rows of random orthonormal bases of the span of ``basis_RD``: as many
    independent bases as ``m`` needs (each a random rotation of the span), truncated."""
    r = basis_RD.shape[0]
    blocks: list[Tensor] = []
    while sum(b.shape[0] for b in blocks) < m:
        q_RR, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
        blocks.append(q_RR.T @ basis_RD)
    return torch.cat(blocks)[:m] if blocks else basis_RD[:0]


def pca_dictionary(m: int, X_ND: Tensor, basis_RD: Tensor, gen: torch.Generator) -> Tensor:
    """[m, d] the top principal directions of the centred data; beyond the data's rank, the
    rest are rows of random orthonormal bases of its span."""
    top = span_basis(X_ND - X_ND.mean(dim=0))[:m]  # the centred data's components, by variance
    if top.shape[0] >= m:
        return top
    return torch.cat([top, random_orthonormal(m - top.shape[0], basis_RD, gen)])
