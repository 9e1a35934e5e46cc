"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every function takes plain numbers and returns PNG bytes; the report embeds them and
saves the same bytes under ``DIR/plots/``. ``matched_order`` is the one piece of logic:
it orders a |cos| matrix so the Hungarian matching lies on the diagonal.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Rectangle
from scipy.optimize import linear_sum_assignment

DPI = 100
MAX_TICKS = 40  # more rows/columns than this: no tick labels
MAX_ANNOTATED = 160  # cells; above it no numbers in the heatmap (text is the slow part)
CHAR_IN = 0.06  # width of one 7-pt tick-label character in inches (generous)
BAND_IN, GAP_IN = 0.15, 0.03  # the model/alive bands beside the heatmap, and their gap
MODEL_COLOUR, DATA_COLOUR, DEAD_COLOUR = "#1f4e79", "#e0a030", "#bbbbbb"


@dataclass(frozen=True)
class Figure:
    """A figure the report wants: ``draw(*args)`` (one of the functions below) returns its
    PNG bytes. Only plain data inside, so it can be drawn in another process."""

    name: str
    draw: Callable[..., bytes]
    args: tuple[Any, ...]
    alt: str
    caption: str = ""


def draw_figure(fig: Figure) -> bytes:
    return fig.draw(*fig.args)


def png(fig: MplFigure, tight: bool = True) -> bytes:
    """PNG bytes; ``tight`` crops to the drawn content (costs a second draw)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return buf.getvalue()


# --- heatmap --------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """Row (true feature) and column (latent) orders, and the matched (row, col) pairs."""

    rows: list[int]
    cols: list[int]
    matched: list[tuple[int, int]]


def match(cos_KM: np.ndarray, rows: list[int], cols: list[int]) -> dict[int, int]:
    """Hungarian one-to-one matching of ``rows`` to ``cols`` maximising summed |cos|."""
    if not rows or not cols:
        return {}
    r, c = linear_sum_assignment(cos_KM[np.ix_(rows, cols)], maximize=True)
    return {rows[int(i)]: cols[int(j)] for i, j in zip(r, c, strict=True)}


def matched_order(cos_KM: np.ndarray, alive_M: np.ndarray, model_K: np.ndarray) -> Order:
    """Hungarian matching of true features to alive latents, laid out on the diagonal.

    Model features are matched first, as in the scores; data-only features are then
    matched among the alive latents left over. Rows: matched features (model features
    first, each in ground-truth order), then the unmatched ones. Columns: the matched
    latent of each matched row, then unmatched alive latents by their nearest row, then
    dead latents.
    """
    k, m = cos_KM.shape
    alive = [j for j in range(m) if alive_M[j]]
    model = [i for i in range(k) if model_K[i]]
    pairs = match(cos_KM, model, alive)
    taken = set(pairs.values())
    pairs |= match(
        cos_KM, [i for i in range(k) if not model_K[i]], [j for j in alive if j not in taken]
    )
    by_kind = model + [i for i in range(k) if not model_K[i]]
    rows = [i for i in by_kind if i in pairs] + [i for i in by_kind if i not in pairs]
    cols = [pairs[i] for i in rows if i in pairs]
    pos = {i: p for p, i in enumerate(rows)}
    rest = [j for j in alive if j not in set(cols)]
    if k:
        rest.sort(key=lambda j: (pos[int(np.argmax(cos_KM[:, j]))], -float(cos_KM[:, j].max())))
    cols += rest + [j for j in range(m) if not alive_M[j]]
    return Order(rows, cols, [(i, pairs[i]) for i in rows if i in pairs])


def strip(ax: Axes, values: Sequence[int], vertical: bool, colours: list[str]) -> None:
    """A one-cell-wide band of categorical colours beside the heatmap."""
    arr = np.asarray(values)[:, None] if vertical else np.asarray(values)[None, :]
    ax.imshow(arr, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap_png(
    cos_KM: np.ndarray,
    feature_names: Sequence[str],
    model_K: np.ndarray,
    alive_M: np.ndarray,
    order: Order,
    title: str,
) -> bytes:
    """|cos| of true features (rows) vs latents (columns) in ``order``; PNG bytes."""
    k, m = cos_KM.shape
    assert k and m, "empty |cos| matrix"
    C = cos_KM[np.ix_(order.rows, order.cols)]
    row_names = [feature_names[i] for i in order.rows]
    size, boxes = heatmap_layout(k, m, max(map(len, row_names)), len(title))
    fig = MplFigure(figsize=size)
    ax = fig.add_axes(boxes["heat"])
    im = ax.imshow(C, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    outline_matches(ax, order)
    if k * m <= MAX_ANNOTATED:
        annotate(ax, C)
    ax_rows = fig.add_axes(boxes["rows"])
    strip(ax_rows, [0 if model_K[i] else 1 for i in order.rows], True, [MODEL_COLOUR, DATA_COLOUR])
    label_axes(ax_rows, ax, row_names, [f"#{j}" for j in order.cols])
    strip(
        fig.add_axes(boxes["cols"]),
        [0 if alive_M[j] else 1 for j in order.cols],
        False,
        ["#55a868", DEAD_COLOUR],
    )
    fig.colorbar(im, cax=fig.add_axes(boxes["bar"]), label="|cos|")
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / size[1], va="top")
    return png(fig, tight=False)


def heatmap_layout(
    k: int, m: int, row_chars: int, title_chars: int
) -> tuple[tuple[float, float], dict[str, tuple[float, float, float, float]]]:
    """Figure size and axes boxes (figure fractions) laid out in inches.

    Done by hand rather than by a tight bounding box, which would draw every cell's text
    twice.
    """
    hw, hh = max(1.2, min(0.34, 11.0 / m) * m), max(0.6, min(0.3, 9.0 / k) * k)
    ticks_w = row_chars * CHAR_IN if k <= MAX_TICKS else 0.0
    left = 0.35 + ticks_w + 0.06 + BAND_IN + GAP_IN
    bottom = 0.4 + (0.3 if m <= MAX_TICKS else 0.0)
    top, right = 0.45 + BAND_IN + GAP_IN, 0.1 + BAND_IN + 0.55
    W = max(left + hw + right, 0.3 + 0.085 * title_chars)
    H = bottom + hh + top
    inches = {
        "heat": (left, bottom, hw, hh),
        "rows": (left - GAP_IN - BAND_IN, bottom, BAND_IN, hh),
        "cols": (left, bottom + hh + GAP_IN, hw, BAND_IN),
        "bar": (left + hw + 0.1, bottom, BAND_IN, hh),
    }
    return (W, H), {n: (x / W, y / H, w / W, h / H) for n, (x, y, w, h) in inches.items()}


def outline_matches(ax: Axes, order: Order) -> None:
    """A white box around every Hungarian-matched cell."""
    col_of = {j: p for p, j in enumerate(order.cols)}
    row_of = {i: p for p, i in enumerate(order.rows)}
    for i, j in order.matched:
        corner = (col_of[j] - 0.5, row_of[i] - 0.5)
        ax.add_patch(Rectangle(corner, 1, 1, fill=False, edgecolor="white", linewidth=1.2))


def cell_text(v: float) -> str:
    """Two decimals without the leading zero: ``.93``, ``1.00``."""
    text = f"{v:.2f}"
    return text[1:] if text.startswith("0") else text


def annotate(ax: Axes, C: np.ndarray) -> None:
    for r in range(C.shape[0]):
        for c in range(C.shape[1]):
            v = float(C[r, c])
            colour = "black" if v > 0.6 else "white"
            ax.text(c, r, cell_text(v), ha="center", va="center", fontsize=7, color=colour)


def label_axes(ax_rows: Axes, ax: Axes, rows: list[str], cols: list[str]) -> None:
    """Row labels go on the left band (it sits between them and the heatmap)."""
    ax.set_yticks([])
    ax.set_xlabel("learned latents", fontsize=8)
    ax_rows.set_ylabel("true features", fontsize=8)
    if len(rows) <= MAX_TICKS:
        ax_rows.set_yticks(range(len(rows)), rows, fontsize=7)
    if len(cols) <= MAX_TICKS:
        ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=90)
    else:
        ax.set_xticks([])


# --- sweeps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One parameter setting of a method, averaged over seeds."""

    l0: float
    score: float | None
    chance: float | None
    fvu: float | None
    label: str


