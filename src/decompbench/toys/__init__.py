"""The toy zoo. Importing this package registers every built-in toy."""

from decompbench.toys import (
    circuit,
    composed,
    composed_poly,
    composed_tms,
    compressed,
    curve,
    data_structure,
    hierarchy,
    hierarchy_poly,
    planted,
    square,
    superposed_circuits,
    tms,
)
from decompbench.toys.base import ActivationSite, Batch, DownstreamSite, GroundTruth, Toy, build_toy

__all__ = [
    "ActivationSite",
    "Batch",
    "DownstreamSite",
    "GroundTruth",
    "Toy",
    "build_toy",
    "circuit",
    "composed",
    "composed_poly",
    "composed_tms",
    "compressed",
    "curve",
    "data_structure",
    "hierarchy",
    "hierarchy_poly",
    "planted",
    "square",
    "superposed_circuits",
    "tms",
]
