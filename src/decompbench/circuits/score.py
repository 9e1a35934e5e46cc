"""Score a latent graph against the toy's true circuit. Pure functions of the graph.

Matching: at each site, nodes are matched one-to-one to true features by the Hungarian
matching of ``metrics.recovery`` on the *signed* cosine (clipped at 0) between a node's
oriented direction and the feature's direction; a pair counts only when its cosine is at
least ``tau``. Signed, because antipodal features (+q and -q, as in ``circuit``) are
different features that |cos| cannot tell apart.

* Edges: a graph edge a -> b is true when a and b are matched to features i, g and
  (site_a, i, site_b, g) is a true edge. Precision = true graph edges / graph edges;
  recall = true edges hit / true edges; F1 their harmonic mean (0 when both are 0).
* Sites: share of true features (all, and model features only) matched by a node.
* Filter: nodes and filtered nodes are matched together (the graph before the filter);
  precision = filtered nodes matched to a data-only feature / filtered nodes; recall =
  data-only features whose matched node was filtered / data-only features (``None``
  when there is nothing to divide by).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from decompbench.circuits.graph import Edge, LatentGraph, Node
from decompbench.metrics.recovery import TAU, hungarian, unit_rows
from decompbench.toys.base import GroundTruth

TrueEdge = tuple[str, int, str, int]


def match_nodes(G_KD: Tensor, nodes: Sequence[Node], tau: float = TAU) -> dict[int, int]:
    """node id -> true feature index, for Hungarian pairs with signed cos >= ``tau``."""
    if not nodes or G_KD.shape[0] == 0:
        return {}
    D_AD = torch.tensor([n.direction for n in nodes], dtype=torch.float64)
    sim_KA = (unit_rows(G_KD.double()) @ unit_rows(D_AD).T).clamp_min(0.0)
    return {nodes[a].id: k for k, a in hungarian(sim_KA) if float(sim_KA[k, a]) >= tau}


def f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass(frozen=True)
class EdgeScore:
    precision: float
    recall: float
    f1: float
    n_edges: int
    n_true: int
    true_flags: list[bool]  # per graph edge, in graph order


def edge_scores(
    edges: Sequence[Edge], matches: dict[str, dict[int, int]], true_edges: Sequence[TrueEdge]
) -> EdgeScore:
    truth = set(true_edges)
    flags, hit = [], set()
    for e in edges:
        i, g = matches.get(e.src_site, {}).get(e.src), matches.get(e.dst_site, {}).get(e.dst)
        key = (e.src_site, i, e.dst_site, g) if i is not None and g is not None else None
        flags.append(key in truth)
        if key in truth:
            hit.add(key)
    p = sum(flags) / len(edges) if edges else 0.0
    r = len(hit) / len(truth) if truth else 0.0
    return EdgeScore(p, r, f1(p, r), len(edges), len(truth), flags)


@dataclass(frozen=True)
class SiteScore:
    site: str
    n_nodes: int
    n_filtered: int
    n_true: int
    recovered: float  # share of all true features matched by a node
    recovered_model: float  # share of model features matched by a node


def site_score(site: str, gt: GroundTruth, nodes: Sequence[Node], n_filtered: int,
               tau: float) -> tuple[SiteScore, dict[int, int]]:  # fmt: skip
    m = match_nodes(gt.directions_KD, nodes, tau)
    hit = set(m.values())
    model = [k for k, is_model in enumerate(gt.is_model) if is_model]
    rec = len(hit) / len(gt.is_model) if gt.is_model else 0.0
    rec_model = sum(k in hit for k in model) / len(model) if model else 0.0
    return SiteScore(site, len(nodes), n_filtered, len(gt.is_model), rec, rec_model), m


def filter_scores(
    graph: LatentGraph, truths: dict[str, GroundTruth], tau: float
) -> tuple[float | None, float | None]:
    """(precision, recall) of the filter against the data-only features (module doc)."""
    n_filtered = n_right = n_data = n_found = 0
    for site in graph.sites:
        gt, removed = truths[site], graph.filtered.get(site, [])
        m = match_nodes(gt.directions_KD, [*graph.nodes[site], *removed], tau)
        removed_ids = {n.id for n in removed}
        data_only = {k for k, is_model in enumerate(gt.is_model) if not is_model}
        n_filtered += len(removed)
        n_right += sum(m.get(i) in data_only for i in removed_ids)
        n_data += len(data_only)
        n_found += sum(1 for i, k in m.items() if k in data_only and i in removed_ids)
    return (n_right / n_filtered if n_filtered else None, n_found / n_data if n_data else None)


@dataclass(frozen=True)
class CircuitScore:
    edges: EdgeScore
    sites: list[SiteScore]
    filter_precision: float | None
    filter_recall: float | None
    matches: dict[str, dict[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        e = self.edges
        return {
            "edge_precision": e.precision, "edge_recall": e.recall, "edge_f1": e.f1,
            "n_edges": e.n_edges, "n_true_edges": e.n_true,
            "sites": [asdict(s) for s in self.sites],
            "filter_precision": self.filter_precision, "filter_recall": self.filter_recall,
            "matches": {s: {str(a): k for a, k in m.items()} for s, m in self.matches.items()},
        }  # fmt: skip


def score_graph(
    graph: LatentGraph,
    truths: dict[str, GroundTruth],
    true_edges: Sequence[TrueEdge],
    tau: float = TAU,
) -> CircuitScore:
    sites, matches = [], {}
    for site in graph.sites:
        n_removed = len(graph.filtered.get(site, []))
        s, matches[site] = site_score(site, truths[site], graph.nodes[site], n_removed, tau)
        sites.append(s)
    fp, fr = filter_scores(graph, truths, tau) if graph.filtered else (None, None)
    return CircuitScore(edge_scores(graph.edges, matches, true_edges), sites, fp, fr, matches)
