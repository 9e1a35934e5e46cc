"""The toy protocol: a network, a seeded sampler with true feature activations, and sites.

A *site* is a named point between layers. For each site a toy declares its
``GroundTruth`` and can produce the activations there and the rest of the network from
there on. What a decomposition method may look at is wrapped in ``ActivationSite`` (the
activations only) or ``DownstreamSite`` (also the downstream network): the runner hands
an activation-only method an object that simply has no downstream to read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from decompbench.config import StrictModel, validate
from decompbench.errors import UserError

OutputKind = Literal["mse", "categorical"]


class NoFirstLinear(UserError):
    """A site whose downstream applies no linear map the toy can name."""


@dataclass(frozen=True)
class GroundTruth:
    """True features at one site.

    ``directions_KD`` holds one unit direction per feature. ``is_model`` marks the
    features later layers use; the others are data-only (present, unused). ``groups``
    gives each feature's factor group (features of different groups may compose), or
    ``None`` when the site has no factor structure.
    """

    directions_KD: Tensor
    names: tuple[str, ...]
    is_model: tuple[bool, ...]
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        k = self.directions_KD.shape[0]
        assert self.directions_KD.ndim == 2, "directions_KD must be [features, d]"
        assert len(self.names) == k and len(self.is_model) == k, "one name/flag per feature"
        assert self.groups is None or len(self.groups) == k, "one group per feature"
        norms = self.directions_KD.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), "directions not unit"

    @property
    def model_mask(self) -> Tensor:
        return torch.tensor(self.is_model, dtype=torch.bool)


@dataclass(frozen=True)
class Batch:
    """Inputs to the toy and, per site, the true feature activations [batch, features]."""

    inputs: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class Toy(nn.Module, ABC):
    """A fully reverse-engineered network. Subclasses define ``Params`` and the hooks."""

    name: ClassVar[str]
    Params: ClassVar[type[StrictModel]]
    summary: ClassVar[str] = ""
    # How outputs are compared: "mse", or "categorical" (outputs are logits; KL divergence).
    output_kind: ClassVar[OutputKind] = "mse"

    def __init__(self, params: StrictModel, seed: int) -> None:
        super().__init__()
        self.params = params
        self.seed = seed

    @property
    @abstractmethod
    def sites(self) -> tuple[str, ...]: ...

    @abstractmethod
    def sample(self, n: int, seed: int) -> Batch:
        """``n`` inputs drawn with ``seed``, with the true feature activations per site."""

    @abstractmethod
    def acts(self, site: str, inputs: Tensor) -> Tensor:
        """Activations [batch, d] at ``site``."""

    @abstractmethod
    def downstream(self, site: str) -> nn.Module:
        """The network from ``site`` to the output: activations -> output."""

    def next_layer(self, site: str) -> nn.Module:
        """The network from ``site`` to the next layer's output (a transcoder's target).

        Defaults to ``downstream(site)``: right for toys with one layer after the site.
        """
        return self.downstream(site)

    def to_next_site(self, site: str) -> nn.Module:
        """The map from ``site`` onto the next site's activations (circuit wiring).

        Defaults to ``next_layer(site)``; toys whose next site is not the next layer's
        output (a site inside the next layer, say) override it.
        """
        return self.next_layer(site)

    def first_linear(self, site: str) -> Tensor:
        """[out, d] the matrix of the first linear map the downstream applies to ``site``.

        The default runs ``downstream(site)`` on a few samples and returns the weight of
        the first ``nn.Linear`` called (forward pre-hooks, in call order) whose
        ``in_features`` is the site's width. Toys whose downstream applies its first
        linear map without an ``nn.Linear`` override it. The ``weights`` baseline reads
        this through ``DownstreamSite.first_linear_OD``, never the ground truth.
        """
        self.check_site(site)
        acts_BD = self.acts(site, self.sample(4, seed=0).inputs)
        d = int(acts_BD.shape[1])
        called: list[nn.Linear] = []
        down = self.downstream(site)
        handles = [
            sub.register_forward_pre_hook(lambda mod, _inp: called.append(mod))
            for sub in down.modules()
            if isinstance(sub, nn.Linear)
        ]
        try:
            with torch.no_grad():
                down(acts_BD)
        finally:
            for h in handles:
                h.remove()
        for lin in called:
            if lin.in_features == d:
                return lin.weight.detach().clone()
        raise NoFirstLinear(
            f"toy '{self.name}' site '{site}': the downstream applies no nn.Linear with "
            f"{d} inputs, and the toy does not say what its first linear map is"
        )

    @abstractmethod
    def ground_truth(self, site: str) -> GroundTruth: ...

    def edges(self) -> list[tuple[str, int, str, int]]:
        """True feature-to-feature edges between sites: (site_a, feature_a, site_b, feature_b).

        Feature indices are rows of the sites' ``ground_truth`` directions; an edge means
        feature_b is computed from feature_a. Toys with fewer than two sites have none.
        """
        return []

    def check_site(self, site: str) -> None:
        if site not in self.sites:
            raise UserError(f"toy '{self.name}' has no site '{site}' (sites: {list(self.sites)})")


class EmbedReadoutToy(Toy):
    """A toy with one site, ``hidden`` = ``embed(inputs)``, read by ``readout``.

    Subclasses set ``self.embed`` and ``self.readout`` in ``__init__``.
    """

    embed: nn.Linear
    readout: nn.Module

    @property
    def sites(self) -> tuple[str, ...]:
        return ("hidden",)

    @torch.no_grad()
    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        out: Tensor = self.embed(inputs)
        return out

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.readout

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.readout(self.embed(inputs))
        return out


def build_toy(name: str, params: dict[str, Any] | None, seed: int, where: str = "") -> Toy:
    """Look ``name`` up in the registry, validate ``params`` and build the toy."""
    from decompbench.registry import get_toy

    cls = get_toy(name)
    p = validate(cls.Params, params, where or f"toy '{name}' params")
    toy = cls(p, seed)
    toy.eval()
    for param in toy.parameters():
        param.requires_grad_(False)
    return toy


@dataclass(frozen=True)
class ActivationSite:
    """What an activation-only method may see: the site's name and its activations."""

    name: str
    acts_ND: Tensor

    @property
    def d(self) -> int:
        return int(self.acts_ND.shape[1])


