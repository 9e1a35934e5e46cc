"""Circuits: wire per-site decompositions of a multi-layer toy into a cross-layer graph.

Decompose every site with one method (``pipeline``), attribute each latent's effect on
the latents of the next site through the toy's next layer (``edges``), optionally filter
latents with no downstream effect and merge split latents (``integrate``) or decompose all
sites jointly with a cross-layer edge penalty (``joint``), then score the graph against the
toy's true feature-to-feature edges (``score``) and draw it (``plot``).
"""

from decompbench.circuits.graph import Edge, LatentGraph, Node

__all__ = ["Edge", "LatentGraph", "Node"]