def sweep_png(series: dict[str, list[Point]], score_name: str, title: str) -> bytes:
    """Recovery vs L0 and FVU vs L0, one line per method through its settings."""
    fig = MplFigure(figsize=(11, 4))
    ax_rec, ax_fvu = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(series))]
    for (method, pts), colour in zip(sorted(series.items()), colours, strict=True):
        pts = sorted(pts, key=lambda p: p.l0)
        xs = [p.l0 for p in pts]
        ax_rec.plot(xs, [nan(p.score) for p in pts], "o-", color=colour, label=method)
        ax_rec.plot(xs, [nan(p.chance) for p in pts], "o:", color=colour, mfc="none", alpha=0.6)
        ax_fvu.plot(xs, [nan(p.fvu) for p in pts], "o-", color=colour, label=method)
    ax_rec.set_ylabel(f"{score_name} (hollow, dotted: chance)")
    ax_rec.set_ylim(-0.02, 1.02)
    ax_fvu.set_ylabel("FVU")
    for ax in (ax_rec, ax_fvu):
        ax.set_xlabel("L0 (mean active latents per sample)")
        ax.grid(alpha=0.3)
        if all(p.l0 > 0 for pts in series.values() for p in pts):
            xs_all = [p.l0 for pts in series.values() for p in pts]
            if xs_all and max(xs_all) / min(xs_all) > 20:
                ax.set_xscale("log")
    ax_fvu.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return png(fig)


def nan(v: float | None) -> float:
    return float("nan") if v is None else v


# --- twins ----------------------------------------------------------------------------


def twin_png(
    labels: list[str], per_twin: dict[str, dict[str, list[float | None]]], title: str
) -> bytes:
    """Grouped bars: each setting's score on every twin, for plain and strict MCC.

    ``per_twin[metric][twin]`` lists one score per label; the twin score (the lower
    one) is drawn as a black tick.
    """
    metrics = list(per_twin)
    fig = MplFigure(figsize=(11, 1.6 + 0.42 * len(labels)))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    y = np.arange(len(labels))
    for ax, metric in zip(axes, metrics, strict=True):
        twins = sorted(per_twin[metric])
        height = 0.8 / max(len(twins), 1)
        for t, twin in enumerate(twins):
            vals = [nan(v) for v in per_twin[metric][twin]]
            ax.barh(y - 0.4 + height * (t + 0.5), vals, height, label=f"use={twin}", color=f"C{t}")
        lows = [
            min((nan(per_twin[metric][tw][i]) for tw in twins), default=float("nan"))
            for i in range(len(labels))
        ]
        ax.plot(lows, y, "k|", markersize=14, label="twin score (min)")
        ax.set_xlim(0, 1.02)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10, y=1.0 + 0.25 / (1.6 + 0.42 * len(labels)))
    return png(fig)
