"""A PNG of a latent graph: one column per site, nodes stacked, edges as lines.

Nodes matched to a true feature carry its name and are dark; unmatched nodes are grey,
filtered nodes are hollow markers under their column. Edges whose endpoints match a true
edge are green, other edges grey (width grows with the edge weight), and true edges the
graph missed between two matched nodes are red dashes. Drawn on matplotlib's Agg canvas
(no display, no pyplot state), like the report's figures.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from decompbench.bench.plots import png
from decompbench.circuits.graph import LatentGraph
from decompbench.circuits.score import CircuitScore, TrueEdge

TRUE_COLOUR, FALSE_COLOUR, MISSED_COLOUR = "#2a9d3c", "#b0b0b0", "#d04040"
MATCHED_COLOUR, UNMATCHED_COLOUR = "#1f4e79", "#9a9a9a"


def layout(graph: LatentGraph) -> dict[tuple[str, int], tuple[float, float]]:
    """(site, node id) -> (x, y): column per site, nodes evenly spaced top to bottom."""
    pos = {}
    for x, site in enumerate(graph.sites):
        column = graph.nodes[site] + graph.filtered.get(site, [])
        for i, node in enumerate(column):
            pos[(site, node.id)] = (float(x), -float(i))
    return pos


def graph_png(
    graph: LatentGraph,
    score: CircuitScore | None = None,
    names: dict[str, tuple[str, ...]] | None = None,
    true_edges: list[TrueEdge] | None = None,
    title: str = "",
) -> bytes:
    """The picture of ``graph``; ``score``/``names``/``true_edges`` add the comparison."""
    pos = layout(graph)
    rows = max([len(graph.nodes[s]) + len(graph.filtered.get(s, [])) for s in graph.sites] + [1])
    fig = Figure(figsize=(2.6 * len(graph.sites) + 1, max(3.0, 0.28 * rows + 1)))
    ax = fig.add_subplot()
    matches = score.matches if score is not None else {}
    flags = score.edges.true_flags if score is not None else [False] * len(graph.edges)
    top = max([e.weight for e in graph.edges] + [1e-12])
    for edge, true in zip(graph.edges, flags, strict=True):
        (x0, y0), (x1, y1) = pos[(edge.src_site, edge.src)], pos[(edge.dst_site, edge.dst)]
        ax.plot([x0, x1], [y0, y1], color=TRUE_COLOUR if true else FALSE_COLOUR,
                lw=0.4 + 2.2 * min(edge.weight / top, 1.0), zorder=2 if true else 1)  # fmt: skip
    _draw_missed(ax, graph, matches, true_edges or [], pos)
    for site in graph.sites:
        m, label = matches.get(site, {}), (names or {}).get(site)
        for node in graph.nodes[site]:
            x, y = pos[(site, node.id)]
            k = m.get(node.id)
            ax.scatter([x], [y], s=40, zorder=3,
                       color=MATCHED_COLOUR if k is not None else UNMATCHED_COLOUR)  # fmt: skip
            text = f"#{node.id}" + (f"={label[k]}" if k is not None and label else "")
            ax.annotate(text, (x, y), xytext=(5, 2), textcoords="offset points", fontsize=7)
        for node in graph.filtered.get(site, []):
            x, y = pos[(site, node.id)]
            ax.scatter([x], [y], s=30, facecolors="none", edgecolors=UNMATCHED_COLOUR, zorder=3)
    ax.set_xticks(range(len(graph.sites)), list(graph.sites))
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(graph.sites) - 0.3)
    ax.set_title(title, fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return png(fig)


def _draw_missed(
    ax: Axes,
    graph: LatentGraph,
    matches: dict[str, dict[int, int]],
    true_edges: list[TrueEdge],
    pos: dict[tuple[str, int], tuple[float, float]],
) -> None:
    """Red dashes for true edges between two matched nodes that the graph lacks."""
    node_of = {s: {k: a for a, k in m.items()} for s, m in matches.items()}
    have = {(e.src_site, e.src, e.dst_site, e.dst) for e in graph.edges}
    for sa, i, sb, g in true_edges:
        a, b = node_of.get(sa, {}).get(i), node_of.get(sb, {}).get(g)
        if a is None or b is None or (sa, a, sb, b) in have:
            continue
        (x0, y0), (x1, y1) = pos[(sa, a)], pos[(sb, b)]
        ax.plot([x0, x1], [y0, y1], color=MISSED_COLOUR, lw=0.8, ls="--", zorder=1)
