"""`direct-sum` — detect a direct-sum split of the activation space, then decompose each part.

The ansatz (seed discussion): if the activation space is a direct sum of subspaces whose
contents vary independently (colour in one, shape in another), find those subspaces
from the activations alone and decompose each separately. Steps, all activation-only:

1. A basis adapted to the split, from two candidates (``basis: auto`` tries both and
   keeps the one certifying the finest split, see step 2). ``ica``: FastICA components
   (``methods/ica.py``, kurtosis contrast by default); by the independent-subspace
   separation principle they fall inside the subspaces (with the log-cosh contrast
   FastICA stops at cross-subspace mixtures on the composed toy's one-hot factors).
   ``cumulant``: whiten, then take the eigenvectors of a fourth-order cumulant matrix
   Q(M) for a random M; cross-cumulants between independent subspaces vanish, so Q(M)
   is block diagonal in the direct-sum basis and each of its (generic) eigenvectors lies
   inside one subspace (noisier on sparse data). Components inside one subspace stay
   statistically dependent.
2. Dependence between every pair of components: a kernel dependence measure (HSIC
   with a Gaussian kernel via random Fourier features, normalised like CKA to [0, 1];
   see ``dependence_matrix``), and, up to ``max_cumulant_rank`` components (its cost
   grows as r^3), the energy of third-order cross-cumulants, which also catches
   pairwise-independent but jointly dependent components (``third_order_dependence``).
   Components are joined when either exceeds
   ``min_dependence``; the
   connected components of that graph are the detected subspaces (``groups``; their
   orthonormal bases ``subspaces``; the count ``n_subspaces``).
3. Each subspace gets its own small dictionary with one active atom per sample (its
   "vertices"): gain-shape vector quantisation (spherical k-means, code = ReLU of the
   projection on the best atom). Its size is the smallest width >= the subspace's
   dimension whose within-subspace FVU is <= ``fvu_target``, searched up to
   ``max_group_width`` (a subspace wider than that gets one atom per dimension) — a rule
   that needs no ground truth. One atom per sample and subspace is the ansatz: a
   subspace holding several simultaneously active features (no split found) is
   reconstructed poorly, which the FVU then shows.

The subspaces need not be orthogonal: each sample is split into its parts by the oblique
projections A_g U_g (U: unmixing, A: mixing of step 1). Reconstruction:
x_hat = sum over subspaces of code * atom + b, where b is the part of the data mean
outside every subspace. When the data has no direct-sum structure, step 2
merges everything into one group and the method degrades to a one-atom-per-sample
dictionary of the whole space: that is a finding about the data, not a bug.

Note: with constant factor magnitudes the split of the data mean between subspaces is
not identifiable from activations, so atoms are the subspace-centred vertices.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.methods.base import Decomposition
from decompbench.methods.ica import Contrast, ICAParams, ica_unmixing, whiten
from decompbench.metrics.reconstruction import fvu
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite


class DirectSumParams(StrictModel):
    n_fourier: int = Field(default=8, ge=1, description="random Fourier features per component")
    min_dependence: float = Field(default=0.05, gt=0, le=1, description="dependence edge")
    dep_samples: int = Field(default=8192, ge=64, description="samples used for dependence")
    max_cumulant_rank: int = Field(
        default=64, ge=0, description="third-order test only up to this many components"
    )
    fvu_target: float = Field(
        default=0.02,
        gt=0,
        lt=1,
        description="per subspace: smallest dictionary whose within-subspace FVU is at most this",
    )
    max_group_width: int = Field(
        default=32,
        ge=1,
        description="largest dictionary searched per subspace (wider: one atom per dim)",
    )
    kmeans_iters: int = Field(default=50, ge=1, description="k-means iterations per restart")
    vq_samples: int = Field(default=16384, ge=16, description="samples the dictionaries see")
    kmeans_restarts: int = Field(default=3, ge=1, description="k-means restarts (the best is kept)")
    basis: Literal["auto", "cumulant", "ica"] = Field(
        default="auto",
        description="how the subspaces are found: fourth-order cumulants, ICA, or auto",
    )
    cumulant_draws: int = Field(default=16, ge=1, description="random M tried for Q(M)")
    fun: Contrast = Field(default="cube", description="ICA contrast (basis: ica)")
    rel_tol: float = Field(default=1e-4, gt=0, description="variance share kept as rank")


def cumulant_matrix(Y_NR: Tensor, M_RR: Tensor) -> Tensor:
    """Fourth-order cumulant matrix Q(M)_ij = sum_kl cum(y_i, y_j, y_k, y_l) M_kl.

    For whitened data (identity covariance): E[y_i y_j y^T M y] - tr(M) I - M - M^T.
    """
    quad_N = ((Y_NR @ M_RR) * Y_NR).sum(dim=1)
    E = (Y_NR * quad_N[:, None]).T @ Y_NR / Y_NR.shape[0]
    return E - torch.trace(M_RR) * torch.eye(M_RR.shape[0], dtype=E.dtype) - M_RR - M_RR.T


def cumulant_eigenbasis(Y_NR: Tensor, draws: int, gen: torch.Generator) -> Tensor:
    """[r, r] orthogonal basis (rows) of eigenvectors of a random cumulant matrix.

    Cross-cumulants between independent subspaces vanish, so every Q(M) is block
    diagonal in a basis adapted to the direct sum, and the eigenvectors of a generic
    Q(M) each lie inside one subspace. Of ``draws`` random symmetric M, the one whose
    Q(M) has the largest smallest eigen-gap (relative to its spread) is used.
    """
    r = Y_NR.shape[1]
    best: tuple[float, Tensor] | None = None
    for _ in range(draws):
        G = torch.randn(r, r, generator=gen, dtype=Y_NR.dtype)
        evals, evecs = torch.linalg.eigh(cumulant_matrix(Y_NR, G + G.T))
        spread = float(evals[-1] - evals[0]) or 1.0
        gap = float(evals.diff().min()) / spread if r > 1 else 1.0
        if best is None or gap > best[0]:
            best = (gap, evecs.T)
    assert best is not None
    return best[1]


def fourier_features(S_NR: Tensor, n_features: int, gen: torch.Generator) -> Tensor:
    """[n, r, F] centred random Fourier features cos(w s + phi) of standardised columns.

    Their cross-covariances estimate HSIC with a unit-width Gaussian kernel.
    """
    z = (S_NR - S_NR.mean(dim=0)) / S_NR.std(dim=0).clamp_min(1e-12)
    w_F = torch.randn(n_features, generator=gen, dtype=S_NR.dtype)
    phi_F = 2 * torch.pi * torch.rand(n_features, generator=gen, dtype=S_NR.dtype)
    feats = torch.cos(z[:, :, None] * w_F + phi_F)
    return feats - feats.mean(dim=0)


def dependence_matrix(S_NR: Tensor, n_features: int, gen: torch.Generator) -> Tensor:
    """[r, r] normalised kernel dependence (CKA of random Fourier features), in [0, 1].

    dep_ij = ||C_ij||_F^2 / (||C_ii||_F ||C_jj||_F) with C_ij the cross-covariance of the
    features of columns i and j: zero in expectation for independent columns, one for
    identical ones. Unlike binned mutual information it is continuous in the data, so a
    tiny leak of one subspace into another's component (which splits a discrete
    component's clusters across bin edges) does not register as dependence.
    """
    n, r = S_NR.shape
    Phi_NX = fourier_features(S_NR, n_features, gen).reshape(n, r * n_features)
    C = (Phi_NX.T @ Phi_NX / n).reshape(r, n_features, r, n_features)
    hsic_RR = C.pow(2).sum(dim=(1, 3))
    diag_R = hsic_RR.diag().sqrt().clamp_min(1e-30)
    return hsic_RR / (diag_R[:, None] * diag_R[None, :])


def third_order_dependence(S_NR: Tensor) -> Tensor:
    """[r, r] sum_k E[s_i s_j s_k]^2 / E[s_i^2 s_j^2] for centred, unit-variance columns.

    Every third-order cross-cumulant of components from independent subspaces is zero.
    It catches what pairwise tests miss: the centred one-hot code of a 4-valued factor
    can be written as three +-1 components that are pairwise independent while the
    third is the product of the other two (E[s_1 s_2 s_3] = 1).
    """
    n, _r = S_NR.shape
    z = (S_NR - S_NR.mean(dim=0)) / S_NR.std(dim=0).clamp_min(1e-12)
    T_RRR = torch.einsum("ni,nj,nk->ijk", z, z, z) / n
    norm_RR = (z * z).T @ (z * z) / n
    dep = T_RRR.pow(2).sum(dim=2) / norm_RR.clamp_min(1e-30)
    return dep.clamp(max=1.0).fill_diagonal_(1.0)


def connected_groups(adj_RR: Tensor) -> list[list[int]]:
    """Connected components of a boolean adjacency matrix, each sorted, in index order."""
    r, seen, groups = adj_RR.shape[0], set[int](), []
    for start in range(r):
        if start in seen:
            continue
        stack, group = [start], []
        seen.add(start)
        while stack:
            i = stack.pop()
            group.append(i)
            for j in torch.nonzero(adj_RR[i]).flatten().tolist():
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        groups.append(sorted(group))
    return groups


def vq_codes(Y_NR: Tensor, atoms_WR: Tensor) -> Tensor:
    """One active atom per sample: the best-aligned one, code = ReLU(projection)."""
    proj_NW = Y_NR @ atoms_WR.T
    best = proj_NW.argmax(dim=1, keepdim=True)
    return torch.zeros_like(proj_NW).scatter(1, best, proj_NW.gather(1, best).clamp_min(0))


def spherical_kmeans(Y_NR: Tensor, w: int, iters: int, gen: torch.Generator) -> Tensor:
    """[w, r] unit atoms; k-means++-style start on directions, Lloyd steps on alignment."""
    norms = Y_NR.norm(dim=1)
    U = Y_NR[norms > 1e-9 * float(norms.max())]
    U = U / U.norm(dim=1, keepdim=True)
    atoms = [U[int(torch.randint(U.shape[0], (1,), generator=gen))]]
    for _ in range(1, w):
        dist = (1 - (U @ torch.stack(atoms).T).max(dim=1).values).clamp_min(0) + 1e-12
        atoms.append(U[int(torch.multinomial(dist, 1, generator=gen))])
    A = torch.stack(atoms)
    for _ in range(iters):
        Z = vq_codes(Y_NR, A)
        sums = Z.gt(0).to(Y_NR.dtype).T @ Y_NR
        keep = sums.norm(dim=1) > 1e-12
        A = torch.where(keep[:, None], sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12), A)
    return A


def group_dictionary(Y_NR: Tensor, p: DirectSumParams, gen: torch.Generator) -> Tensor:
    """The smallest gain-shape dictionary of one subspace reaching ``fvu_target``."""
    r = Y_NR.shape[1]
    best: tuple[float, Tensor] | None = None
    for w in range(r, max(r, p.max_group_width) + 1):
        for _ in range(p.kmeans_restarts):
            A = spherical_kmeans(Y_NR, w, p.kmeans_iters, gen)
            err = fvu(Y_NR, vq_codes(Y_NR, A) @ A)
            if best is None or err < best[0]:
                best = (err, A)
        if best is not None and best[0] <= p.fvu_target:
            break
    assert best is not None
    return best[1]


@register_method("direct-sum")
class DirectSum(Decomposition):
    summary = "detects independent subspaces (ICA + mutual information), one dictionary each"
    Params = DirectSumParams
    params: DirectSumParams

    def split_basis(self, X_ND: Tensor, seed: int, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        """Mean [d], unmixing [r, d] and mixing [d, r] of a basis adapted to the split."""
        p = self.params
        if kind == "ica":
            ica = ICAParams(fun=p.fun, rel_tol=p.rel_tol)
            return ica_unmixing(X_ND, ica, generator(seed, "method/direct-sum/ica"))
        mean_D, K_RD, Kinv_DR = whiten(X_ND, None, p.rel_tol)
        Y_NR = (X_ND - mean_D) @ K_RD.T
        V_RR = cumulant_eigenbasis(Y_NR, p.cumulant_draws, generator(seed, "method/direct-sum/M"))
        return mean_D, V_RR @ K_RD, Kinv_DR @ V_RR.T

    def detect_groups(self, S_NR: Tensor, seed: int) -> tuple[list[list[int]], Tensor]:
        """Connected components of the thresholded dependence between components."""
        p = self.params
        gen_dep = generator(seed, "method/direct-sum/dependence")
        dep_RR = dependence_matrix(S_NR, p.n_fourier, gen_dep)
        if S_NR.shape[1] <= p.max_cumulant_rank:
            dep_RR = torch.maximum(dep_RR, third_order_dependence(S_NR))
        return connected_groups(dep_RR > p.min_dependence), dep_RR

    def best_split(self, X_ND: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """Try the candidate bases; keep the finest split (ties: the first candidate).

        Mixing independent subspaces can only create dependence, so a basis that certifies
        more independent groups is closer to the direct-sum basis.
        """
        p = self.params
        kinds = ["ica", "cumulant"] if p.basis == "auto" else [p.basis]
        best = None
        for kind in kinds:
            mean_D, U_RD, A_DR = self.split_basis(X_ND, seed, kind)
            groups, dep = self.detect_groups((X_ND[: p.dep_samples] - mean_D) @ U_RD.T, seed)
            if best is None or len(groups) > len(best[0]):
                best = (groups, dep, kind, (mean_D, U_RD, A_DR))
        assert best is not None
        self.groups, self.dependence_RR, self.basis_used = best[0], best[1], best[2]
        return best[3]

    def fit(self, site: ActivationSite, seed: int) -> None:
        X = site.acts_ND.double()
        mean_D, U_RD, A_DR = self.best_split(X, seed)
        # Subspace g: orthonormal basis B_g of span(A_g); the (oblique) projection of x on
        # it along the other subspaces is A_g U_g x, in B_g coordinates x @ coords_g.
        self.subspaces = [torch.linalg.qr(A_DR[:, g])[0].T for g in self.groups]
        pairs = zip(self.groups, self.subspaces, strict=True)
        self.coords = [U_RD[g].T @ (A_DR[:, g].T @ B.T) for g, B in pairs]
        gen = generator(seed, "method/direct-sum/vq")
        X_fit = X[: self.params.vq_samples]
        self.group_atoms = [group_dictionary(X_fit @ C, self.params, gen) for C in self.coords]
        atoms = [a @ B for a, B in zip(self.group_atoms, self.subspaces, strict=True)]
        self.atoms_MD = torch.cat(atoms)
        self.bias_D = mean_D - (mean_D @ U_RD.T) @ A_DR.T

    @property
    def n_subspaces(self) -> int:
        return len(self.groups)

    def extra_metrics(self) -> dict[str, float]:
        """For a runner hook: the detected split (not read by the bench yet)."""
        return {"n_subspaces": float(self.n_subspaces)}

    def encode(self, acts_ND: Tensor) -> Tensor:
        X = acts_ND.double()
        codes = [vq_codes(X @ C, a) for C, a in zip(self.coords, self.group_atoms, strict=True)]
        return torch.cat(codes, dim=1).to(acts_ND.dtype)

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (latents_NM.double() @ self.atoms_MD + self.bias_D).to(latents_NM.dtype)

    def directions(self) -> Tensor:
        return self.atoms_MD.float()
