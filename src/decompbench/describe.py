"""`decompbench describe TOY [--params k=v ...]`: a toy's sites, true features and edges.

Values are YAML scalars or flow lists (``values=[4,4]``, ``use=composed``); the toy's
``Params`` model validates them, so a bad key or value is a one-line ``UserError``.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from decompbench.errors import UserError
from decompbench.toys.base import GroundTruth, Toy, build_toy

WIDTH = 96


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml(v)}``; malformed or repeated keys are user errors."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--params: expected key=value, got '{pair}'")
        if key in params:
            raise UserError(f"--params: key '{key}' given twice")
        try:
            params[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--params: cannot parse the value of '{key}': '{text}'") from None
    return params


def _wrapped(label: str, items: list[str]) -> list[str]:
    text = ", ".join(items) if items else "-"
    return textwrap.wrap(
        text, WIDTH, initial_indent=f"    {label:<11}", subsequent_indent=" " * 15
    ) or [f"    {label:<11}-"]


def site_lines(site: str, gt: GroundTruth) -> list[str]:
    """The block describing one site's ground truth."""
    model = [n for n, m in zip(gt.names, gt.is_model, strict=True) if m]
    data = [n for n, m in zip(gt.names, gt.is_model, strict=True) if not m]
    k, d = gt.directions_KD.shape
    lines = [f"  site {site}: d={d}, {k} true features ({len(model)} model, {len(data)} data-only)"]
    lines += _wrapped("model:", model) + _wrapped("data-only:", data)
    if gt.groups is None:
        lines.append("    groups:    none")
    else:
        members: dict[int, list[str]] = {}
        for name, g in zip(gt.names, gt.groups, strict=True):
            members.setdefault(g, []).append(name)
        groups = [f"g{g}={{{' '.join(ns)}}}" for g, ns in sorted(members.items())]
        lines += _wrapped("groups:", groups)
    return lines


def edge_lines(toy: Toy) -> list[str]:
    """Edges grouped by target (``b <- a1, a2``) or by source (``a -> b1, b2``), whichever
    gives fewer lines."""
    edges = toy.edges()
    if not edges:
        return ["  edges: none"]
    names = {s: toy.ground_truth(s).names for s in toy.sites}
    into: dict[str, list[str]] = {}
    out_of: dict[str, list[str]] = {}
    for sa, fa, sb, fb in edges:
        a, b = f"{sa}.{names[sa][fa]}", f"{sb}.{names[sb][fb]}"
        into.setdefault(b, []).append(a)
        out_of.setdefault(a, []).append(b)
    grouped, arrow = (into, "<-") if len(into) <= len(out_of) else (out_of, "->")
    lines = [f"  edges: {len(edges)}"]
    for key, others in grouped.items():
        lines += textwrap.wrap(
            f"{key} {arrow} {', '.join(others)}",
            WIDTH,
            initial_indent="    ",
            subsequent_indent="        ",
        )
    return lines


def describe(name: str, pairs: list[str], seed: int = 0) -> str:
    """The full description of toy ``name`` built with ``pairs`` as parameters."""
    toy = build_toy(name, parse_params(pairs), seed)
    shown = " ".join(f"{k}={v}" for k, v in toy.params.model_dump().items())
    lines = [f"toy {name} (seed {seed}): {toy.summary}", f"  params: {shown}"]
    for site in toy.sites:
        lines += site_lines(site, toy.ground_truth(site))
    lines += edge_lines(toy)
    return "\n".join(lines)


def site_json(gt: GroundTruth) -> dict[str, Any]:
    """One site's ground truth as plain JSON values (directions as lists of floats)."""
    rows = gt.directions_KD.double().tolist()

    def part(model: bool) -> dict[str, Any]:
        keep = [i for i, m in enumerate(gt.is_model) if m == model]
        return {"names": [gt.names[i] for i in keep], "directions": [rows[i] for i in keep]}

    return {
        "d": int(gt.directions_KD.shape[1]),
        "names": list(gt.names),
        "is_model": list(gt.is_model),
        "groups": None if gt.groups is None else list(gt.groups),
        "model": part(True),
        "data_only": part(False),
    }


def describe_json(name: str, pairs: list[str], seed: int = 0) -> dict[str, Any]:
    """``describe --json``: sites with model and data-only true directions, groups, edges."""
    toy = build_toy(name, parse_params(pairs), seed)
    names = {s: toy.ground_truth(s).names for s in toy.sites}
    edges = [
        {"from_site": sa, "from_feature": names[sa][fa], "from_index": fa,
         "to_site": sb, "to_feature": names[sb][fb], "to_index": fb}
        for sa, fa, sb, fb in toy.edges()
    ]  # fmt: skip
    return {
        "toy": name,
        "seed": seed,
        "summary": toy.summary,
        "params": toy.params.model_dump(mode="json"),
        "sites": {s: site_json(toy.ground_truth(s)) for s in toy.sites},
        "edges": edges,
    }
