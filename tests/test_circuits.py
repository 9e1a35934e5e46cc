"""Circuit pipeline: edge scoring by hand, filter and merge on constructed dictionaries.

The constructed dictionaries read the ``circuit`` toy's true directions (``Oracle``): they
are test fixtures with a known right answer, not decomposition methods.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from decompbench.circuits.edges import SiteFit, edge_matrix, singleton_nodes, site_fit
from decompbench.circuits.graph import Edge, LatentGraph, Node
from decompbench.circuits.integrate import merge_groups
from decompbench.circuits.joint import edge_penalty
from decompbench.circuits.pipeline import (
    CircuitSettings,
    build_graph,
    fit_sites,
    prepare,
    score_run,
)
from decompbench.circuits.score import edge_scores, match_nodes, score_graph
from decompbench.toys.base import GroundTruth, Toy

E = torch.eye(3)


def node(site: str, i: int, d: list[float]) -> Node:
    return Node(site, i, (i,), tuple(d))


def hand_graph() -> tuple[LatentGraph, dict[str, GroundTruth], list[tuple[str, int, str, int]]]:
    """Site a: true e0, e1, e2; site b: true e0, e1. Four true edges. Nodes: a10=e0,
    a11=e1, a12=(e0+e1)/sqrt2 (cos 0.71: unmatched); b20=e0, b21=e1, b22=-e1 (|cos| 1 but
    the wrong sign: unmatched). Graph edges: a10->b20 (true), a11->b20 (true), a12->b21."""
    s = 1 / math.sqrt(2)
    nodes = {
        "a": [node("a", 10, [1, 0, 0]), node("a", 11, [0, 1, 0]), node("a", 12, [s, s, 0])],
        "b": [node("b", 20, [1, 0]), node("b", 21, [0, 1]), node("b", 22, [0, -1])],
    }
    edges = [Edge("a", 10, "b", 20, 1.0), Edge("a", 11, "b", 20, 0.5), Edge("a", 12, "b", 21, 1.0)]
    truths = {
        "a": GroundTruth(E, ("x", "y", "z"), (True, True, True)),
        "b": GroundTruth(torch.eye(2), ("u", "v"), (True, True)),
    }
    true_edges = [("a", 0, "b", 0), ("a", 1, "b", 0), ("a", 2, "b", 1), ("a", 1, "b", 1)]
    return LatentGraph(("a", "b"), nodes, edges), truths, true_edges


def test_edge_precision_recall_f1_on_a_hand_made_graph() -> None:
    graph, truths, true_edges = hand_graph()
    score = score_graph(graph, truths, true_edges)
    assert score.matches == {"a": {10: 0, 11: 1}, "b": {20: 0, 21: 1}}
    e = score.edges
    assert e.true_flags == [True, True, False]
    assert e.precision == pytest.approx(2 / 3) and e.recall == pytest.approx(2 / 4)
    assert e.f1 == pytest.approx(4 / 7)  # 2 * (2/3) * (1/2) / (2/3 + 1/2)
    assert [s.recovered for s in score.sites] == [pytest.approx(2 / 3), 1.0]
    assert score.filter_precision is None and score.filter_recall is None


def test_signed_matching_tells_antipodal_features_apart() -> None:
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    nodes = [node("s", 0, [-1, 0]), node("s", 1, [1, 0])]
    assert match_nodes(G, nodes) == {1: 0, 0: 1}


def test_no_edges_scores_zero_and_duplicates_count_once() -> None:
    assert edge_scores([], {}, [("a", 0, "b", 0)]).f1 == 0.0
    m = {"a": {1: 0}, "b": {2: 0}}
    twice = [Edge("a", 1, "b", 2, 1.0), Edge("a", 1, "b", 2, 1.0)]
    e = edge_scores(twice, m, [("a", 0, "b", 0), ("a", 0, "b", 1)])
    assert (e.precision, e.recall) == (1.0, 0.5)


def test_graph_json_round_trip() -> None:
    graph, _, _ = hand_graph()
    graph.filtered = {"a": [node("a", 13, [0, 0, 1])], "b": []}
    graph.meta = {"toy": "hand"}
    back = LatentGraph.from_json(graph.to_json())
    assert back == graph


# --- constructed dictionaries on the `circuit` toy -----------------------------------


class Oracle:
    """encode = ReLU(x G^T) (exact on `circuit`'s l0 and l1), decode = z G; optional
    extra latents that split one feature: ``copies`` (co-firing halves) or ``by_size``
    (one latent below a magnitude, another above it)."""

    def __init__(self, G_KD: Tensor, split: int | None = None, how: str = "copies") -> None:
        self.G, self.split, self.how = G_KD, split, how

    def encode(self, x: Tensor) -> Tensor:
        z = torch.relu(x @ self.G.T)
        if self.split is None:
            return z
        f = z[:, self.split].clone()
        if self.how == "copies":
            z[:, self.split] = f / 2
            return torch.cat([z, f[:, None] / 2], dim=1)
        z[:, self.split] = f * (f < 0.8)
        return torch.cat([z, (f * (f >= 0.8))[:, None]], dim=1)

    def decode(self, z: Tensor) -> Tensor:
        k = self.G.shape[0]
        extra = z[:, k:].sum(dim=1) if z.shape[1] > k else 0.0
        zz = z[:, :k].clone()
        if self.split is not None:
            zz[:, self.split] += extra
        return zz @ self.G

    def directions(self) -> Tensor:
        return self.G if self.split is None else torch.cat([self.G, self.G[[self.split]]])


CFG = CircuitSettings(n_train=16, n_eval=2048)


@pytest.fixture(scope="module")
def circuit() -> tuple[Toy, dict[str, Tensor]]:
    toy, data = prepare("circuit", {}, 0, CFG)
    return toy, {s: d.eval_ND for s, d in data.items()}


def oracle_fits(toy: Toy, acts: dict[str, Tensor], **split: object) -> dict[str, SiteFit]:
    fits = {}
    for s in toy.sites:
        G = toy.ground_truth(s).directions_KD
        fits[s] = site_fit(s, Oracle(G, **split) if s == "l0" else Oracle(G), acts[s])  # type: ignore[arg-type]
    return fits


def test_true_dictionaries_give_the_true_circuit_and_filter_only_data_only(
    circuit: tuple[Toy, dict[str, Tensor]],
) -> None:
    toy, acts = circuit
    fits = oracle_fits(toy, acts)
    for steps in [(), ("filter",), ("merge", "filter")]:
        score = score_run(toy, build_graph(toy, fits, steps, CFG), CFG)
        assert (score.edges.precision, score.edges.recall) == (1.0, 1.0), steps
    graph = build_graph(toy, fits, ("filter",), CFG)
    assert sorted(n.id for n in graph.filtered["l0"]) == [5, 6, 7, 11]  # the data-only inputs
    assert graph.filtered["l1"] == []
    score = score_run(toy, graph, CFG)
    assert (score.filter_precision, score.filter_recall) == (1.0, 1.0)


@pytest.mark.parametrize("how", ["copies", "by_size"])
def test_merge_finds_a_split_feature_and_restores_the_circuit(
    circuit: tuple[Toy, dict[str, Tensor]], how: str
) -> None:
    toy, acts = circuit
    fits = oracle_fits(toy, acts, split=0, how=how)  # x0 split into latents 0 and 12
    plain = build_graph(toy, fits, (), CFG)
    assert len(plain.nodes["l0"]) == 13
    merged = build_graph(toy, fits, ("merge",), CFG)
    assert [n.members for n in merged.nodes["l0"] if len(n.members) > 1] == [(0, 12)]
    assert len(merged.nodes["l0"]) == 12  # nothing else merged (x1, x8 feed one gate only)
    assert score_run(toy, merged, CFG).edges.f1 == 1.0
    assert score_run(toy, plain, CFG).edges.f1 < 1.0


def test_gradient_edges_vanish_on_saturated_gates(circuit: tuple[Toy, dict[str, Tensor]]) -> None:
    """Gradient x activation sees nothing through a clamp that sits at 0 or 1."""
    toy, acts = circuit
    fits = oracle_fits(toy, acts)
    n0, n1 = singleton_nodes(fits["l0"]), singleton_nodes(fits["l1"])
    W = edge_matrix(fits["l0"], n0, fits["l1"], n1, toy.next_layer("l0"), "grad")
    assert float(W.max()) == 0.0
    W = edge_matrix(fits["l0"], n0, fits["l1"], n1, toy.next_layer("l0"), "ablation")
    assert float(W[0, 0]) == pytest.approx(1.0)  # x0 is necessary for 0&2 whenever it is on


def test_merge_groups_by_cofiring_or_by_direction_and_read() -> None:
    v = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [2.0, 4.0, 0.0, 1.0]])
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    reads = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # 0,1 co-fire; 1,2 point the same way and are read alike; 3 points like 0 but is read
    # differently.
    assert merge_groups(v, dirs, reads) == [[0, 1, 2], [3]]


def test_edge_penalty_by_hand() -> None:
    layer = torch.nn.Linear(2, 2, bias=False)
    layer.weight.data = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    x = torch.tensor([[3.0, 1.0]])
    z = torch.tensor([[2.0, 0.0]])
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    W_enc = torch.tensor([[1.0], [3.0]])
    # latent 0: f(x) - f(x - 2 e0) = (2, 0), . w = 2; latent 1 is silent.
    layer.requires_grad_(False)
    assert float(edge_penalty(x, z, W_dec, layer, W_enc)) == pytest.approx(2.0)


def test_joint_without_penalty_is_per_site_sae_topk() -> None:
    cfg = CircuitSettings(n_train=256, n_eval=64)
    toy, data = prepare("circuit", {}, 0, cfg)
    p = {"width": 8, "k": 2, "steps": 30, "batch_size": 32}
    alone = fit_sites(toy, data, "sae-topk", p, 0, joint=False)
    joint = fit_sites(toy, data, "sae-topk", {**p, "edge_coef": 0.0}, 0, joint=True)
    for s in toy.sites:
        assert torch.equal(alone[s].z_NM, joint[s].z_NM)
