"""Decomposition methods. Importing this package registers every built-in method."""

from decompbench.methods import (
    direct_sum,
    ica,
    nmf,
    pca,
    sae_batchtopk,
    sae_jumprelu,
    sae_matryoshka,
    sae_relu,
    sae_topk,
)
from decompbench.methods.base import Access, Decomposition, build_method

__all__ = [
    "Access",
    "Decomposition",
    "build_method",
    "direct_sum",
    "ica",
    "nmf",
    "pca",
    "sae_batchtopk",
    "sae_jumprelu",
    "sae_matryoshka",
    "sae_relu",
    "sae_topk",
]
