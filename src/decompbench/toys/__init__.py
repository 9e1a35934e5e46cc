"""The toy zoo. Importing this package registers every built-in toy."""

from decompbench.toys import composed
from decompbench.toys.base import ActivationSite, Batch, DownstreamSite, GroundTruth, Toy, build_toy

__all__ = [
    "ActivationSite",
    "Batch",
    "DownstreamSite",
    "GroundTruth",
    "Toy",
    "build_toy",
    "composed",
]
