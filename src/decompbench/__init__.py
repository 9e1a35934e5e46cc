"""decompbench: do activation decompositions find the features the model itself uses?

Toys with causally verified ground truth (``decompbench.toys``), decomposition methods
(``decompbench.methods``), pure ground-truth metrics (``decompbench.metrics``) and the
suite runner (``decompbench.bench``).

The public API (README, "Bring your own method") is importable from here:
``Decomposition``, ``StrictModel``, ``register_method``, ``register_toy``,
``ActivationSite``, ``DownstreamSite``, ``Toy``, ``GroundTruth``, ``Batch``, ``evaluate``,
``run_suite``. Names are resolved on first use, so ``import decompbench`` stays cheap (no
torch until one of them is touched).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Decomposition": "decompbench.methods.base",
    "StrictModel": "decompbench.config",
    "register_method": "decompbench.registry",
    "register_toy": "decompbench.registry",
    "ActivationSite": "decompbench.toys.base",
    "DownstreamSite": "decompbench.toys.base",
    "Toy": "decompbench.toys.base",
    "GroundTruth": "decompbench.toys.base",
    "Batch": "decompbench.toys.base",
    "evaluate": "decompbench.api",
    "run_suite": "decompbench.api",
}

__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:
    from decompbench.api import evaluate as evaluate
    from decompbench.api import run_suite as run_suite
    from decompbench.config import StrictModel as StrictModel
    from decompbench.methods.base import Decomposition as Decomposition
    from decompbench.registry import register_method as register_method
    from decompbench.registry import register_toy as register_toy
    from decompbench.toys.base import ActivationSite as ActivationSite
    from decompbench.toys.base import Batch as Batch
    from decompbench.toys.base import DownstreamSite as DownstreamSite
    from decompbench.toys.base import GroundTruth as GroundTruth
    from decompbench.toys.base import Toy as Toy


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'decompbench' has no attribute {name!r}")
