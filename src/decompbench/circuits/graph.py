"""The latent graph: nodes (groups of latents at one site), weighted edges, JSON I/O.

A node is one or more latents of a site's fitted decomposition (more than one after a
merge), with the unit direction it stands for. Edges run from a node at one site to a
node at the next site. Latents removed by the filter are kept in ``filtered`` (per site)
so that the filter itself can be scored. The JSON form is plain data: no code is ever
read back from a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from decompbench.errors import UserError

FORMAT = "decompbench-circuit-v1"


@dataclass(frozen=True)
class Node:
    """``members``: latent indices of the site's decomposition; ``direction``: unit [d]."""

    site: str
    id: int
    members: tuple[int, ...]
    direction: tuple[float, ...]


@dataclass(frozen=True)
class Edge:
    """An attribution edge from node ``src`` at ``src_site`` to node ``dst`` at ``dst_site``."""

    src_site: str
    src: int
    dst_site: str
    dst: int
    weight: float


@dataclass
class LatentGraph:
    sites: tuple[str, ...]
    nodes: dict[str, list[Node]]
    edges: list[Edge]
    filtered: dict[str, list[Node]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def node(self, site: str, node_id: int) -> Node:
        return next(n for n in self.nodes[site] if n.id == node_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "sites": list(self.sites),
            "nodes": [asdict(n) for s in self.sites for n in self.nodes[s]],
            "filtered": [asdict(n) for s in self.sites for n in self.filtered.get(s, [])],
            "edges": [asdict(e) for e in self.edges],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentGraph:
        if data.get("format") != FORMAT:
            raise UserError(f"not a circuit graph (format {data.get('format')!r}, want {FORMAT})")
        sites = tuple(str(s) for s in data["sites"])
        nodes: dict[str, list[Node]] = {s: [] for s in sites}
        filtered: dict[str, list[Node]] = {s: [] for s in sites}
        for key, table in (("nodes", nodes), ("filtered", filtered)):
            for n in data[key]:
                table[n["site"]].append(
                    Node(n["site"], int(n["id"]), tuple(n["members"]), tuple(n["direction"]))
                )
        edges = [Edge(**e) for e in data["edges"]]
        return cls(sites, nodes, edges, filtered, dict(data.get("meta", {})))

    @classmethod
    def from_json(cls, text: str) -> LatentGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"circuit graph: invalid JSON ({err.msg})") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"circuit graph: malformed ({type(err).__name__}: {err})") from None
