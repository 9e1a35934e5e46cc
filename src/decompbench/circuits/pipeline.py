"""The circuit pipeline, end to end: toy -> per-site (or joint) decompositions -> graph ->
optional filter / merge -> pruned edges -> scores against the true circuit.

Each site is decomposed on its own with the chosen method, which sees exactly what the
benchmark runner would give it (``site_view``: activations only unless the method is
downstream-aware). Training and evaluation samples come from the runner's seeds, so a
site's dictionary is the one ``decompbench run`` would fit. Everything after the fits
(edges, filter, merge) reads the fitted dictionaries and the toy's layers, never the
ground truth; only ``score`` reads the ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from decompbench.bench.runner import SiteData, site_data, site_view
from decompbench.circuits.edges import (
    EdgeMode,
    SiteFit,
    edge_matrix,
    prune,
    singleton_nodes,
    site_fit,
)
from decompbench.circuits.graph import Edge, LatentGraph, Node
from decompbench.circuits.integrate import merge_site, output_effects, split_by_effect
from decompbench.circuits.joint import JointParams, fit_joint
from decompbench.circuits.score import CircuitScore, score_graph
from decompbench.config import StrictModel, validate
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.metrics.recovery import TAU
from decompbench.toys.base import Toy, build_toy, frozen_copy

STEPS = ("filter", "merge", "joint")
JOINT_METHOD = "sae-topk"


class CircuitSettings(StrictModel):
    """Sample sizes and the thresholds of the graph (none of them read the ground truth)."""

    n_train: int = Field(default=4096, ge=16)
    n_eval: int = Field(default=2048, ge=16)
    edge_mode: EdgeMode = "ablation"
    prune_tol: float = Field(default=0.1, ge=0, description="min edge weight kept")
    filter_tol: float = Field(default=0.05, ge=0, description="min relative output effect")
    merge_corr: float = Field(default=0.95, le=1)
    merge_dir: float = Field(default=0.9, le=1)
    merge_read: float = Field(default=0.95, le=1)
    tau: float = Field(default=TAU, gt=0, le=1, description="min cos for a node-feature match")


def parse_steps(text: str | None) -> tuple[str, ...]:
    """ "filter,merge" -> ("filter", "merge"); unknown steps are user errors."""
    steps = tuple(s.strip() for s in (text or "").split(",") if s.strip())
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UserError(f"--integrate: unknown step '{bad[0]}' (known: {', '.join(STEPS)})")
    return steps


def check_chain(toy: Toy, data: dict[str, SiteData]) -> None:
    """Every site must map onto the next one through ``toy.to_next_site``."""
    sites = list(toy.sites)
    if len(sites) < 2:
        raise UserError(f"toy '{toy.name}' has one site ({sites[0]}); a circuit needs two")
    for a, b in pairwise(sites):
        with torch.no_grad():
            mapped = toy.to_next_site(a)(data[a].eval_ND)
        want = data[b].eval_ND
        if mapped.shape != want.shape or not torch.allclose(mapped, want, atol=1e-4, rtol=1e-4):
            raise UserError(
                f"toy '{toy.name}': to_next_site('{a}') does not map site '{a}' onto site '{b}' "
                f"(it gives {tuple(mapped.shape[1:])}, site '{b}' is {tuple(want.shape[1:])})"
            )


def fit_sites(
    toy: Toy, data: dict[str, SiteData], method: str, params: dict[str, Any], seed: int,
    joint: bool,
) -> dict[str, SiteFit]:  # fmt: skip
    """Each site's fitted dictionary, evaluated on the evaluation samples."""
    if joint:
        if method != JOINT_METHOD:
            raise UserError(f"--integrate joint trains TopK SAEs: use --method {JOINT_METHOD}")
        p = validate(JointParams, params, f"method '{method}' params (joint)")
        maps = {s: frozen_copy(toy.to_next_site(s)) for s in toy.sites[:-1]}
        fitted = fit_joint({s: data[s].train_ND for s in toy.sites},
                           maps, p, seed)  # fmt: skip
        return {s: site_fit(s, fitted[s], data[s].eval_ND) for s in toy.sites}
    fits = {}
    for s in toy.sites:
        m = build_method(method, params)
        m.fit(site_view(toy, data[s], m), seed)
        fits[s] = site_fit(s, m, data[s].eval_ND)
    return fits


