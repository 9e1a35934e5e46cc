"""Decomposition methods. Importing this package registers every built-in method."""

from decompbench.methods import (
    direct_sum,
    grad_pca,
    ica,
    lib,
    nmf,
    pca,
    sae_batchtopk,
    sae_e2e,
    sae_e2e_ds,
    sae_jumprelu,
    sae_matryoshka,
    sae_relu,
    sae_topk,
    spd,
    transcoder,
    transcoder_skip,
)
from decompbench.methods.base import Access, Decomposition, build_method

__all__ = [
    "Access",
    "Decomposition",
    "build_method",
    "direct_sum",
    "grad_pca",
    "ica",
    "lib",
    "nmf",
    "pca",
    "sae_batchtopk",
    "sae_e2e",
    "sae_e2e_ds",
    "sae_jumprelu",
    "sae_matryoshka",
    "sae_relu",
    "sae_topk",
    "spd",
    "transcoder",
    "transcoder_skip",
]
