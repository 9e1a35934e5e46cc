"""Attribution edges between the latents of consecutive sites, from encode/decode only.

For a node a at site s (one latent, or a group after a merge) its *contribution* to the
site activations on sample n is c_n = decode(z_n) - decode(z_n with a's latents zeroed).
Pushing the activations through the toy's next layer and encoding at site s+1 gives the
effect of a on every node b there (a node's value is the sum of its latents):

* ``ablation``: Δ_nb = v_b(enc(next(x_n))) - v_b(enc(next(x_n - c_n)));
* ``grad`` (gradient x activation): Δ_nb = ∂v_b/∂z_a · z_a, the derivative along c_n,
  taken as a central difference (v_b(x + h c) - v_b(x - h c)) / 2h because encoders may
  be non-differentiable (TopK) or run without autograd.

The edge weight is mean_n |Δ_nb| / mean_n |v_b|: the share of b's typical magnitude that
a accounts for, averaged over samples. Pruning keeps weights >= ``tol``. Nothing here reads
the ground truth; it uses the fitted dictionaries and the toy's next layer (an analysis
tool, not a decomposition method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from decompbench.circuits.graph import Edge, Node

EdgeMode = Literal["ablation", "grad"]
STEP = 1e-2  # central-difference step along a contribution (a share of it)


class Dictionary(Protocol):
    def encode(self, acts_ND: Tensor) -> Tensor: ...
    def decode(self, latents_NM: Tensor) -> Tensor: ...
    def directions(self) -> Tensor: ...


@dataclass(frozen=True)
class SiteFit:
    """A fitted dictionary at one site, with evaluation activations and their latents."""

    name: str
    method: Dictionary
    acts_ND: Tensor
    z_NM: Tensor


@torch.no_grad()
def site_fit(name: str, method: Dictionary, acts_ND: Tensor) -> SiteFit:
    return SiteFit(name, method, acts_ND, method.encode(acts_ND).detach())


def node_values(z_NM: Tensor, nodes: Sequence[Node]) -> Tensor:
    """[n, nodes] each node's value: the sum of its latents."""
    cols = [z_NM[:, list(n.members)].sum(dim=1) for n in nodes]
    return torch.stack(cols, dim=1) if cols else z_NM.new_zeros(z_NM.shape[0], 0)


@torch.no_grad()
def contribution(fit: SiteFit, members: Sequence[int]) -> Tensor:
    """[n, d] what the latents ``members`` add to the reconstruction on each sample."""
    z_off = fit.z_NM.clone()
    z_off[:, list(members)] = 0
    return fit.method.decode(fit.z_NM) - fit.method.decode(z_off)


def oriented_directions(fit: SiteFit) -> Tensor:
    """[m, d] unit directions, flipped where a latent's mean activation is negative."""
    dirs = fit.method.directions().detach().to(fit.acts_ND.dtype)
    sign = torch.where(fit.z_NM.sum(dim=0) < 0, -1.0, 1.0).to(dirs.dtype)
    return dirs * sign[:, None]


def singleton_nodes(fit: SiteFit) -> list[Node]:
    """One node per alive latent (non-zero on some evaluation sample)."""
    alive = (fit.z_NM != 0).any(dim=0)
    dirs = oriented_directions(fit)
    return [
        Node(fit.name, i, (i,), tuple(float(v) for v in dirs[i]))
        for i in range(fit.z_NM.shape[1])
        if bool(alive[i])
    ]


@torch.no_grad()
def edge_matrix(
    src: SiteFit,
    src_nodes: Sequence[Node],
    dst: SiteFit,
    dst_nodes: Sequence[Node],
    next_layer: Callable[[Tensor], Tensor],
    mode: EdgeMode = "ablation",
) -> Tensor:
    """[src nodes, dst nodes] edge weights (see the module docstring)."""

    def values(x_ND: Tensor) -> Tensor:
        return node_values(dst.method.encode(next_layer(x_ND)), dst_nodes)

    x = src.acts_ND
    base_NB = values(x)
    scale_B = base_NB.abs().mean(dim=0).clamp_min(1e-12)
    rows = []
    for node in src_nodes:
        c = contribution(src, node.members)
        if mode == "ablation":
            delta = base_NB - values(x - c)
        else:
            delta = (values(x + STEP * c) - values(x - STEP * c)) / (2 * STEP)
        rows.append(delta.abs().mean(dim=0) / scale_B)
    if not rows:
        return x.new_zeros(0, len(dst_nodes))
    return torch.stack(rows)


def prune(
    W_AB: Tensor, src_nodes: Sequence[Node], dst_nodes: Sequence[Node], tol: float
) -> list[Edge]:
    """The edges whose weight is at least ``tol``."""
    return [
        Edge(a.site, a.id, b.site, b.id, float(W_AB[i, j]))
        for i, a in enumerate(src_nodes)
        for j, b in enumerate(dst_nodes)
        if float(W_AB[i, j]) >= tol
    ]
