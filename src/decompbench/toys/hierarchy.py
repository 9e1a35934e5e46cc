"""`hierarchy` — the absorption toy: parents whose children fire only inside them.

What it models
    ``n_parents`` = 3 parent features fire independently with ``p_parent`` = 0.15. Each
    parent has ``n_children`` = 3 mutually exclusive children: when the parent fires,
    each child fires with ``p_child`` = 0.2 and none with the rest (0.4); children never
    fire without their parent. ``n_independent`` = 8 further features fire independently
    with ``p_independent`` = 0.05. That is 3 + 9 + 8 = 20 features; every active feature
    gets an independent magnitude U[``magnitude``]. Constructed, not trained.

    Each feature has a unit direction in ``d_model`` = 20 dimensions, near-orthogonal: the
    rows of a random orthonormal basis plus noise of relative size ``overlap`` = 0.1,
    renormalised (overlap 0 gives exactly orthonormal directions). The activation at site
    ``hidden`` is h = sum_i a_i u_i.

    Downstream, one ReLU readout per feature, reading parents and children separately:
    out_i = ReLU(r_i . h) with r_i the dual basis of the u_i (R = (U U^T)^-1 U, so
    r_i . u_j = delta_ij); hence out_i = a_i exactly, even though the u_i overlap.

Ground truth at ``hidden`` (why it is the truth)
    The 20 directions u_i, all model features (each has its own readout), activations a_i.
    Subtracting a_i u_i from h zeroes exactly out_i and leaves every other output unchanged
    (tests/test_toy_hierarchy.py): in particular removing a parent does not touch its
    children's outputs and vice versa. A dictionary that *absorbs* the parent into its
    children (a latent along child + parent, no latent firing for the parent when a child
    is active) therefore has the wrong features for this model: ablating such a latent
    silences two outputs. Groups: each parent its own group; the children of one parent
    share a group (they are mutually exclusive, like the values of a factor); each
    independent feature its own group. So the ``composition`` score counts latents along
    e.g. a normalised parent + child.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import FloatPair, StrictModel
from decompbench.exact import decimal, show
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, EmbedReadoutToy, GroundTruth


class HierarchyParams(StrictModel):
    n_parents: int = Field(default=3, ge=1, description="parent features")
    n_children: int = Field(default=3, ge=1, description="exclusive children per parent")
    p_parent: float = Field(
        default=0.15, gt=0, le=1, description="probability that a parent is active"
    )
    p_child: float = Field(
        default=0.2, gt=0, le=1, description="probability that an active parent has a child active"
    )
    n_independent: int = Field(default=8, ge=0, description="independent features")
    p_independent: float = Field(
        default=0.05, gt=0, le=1, description="probability that an independent feature is active"
    )
    d_model: int = Field(default=20, ge=1, description="activation dimension")
    overlap: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="relative noise added to orthonormal directions (0: orthonormal)",
    )
    magnitude: FloatPair = Field(
        default=(0.0, 1.0), description="[lo, hi] of an active feature's magnitude U[lo, hi]"
    )

    @property
    def n_features(self) -> int:
        return self.n_parents * (1 + self.n_children) + self.n_independent

    @model_validator(mode="after")
    def _check(self) -> HierarchyParams:
        children_total = self.n_children * decimal(self.p_child)  # exact: no float slack
        if children_total > 1:
            raise ValueError(
                f"n_children * p_child = {show(children_total)} > 1: exclusive "
                "children cannot be that likely"
            )
        if self.n_features > self.d_model:
            raise ValueError(
                f"{self.n_features} features need d_model >= {self.n_features} for an exact "
                f"per-feature readout (got {self.d_model})"
            )
        lo, hi = self.magnitude
        if not 0 <= lo <= hi or hi <= 0:
            raise ValueError(f"magnitude must satisfy 0 <= lo <= hi, hi > 0, got [{lo}, {hi}]")
        return self


def near_orthogonal(k: int, d: int, overlap: float, g: torch.Generator) -> Tensor:
    """[k, d] unit rows: orthonormal rows plus noise of relative size ``overlap``."""
    q_DD, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    noise_KD = torch.randn(k, d, generator=g) / d**0.5
    u_KD = q_DD[:k] + overlap * noise_KD
    return u_KD / u_KD.norm(dim=1, keepdim=True)


def dual_basis(u_KD: Tensor) -> Tensor:
    """[k, d] rows r_i with r_i . u_j = delta_ij (u_KD must have full row rank)."""
    u = u_KD.double()
    return torch.linalg.solve(u @ u.T, u).to(u_KD.dtype)


@register_toy("hierarchy")
class Hierarchy(EmbedReadoutToy):
    summary = "absorption: 3 parents with 3 exclusive children each + 8 independent, ReLU readout"
    Params = HierarchyParams
    params: HierarchyParams

    def __init__(self, params: HierarchyParams, seed: int) -> None:
        super().__init__(params, seed)
        k, d = params.n_features, params.d_model
        dirs_KD = near_orthogonal(k, d, params.overlap, generator(seed, "hierarchy/directions"))
        self.embed = nn.Linear(k, d, bias=False)
        self.embed.weight.data = dirs_KD.T.contiguous()
        read = nn.Linear(d, k, bias=False)
        read.weight.data = dual_basis(dirs_KD)
        self.readout = nn.Sequential(read, nn.ReLU())

    # Feature order: parents, then each parent's children, then independent features.
    def feature_names(self) -> tuple[str, ...]:
        p = self.params
        parents = [f"p{j}" for j in range(p.n_parents)]
        children = [f"p{j}/c{c}" for j in range(p.n_parents) for c in range(p.n_children)]
        return (*parents, *children, *(f"i{j}" for j in range(p.n_independent)))

    def feature_groups(self) -> tuple[int, ...]:
        p = self.params
        parents = list(range(p.n_parents))
        children = [p.n_parents + j for j in range(p.n_parents) for _ in range(p.n_children)]
        start = 2 * p.n_parents
        return (*parents, *children, *range(start, start + p.n_independent))

    def children_of(self, parent: int) -> list[int]:
        p = self.params
        first = p.n_parents + parent * p.n_children
        return list(range(first, first + p.n_children))

    def sample(self, n: int, seed: int) -> Batch:
        p = self.params
        g = generator(seed, "hierarchy/sample")
        parent_NP = torch.rand(n, p.n_parents, generator=g) < p.p_parent
        # Child choice per parent: index < n_children picks that child, else none.
        u_NP = torch.rand(n, p.n_parents, generator=g)
        choice_NP = (u_NP / p.p_child).floor().long()
        child_NPC = nn.functional.one_hot(choice_NP.clamp(max=p.n_children), p.n_children + 1)
        child_NPC = child_NPC[:, :, : p.n_children].bool() & parent_NP[:, :, None]
        indep_NI = torch.rand(n, p.n_independent, generator=g) < p.p_independent
        active_NK = torch.cat([parent_NP, child_NPC.reshape(n, -1), indep_NI], dim=1)
        lo, hi = p.magnitude
        mag_NK = lo + (hi - lo) * torch.rand(n, p.n_features, generator=g)
        feats_NK = active_NK * mag_NK
        return Batch(inputs=feats_NK, features={"hidden": feats_NK})

    @property
    def directions_KD(self) -> Tensor:
        return self.embed.weight.data.T

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        names = self.feature_names()
        k = len(names)
        return GroundTruth(self.directions_KD.clone(), names, (True,) * k, self.feature_groups())
