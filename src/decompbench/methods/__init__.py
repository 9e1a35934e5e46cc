"""Decomposition methods. Importing this package registers every built-in method."""

from decompbench.methods import pca, sae_relu, sae_topk
from decompbench.methods.base import Access, Decomposition, build_method

__all__ = ["Access", "Decomposition", "build_method", "pca", "sae_relu", "sae_topk"]
