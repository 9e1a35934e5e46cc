"""The decomposition protocol: fit on a site, then encode, decode and expose directions.

A method declares what it may look at with ``access``: ``"activation_only"`` methods are
handed an ``ActivationSite`` (activations only); ``"downstream_aware"`` ones a
``DownstreamSite`` (also the rest of the network). The runner enforces it, so an
activation-only method cannot read downstream even by accident.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor

from decompbench.config import StrictModel, validate
from decompbench.toys.base import ActivationSite

if TYPE_CHECKING:
    from decompbench.methods.train import TrainLog

Access = Literal["activation_only", "downstream_aware"]


class Decomposition(ABC):
    """A learned dictionary at one site. Subclasses set ``Params`` and the four methods."""

    name: ClassVar[str]
    Params: ClassVar[type[StrictModel]]
    access: ClassVar[Access] = "activation_only"
    directions_kind: ClassVar[str] = "decoder"
    summary: ClassVar[str] = ""
    # A trivial baseline (``random``, ``weights``): the verdict compares the best method of
    # each access class with the best baseline of that class instead of ranking it.
    baseline: ClassVar[bool] = False

    def __init__(self, params: StrictModel) -> None:
        self.params = params

    @abstractmethod
    def fit(self, site: ActivationSite, seed: int) -> None:
        """Learn the dictionary from what ``site`` offers; all randomness from ``seed``."""

    @abstractmethod
    def encode(self, acts_ND: Tensor) -> Tensor:
        """Latent activations [n, m]."""

    @abstractmethod
    def decode(self, latents_NM: Tensor) -> Tensor:
        """Reconstruction [n, d] from latent activations."""

    @abstractmethod
    def directions(self) -> Tensor:
        """[m, d] unit directions of the latents in activation space."""

    def training_log(self) -> TrainLog | None:
        """The shared loop's log of the fit whose dictionary this is (the chosen one when
        a method selects among several fits); None for methods not trained by gradient."""
        return None

    def convergence(self) -> dict[str, float | None]:
        """``{}`` when not gradient-trained, else ``{"loss_rel_change": x, "converged":
        1.0 | 0.0}`` (``methods/train.py``: relative loss change over the last 10 % of
        steps, converged when at most ``CONVERGED_TOL``)."""
        log = self.training_log()
        return {} if log is None else log.convergence()

    def extra_metrics(self) -> dict[str, float]:
        """Method-specific numbers recorded as ``method_<key>`` (e.g. direct-sum's split)."""
        return {}


def build_method(name: str, params: dict[str, Any] | None, where: str = "") -> Decomposition:
    """Look ``name`` up in the registry and validate ``params``."""
    from decompbench.registry import get_method

    cls = get_method(name)
    return cls(validate(cls.Params, params, where or f"method '{name}' params"))
