"""Pure metric functions: recovery of ground truth, reconstruction, sparsity."""

from decompbench.metrics.reconstruction import alive_mask, dead_frac, fvu, l0, n_alive
from decompbench.metrics.recovery import (
    Truth,
    composition,
    mcc,
    mcc_act,
    mcc_strict,
    mcc_strict_all,
    mmcs,
    pca_dictionary,
    precision,
    random_dictionary,
    random_orthonormal,
    recall,
    signed_sim,
    signs_of,
    span_basis,
)

__all__ = [
    "Truth",
    "alive_mask",
    "composition",
    "dead_frac",
    "fvu",
    "l0",
    "mcc",
    "mcc_act",
    "mcc_strict",
    "mcc_strict_all",
    "mmcs",
    "n_alive",
    "pca_dictionary",
    "precision",
    "random_dictionary",
    "random_orthonormal",
    "recall",
    "signed_sim",
    "signs_of",
    "span_basis",
]