def build_graph(
    toy: Toy, fits: dict[str, SiteFit], steps: Sequence[str], cfg: CircuitSettings
) -> LatentGraph:
    """Nodes per site (merged, then filtered), then pruned edges between consecutive sites.

    Merging comes first: the halves of a split feature each look redundant when ablated
    alone (the other half still carries the feature), so the filter would drop both.
    """
    sites = tuple(toy.sites)
    nodes: dict[str, list[Node]] = {}
    filtered: dict[str, list[Node]] = {}
    for s in sites:
        nodes[s] = singleton_nodes(fits[s])
        if "merge" in steps:
            tols = dict(corr_tol=cfg.merge_corr, dir_tol=cfg.merge_dir, read_tol=cfg.merge_read)
            nodes[s] = merge_site(fits[s], nodes[s], toy.to_next_site(s), **tols)
        if "filter" in steps:
            effects = output_effects(fits[s], nodes[s], toy.downstream(s))
            nodes[s], filtered[s] = split_by_effect(nodes[s], effects, cfg.filter_tol)
    edges: list[Edge] = []
    for a, b in pairwise(sites):
        W = edge_matrix(fits[a], nodes[a], fits[b], nodes[b], toy.to_next_site(a), cfg.edge_mode)
        edges += prune(W, nodes[a], nodes[b], cfg.prune_tol)
    return LatentGraph(sites, nodes, edges, filtered)


@dataclass(frozen=True)
class CircuitRun:
    toy: Toy
    graph: LatentGraph
    score: CircuitScore


def prepare(toy_name: str, toy_params: dict[str, Any], seed: int,
            cfg: CircuitSettings) -> tuple[Toy, dict[str, SiteData]]:  # fmt: skip
    toy = build_toy(toy_name, toy_params, seed)
    data = {s: site_data(toy, s, cfg.n_train, cfg.n_eval, seed) for s in toy.sites}
    check_chain(toy, data)
    return toy, data


def score_run(toy: Toy, graph: LatentGraph, cfg: CircuitSettings) -> CircuitScore:
    truths = {s: toy.ground_truth(s) for s in toy.sites}
    return score_graph(graph, truths, toy.edges(), cfg.tau)


def run_circuit(
    toy_name: str, toy_params: dict[str, Any], method: str, method_params: dict[str, Any],
    steps: Sequence[str], seed: int, cfg: CircuitSettings | None = None,
) -> CircuitRun:  # fmt: skip
    """The whole pipeline for one toy, method and choice of integration steps."""
    cfg = cfg or CircuitSettings()
    toy, data = prepare(toy_name, toy_params, seed, cfg)
    fits = fit_sites(toy, data, method, method_params, seed, "joint" in steps)
    graph = build_graph(toy, fits, steps, cfg)
    graph.meta.update(
        toy=toy_name, toy_params=toy.params.model_dump(mode="json"), method=method,
        method_params=method_params, integrate=list(steps), seed=seed,
        settings=cfg.model_dump(mode="json"),
    )  # fmt: skip
    return CircuitRun(toy, graph, score_run(toy, graph, cfg))


def save_run(run: CircuitRun, out_dir: Path) -> tuple[Path, Path]:
    """Write ``graph.json`` (graph, scores) and ``graph.png`` into ``out_dir`` atomically."""
    from decompbench.bench.results import write_bytes_atomic, write_text_atomic
    from decompbench.circuits.plot import graph_png

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out_dir}: cannot create: {err.strerror or err}") from None
    data = {**run.graph.to_dict(), "score": run.score.to_dict()}
    toy = run.toy
    names = {s: toy.ground_truth(s).names for s in toy.sites}
    m = run.graph.meta
    title = f"{m.get('toy')} / {m.get('method')} / {'+'.join(m.get('integrate', [])) or 'none'}"
    picture = graph_png(run.graph, run.score, names, toy.edges(), title)
    json_path, png_path = out_dir / "graph.json", out_dir / "graph.png"
    try:
        write_text_atomic(json_path, json.dumps(data, indent=1, allow_nan=False) + "\n")
        write_bytes_atomic(png_path, picture)
    except OSError as err:
        raise UserError(f"{out_dir}: cannot write: {err.strerror or err}") from None
    return json_path, png_path
