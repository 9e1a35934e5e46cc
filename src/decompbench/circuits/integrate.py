"""The integration steps applied to a site's nodes: filter and merge.

Filter: a node whose removal barely changes the toy's final output is a candidate
*data-only* feature (present in the activations, unused by the model). Its effect is
mean_n ||f(x_n) - f(x_n - c_n)|| over the samples where the node is active, divided by the
output's spread sqrt(mean_n ||f(x_n) - mean f||^2); nodes below ``tol`` are removed.

Merge: two nodes are one feature split in two when they always co-fire (Pearson
correlation of their values >= ``corr_tol``), or when they point the same way (cos of
their directions >= ``dir_tol``) *and* the next layer reads them identically up to scale
(cos of their read vectors >= ``read_tol``; a node's read vector is the mean change of the
next layer's output when it is removed, over the samples where it is active). Both tests
are needed for the second rule: different inputs of one AND gate are read identically by
the next layer but point different ways. Merged nodes are the connected components.

The decisions (``split_by_effect``, ``merge_groups``, ``merged_nodes``) are pure functions
of tensors; ``output_effects`` and ``read_vectors`` measure what they need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from decompbench.circuits.edges import SiteFit, contribution, node_values
from decompbench.circuits.graph import Node
from decompbench.metrics.recovery import unit_rows


def _active(fit: SiteFit, node: Node) -> Tensor:
    return (fit.z_NM[:, list(node.members)] != 0).any(dim=1)


@torch.no_grad()
def output_effects(
    fit: SiteFit, nodes: Sequence[Node], downstream: Callable[[Tensor], Tensor]
) -> Tensor:
    """[nodes] relative change of the final output when each node is removed."""
    x = fit.acts_ND
    out = downstream(x).flatten(1)
    spread = (out - out.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)
    effects = []
    for node in nodes:
        diff_N = (out - downstream(x - contribution(fit, node.members)).flatten(1)).norm(dim=1)
        active = _active(fit, node)
        effects.append(diff_N[active].mean() if active.any() else diff_N.new_zeros(()))
    return torch.stack(effects) / spread if effects else x.new_zeros(0)


def split_by_effect(
    nodes: Sequence[Node], effects_A: Tensor, tol: float
) -> tuple[list[Node], list[Node]]:
    """(kept, removed): nodes with effect >= ``tol`` are kept."""
    kept = [n for n, e in zip(nodes, effects_A.tolist(), strict=True) if e >= tol]
    removed = [n for n, e in zip(nodes, effects_A.tolist(), strict=True) if e < tol]
    return kept, removed


@torch.no_grad()
def read_vectors(
    fit: SiteFit, nodes: Sequence[Node], next_layer: Callable[[Tensor], Tensor]
) -> Tensor:
    """[nodes, out] mean change of the next layer's output when each node is removed
    (over the samples where it is active)."""
    x = fit.acts_ND
    out = next_layer(x).flatten(1)
    rows = []
    for node in nodes:
        diff = out - next_layer(x - contribution(fit, node.members)).flatten(1)
        active = _active(fit, node)
        rows.append(diff[active].mean(dim=0) if active.any() else diff.new_zeros(diff.shape[1]))
    return torch.stack(rows) if rows else out.new_zeros(0, out.shape[1])


def signed_corr(V_NA: Tensor) -> Tensor:
    """[a, a] Pearson correlation between columns; constant columns correlate 0."""
    v = V_NA.double() - V_NA.double().mean(dim=0)
    norm = v.norm(dim=0)
    corr = (v.T @ v) / (norm[:, None] * norm[None, :]).clamp_min(1e-12)
    dead = norm < 1e-9
    corr[dead, :] = 0.0
    corr[:, dead] = 0.0
    return corr


def merge_groups(
    values_NA: Tensor,
    dirs_AD: Tensor,
    reads_AO: Tensor,
    corr_tol: float = 0.95,
    dir_tol: float = 0.9,
    read_tol: float = 0.95,
) -> list[list[int]]:
    """Connected components (sorted lists of node positions) of the merge relation."""
    a = values_NA.shape[1]
    corr = signed_corr(values_NA)
    cos_dir = unit_rows(dirs_AD.double()) @ unit_rows(dirs_AD.double()).T
    reads = reads_AO.double()
    has_read = reads.norm(dim=1) > 1e-9
    cos_read = unit_rows(reads) @ unit_rows(reads).T
    same = (corr >= corr_tol) | (
        (cos_dir >= dir_tol) & (cos_read >= read_tol) & has_read[:, None] & has_read[None, :]
    )
    parent = list(range(a))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(a):
        for j in range(i + 1, a):
            if bool(same[i, j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(a):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def merged_nodes(nodes: Sequence[Node], groups: list[list[int]], values_NA: Tensor) -> list[Node]:
    """One node per group: members pooled, direction the unit sum of the members'
    directions weighted by their mean |value|; id the smallest member latent."""
    weight_A = values_NA.abs().mean(dim=0)
    out = []
    for group in groups:
        members = tuple(sorted(m for i in group for m in nodes[i].members))
        d_D = torch.zeros(len(nodes[group[0]].direction), dtype=torch.float64)
        for i in group:
            d_D += float(weight_A[i]) * torch.tensor(nodes[i].direction, dtype=torch.float64)
        if len(group) > 1 and float(d_D.norm()) > 0:
            d_D = d_D / d_D.norm()
        direction = nodes[group[0]].direction if len(group) == 1 else tuple(d_D.tolist())
        out.append(Node(nodes[group[0]].site, members[0], members, direction))
    return out


def merge_site(
    fit: SiteFit, nodes: Sequence[Node], next_layer: Callable[[Tensor], Tensor], **tols: float
) -> list[Node]:
    """Merge the split nodes of one site (see the module docstring)."""
    if len(nodes) < 2:
        return list(nodes)
    values = node_values(fit.z_NM, nodes)
    dirs = torch.tensor([n.direction for n in nodes], dtype=torch.float64)
    groups = merge_groups(values, dirs, read_vectors(fit, nodes, next_layer), **tols)
    return merged_nodes(nodes, groups, values)
