"""Pure metric functions: recovery of ground truth, reconstruction, sparsity."""

from decompbench.metrics.reconstruction import alive_mask, dead_frac, fvu, l0, n_alive
from decompbench.metrics.recovery import (
    composition,
    mcc,
    mcc_act,
    mcc_strict,
    mmcs,
    precision,
    random_dictionary,
    recall,
    span_basis,
)

__all__ = [
    "alive_mask",
    "composition",
    "dead_frac",
    "fvu",
    "l0",
    "mcc",
    "mcc_act",
    "mcc_strict",
    "mmcs",
    "n_alive",
    "precision",
    "random_dictionary",
    "recall",
    "span_basis",
]
