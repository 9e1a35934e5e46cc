"""Reconstruction and sparsity scores. Pure functions of tensors."""

from __future__ import annotations

from torch import Tensor

ACTIVE_REL_TOL = 1e-5


def active(Z_NM: Tensor, rel_tol: float = ACTIVE_REL_TOL) -> Tensor:
    """[n, m] bool: latent counts as firing when |z| exceeds rel_tol * max |z|."""
    scale = float(Z_NM.abs().max()) if Z_NM.numel() else 0.0
    return Z_NM.abs() > rel_tol * scale if scale > 0 else Z_NM != 0


def alive_mask(Z_NM: Tensor) -> Tensor:
    """[m] bool: latents that fire on at least one sample."""
    return active(Z_NM).any(dim=0)


def fvu(X_ND: Tensor, Xhat_ND: Tensor) -> float:
    """Fraction of variance unexplained: ||X - Xhat||^2 / ||X - mean(X)||^2."""
    assert X_ND.shape == Xhat_ND.shape, f"shapes differ: {X_ND.shape} vs {Xhat_ND.shape}"
    x = X_ND.double()
    resid = (x - Xhat_ND.double()).pow(2).sum()
    total = (x - x.mean(dim=0)).pow(2).sum()
    return float(resid / total) if total > 0 else float("nan")


def l0(Z_NM: Tensor) -> float:
    """Mean number of firing latents per sample."""
    return float(active(Z_NM).double().sum(dim=1).mean())


def dead_frac(Z_NM: Tensor) -> float:
    """Share of latents that never fire on the samples."""
    return 1.0 - float(alive_mask(Z_NM).double().mean()) if Z_NM.shape[1] else 0.0


def n_alive(Z_NM: Tensor) -> int:
    return int(alive_mask(Z_NM).sum())
