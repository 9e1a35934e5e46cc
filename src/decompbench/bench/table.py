"""Terminal tables from run records: scores per (toy, site, method), and twin scores."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


def build_tables(
    records: list[Record], stances: list[StanceRow] | None = None
) -> list[tuple[str, Table]]:
    """The tables of ``run``/``show`` with a short name each (scores, twins, stance)."""
    tables = [("scores", scores_table(records))]
    twins = twin_table(records)
    if twins is not None:
        tables.append(("twins", twins))
    if stances:
        tables.append(("stance", stance_table(records, stances)))
    return tables


def runs_table(title: str, records: list[Record], with_error: bool) -> Table:
    """One row per record: toy (its parameters), site, method (its parameters), seed."""
    table = Table(title=title)
    for h in ("toy", "site", "method", "seed", "status") + (("error",) if with_error else ()):
        table.add_column(h)
    for r in records:
        cells = [label(r.toy, r.toy_params), r.site, label(r.method, r.method_params),
                 str(r.seed), r.status]  # fmt: skip
        table.add_row(*cells, *([r.error or ""] if with_error else []))
    return table


def extra_tables(records: list[Record], others: list[Record]) -> list[tuple[str, Table]]:
    """Failed runs of the suite, and recorded runs that are not in its current suite."""
    tables = []
    failed = [r for r in records if r.status == "failed"]
    if failed:
        tables.append(("failed", runs_table("Failed runs", failed, with_error=True)))
    if others:
        title = (
            "Recorded runs NOT in the current suite (kept from an earlier suite; "
            "`decompbench run SUITE --out DIR --prune` drops them)"
        )
        tables.append(("not_in_suite", runs_table(title, others, with_error=False)))
    return tables


def plain(cell: object) -> str:
    """A cell's text without rich markup."""
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def rows_of(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of ``table`` as plain strings."""
    headers = [plain(c.header) for c in table.columns]
    columns = [[plain(cell) for cell in c.cells] for c in table.columns]
    return headers, [list(row) for row in zip(*columns, strict=True)]


def markdown(tables: list[tuple[str, Table]]) -> str:
    """GitHub-flavoured Markdown: a heading and a pipe table per table."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = []
    for _, table in tables:
        headers, rows = rows_of(table)
        body = [line(headers), line(["---"] * len(headers)), *map(line, rows)]
        caption = f"\n{plain(table.caption)}\n" if table.caption else ""
        parts.append(f"### {plain(table.title or '')}\n\n" + "\n".join(body) + "\n" + caption)
    return "\n".join(parts)


def as_csv(tables: list[tuple[str, Table]]) -> str:
    """One CSV block per table (a ``table`` column names it), blank line between."""
    out = io.StringIO()
    for n, (name, table) in enumerate(tables):
        headers, rows = rows_of(table)
        if n:
            out.write("\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["table", *headers])
        writer.writerows([name, *row] for row in rows)
    return out.getvalue()


def as_json(tables: list[tuple[str, Table]]) -> str:
    """``{"tables": [{"name", "title", "columns", "rows"}]}`` with plain-text cells."""
    doc = []
    for name, table in tables:
        headers, rows = rows_of(table)
        doc.append({"name": name, "title": plain(table.title or ""), "columns": headers,
                    "rows": rows, "caption": plain(table.caption or "")})  # fmt: skip
    return json.dumps({"tables": doc}, indent=1, ensure_ascii=False) + "\n"


def print_text(tables: list[tuple[str, Table]], console: Console | None = None) -> None:
    """Never cut a cell: off a terminal each table is printed at its full natural width;
    on a terminal too narrow for it, cells wrap (long words fold) instead of ending in an
    ellipsis."""
    out = console or Console()
    for _, table in tables:
        for column in table.columns:
            column.no_wrap, column.overflow = False, "fold"
        if out.is_terminal:
            out.print(table)
            continue
        width = Console(width=10**5).measure(table).maximum
        Console(file=out.file, width=max(width, 20), no_color=True, highlight=False).print(table)


FORMATS = {"md": markdown, "csv": as_csv, "json": as_json}


def print_tables(
    records: list[Record],
    stances: list[StanceRow] | None = None,
    console: Console | None = None,
    fmt: str = "text",
    others: list[Record] | None = None,
) -> None:
    """Print the tables of ``records`` as text (``print_text``) or ``md``/``csv``/``json``;
    ``others``: recorded runs outside the current suite, listed apart."""
    tables = build_tables(records, stances) + extra_tables(records, others or [])
    if fmt != "text":
        (console or Console()).file.write(FORMATS[fmt](tables))
        return
    print_text(tables, console)