@dataclass(frozen=True)
class DownstreamSite(ActivationSite):
    """Adds the network after the site, for methods that declare themselves downstream-aware.

    ``downstream`` maps site activations to the network's output; ``next_layer`` maps them
    to the next layer's output (the same module when one layer follows the site). Both are
    frozen private copies: a method may hook or read them (their weight matrices are
    reachable through the modules) without touching the toy. ``output_kind`` says how
    outputs compare: "mse", or "categorical" (logits; KL divergence). ``first_linear_OD``
    is the matrix of the first linear map the downstream applies to the site
    (``Toy.first_linear``), or ``None`` where there is none. Nothing upstream of the site
    and no ground truth is reachable from here.
    """

    downstream: nn.Module = field(default_factory=nn.Identity)
    next_layer: nn.Module | None = None
    output_kind: OutputKind = "mse"
    first_linear_OD: Tensor | None = None

    def output(self, acts_BD: Tensor) -> Tensor:
        """The network's output with ``acts_BD`` at the site."""
        return self.downstream(acts_BD)

    def next_output(self, acts_BD: Tensor) -> Tensor:
        """The next layer's output with ``acts_BD`` at the site."""
        module = self.downstream if self.next_layer is None else self.next_layer
        return module(acts_BD)

    def output_grads(self, acts_BD: Tensor, cotangent_BO: Tensor) -> Tensor:
        """Vector-Jacobian product: d(output · cotangent)/d acts."""
        acts = acts_BD.detach().requires_grad_(True)
        out = self.downstream(acts)
        (grad,) = torch.autograd.grad(out, acts, grad_outputs=cotangent_BO)
        return grad


def frozen_copy(module: nn.Module) -> nn.Module:
    copy = deepcopy(module).eval()
    for param in copy.parameters():
        param.requires_grad_(False)
    return copy


def downstream_site(toy: Toy, site: str, acts_ND: Tensor) -> DownstreamSite:
    """The view a downstream-aware method gets of ``site``: activations and the network after it.

    Built here, from the toy, so the runner never decides what a method may read. The
    modules are copied (``next_layer`` shares weights with ``downstream`` when it is a
    submodule of it), so hooks a method registers never reach the toy.
    """
    down = toy.downstream(site)
    nxt = toy.next_layer(site)
    both = frozen_copy(nn.ModuleList([down, nxt]))
    assert isinstance(both, nn.ModuleList)
    try:
        first: Tensor | None = toy.first_linear(site)
    except NoFirstLinear:
        first = None  # only the `weights` baseline needs it; it refuses in one line
    return DownstreamSite(
        site,
        acts_ND,
        downstream=both[0],
        next_layer=both[1],
        output_kind=toy.output_kind,
        first_linear_OD=first,
    )
