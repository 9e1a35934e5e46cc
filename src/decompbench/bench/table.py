"""Terminal tables from run records: scores per (toy, site, method), and twin scores."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from decompbench.bench.results import Record
from decompbench.bench.rows import STANCE_HEADERS, stance_cells, stance_legend
from decompbench.bench.verdict import StanceRow

TWIN_KEY = "use"
COLUMNS = [  # (metric, header, has a chance level)
    ("mcc", "MCC", True),
    ("mcc_strict", "strict", True),
    ("mcc_strict_all", "strict-all", True),
    ("mcc_act", "MCC-act", True),
    ("mmcs", "MMCS", True),
    ("recall", "recall", True),
    ("composition", "compos.", True),
    ("fvu", "FVU", False),
    ("l0", "L0", False),
    ("n_alive", "alive", False),
]


def label(name: str, params: dict[str, Any], keys: set[str] | None = None) -> str:
    """``name k=v ...`` with compact values; only ``keys`` when given."""
    parts = [
        f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
        for k, v in sorted(params.items())
        if keys is None or k in keys
    ]
    return " ".join([name, *parts])


def varying_keys(entries: list[tuple[str, dict[str, Any]]]) -> dict[str, set[str]]:
    """Per name, the parameter keys whose values are not the same in every entry."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, params in entries:
        by_name[name].append(params)
    return {
        name: {
            k
            for k in set().union(*plist)
            if len({json.dumps(p.get(k), sort_keys=True) for p in plist}) > 1
        }
        for name, plist in by_name.items()
    }


class Labeller:
    """Short labels: a toy or method shows only the parameters that vary in the records."""

    def __init__(self, records: list[Record]) -> None:
        self.toy_keys = varying_keys([(r.toy, r.toy_params) for r in records])
        self.method_keys = varying_keys([(r.method, r.method_params) for r in records])

    def toy(self, name: str, params: dict[str, Any]) -> str:
        return label(name, params, self.toy_keys.get(name, set()))

    def method(self, name: str, params: dict[str, Any]) -> str:
        return label(name, params, self.method_keys.get(name, set()))


def mean_metric(records: list[Record], key: str) -> float | None:
    vals = [r.metrics.get(key) for r in records if r.status == "ok"]
    nums = [float(v) for v in vals if v is not None]
    return statistics.fmean(nums) if nums else None


def fmt(v: float | None, chance: float | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return text if chance is None else f"{text} [dim]({chance:.2f})[/dim]"


def group_runs(records: list[Record]) -> dict[tuple[str, str, str], list[Record]]:
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    names = Labeller(records)
    for r in records:
        key = (names.toy(r.toy, r.toy_params), r.site, names.method(r.method, r.method_params))
        groups[key].append(r)
    return groups


def scores_table(records: list[Record]) -> Table:
    table = Table(title="Recovery of the model's features (mean over seeds; chance in brackets)")
    for h in ("toy", "site", "method", "access", "runs"):
        table.add_column(h, no_wrap=h != "method")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for (toy, site, method), runs in group_runs(records).items():
        ok = [r for r in runs if r.status == "ok"]
        cells = [
            fmt(mean_metric(ok, key), mean_metric(ok, f"{key}_chance") if chance else None)
            for key, _, chance in COLUMNS
        ]
        access = "act-only" if runs[0].access == "activation_only" else "downstream"
        n = f"{len(ok)}/{len(runs)}"
        table.add_row(toy, site, method, access, n, *cells)
    return table


def twin_table(records: list[Record]) -> Table | None:
    """Per method: its score on each twin and the twin score (the lower of the two)."""
    twins: dict[tuple[str, str, str], dict[str, list[Record]]] = defaultdict(dict)
    names = Labeller(records)
    for r in records:
        if TWIN_KEY not in r.toy_params:
            continue
        rest = {k: v for k, v in r.toy_params.items() if k != TWIN_KEY}
        key = (names.toy(r.toy, rest), r.site, names.method(r.method, r.method_params))
        twins[key].setdefault(str(r.toy_params[TWIN_KEY]), []).append(r)
    rows = {k: v for k, v in twins.items() if len(v) >= 2}
    if not rows:
        return None
    table = Table(title="Twins: the same activations, used differently downstream")
    for h in (
        "toy",
        "site",
        "method",
        "MCC per twin",
        "twin MCC",
        "strict per twin",
        "twin strict",
    ):
        table.add_column(h)
    for (toy, site, method), by_use in rows.items():
        cells = []
        for metric in ("mcc", "mcc_strict"):
            per = {use: mean_metric(rs, metric) for use, rs in sorted(by_use.items())}
            vals = [v for v in per.values() if v is not None]
            cells.append(" / ".join(f"{u} {fmt(v)}" for u, v in per.items()))
            cells.append(fmt(min(vals)) if len(vals) == len(per) else "-")
        table.add_row(toy, site, method, *cells)
    return table


def stance_table(records: list[Record], stances: list[StanceRow]) -> Table:
    th = stances[0].thresholds if stances else {}
    table = Table(title="Stance per toy and site", caption=escape(stance_legend(th)))
    for h in STANCE_HEADERS:
        table.add_column(h, no_wrap=h in ("toy", "site", "stance"))
    names = Labeller(records)
    for s in stances:
        cells = stance_cells(s, names.toy(s.toy, s.toy_params))
        table.add_row(*(escape(c) for c in cells))
    return table


def print_tables(
    records: list[Record],
    stances: list[StanceRow] | None = None,
    console: Console | None = None,
) -> None:
    console = console or Console(width=max(Console().width, 150))
    console.print(scores_table(records))
    twins = twin_table(records)
    if twins is not None:
        console.print(twins)
    if stances:
        console.print(stance_table(records, stances))
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        console.print(f"[red]failed[/red] {r.toy} {r.site} {r.method} seed {r.seed}: {r.error}")
