"""`decompbench circuit TOY --method M [--integrate filter,merge,joint] ...`

Runs the circuit pipeline once, prints its scores and writes ``OUT/graph.json`` (nodes,
edges, filtered latents, scores) and ``OUT/graph.png``. ``--params`` takes ``key=value``
pairs (YAML values) and/or YAML files holding a mapping; later entries override earlier.
Kept free of heavy imports: the parser is built on every ``decompbench`` call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from decompbench.errors import UserError


def add_circuit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("toy", help="a toy with two or more sites, e.g. circuit")
    p.add_argument("--method", required=True, help="decomposition method for every site")
    p.add_argument("--integrate", default="", help="comma list of filter, merge, joint")
    p.add_argument("--params", nargs="*", action="extend", default=[], metavar="K=V|FILE",
                   help="method parameters: key=value pairs or a YAML file")  # fmt: skip
    p.add_argument("--toy-params", nargs="*", action="extend", default=[], metavar="K=V|FILE",
                   help="toy parameters, as --params")  # fmt: skip
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="K=V", dest="settings",
                   help="pipeline settings: n_train, n_eval, edge_mode (ablation|grad), "
                   "prune_tol, filter_tol, merge_corr, merge_dir, merge_read, tau")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed (toy, data, fits)")
    p.add_argument("--out", type=Path, help="output directory (default runs/circuit-TIME)")


def load_params(items: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs (YAML values) and YAML files of a mapping, merged in order."""
    import yaml

    from decompbench.describe import parse_params

    out: dict[str, Any] = {}
    for item in items:
        if "=" in item:
            out.update(parse_params([item]))
            continue
        path = Path(item)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as err:
            raise UserError(f"{flag}: cannot read {path}: {err.strerror or err}") from None
        except yaml.YAMLError:
            raise UserError(f"{flag}: {path} is not valid YAML") from None
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{flag}: {path} must hold a mapping of parameters")
        out.update(data or {})
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_scores(run: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    sc, m = run.score, run.graph.meta
    title = f"{m['toy']} / {m['method']} / integrate: {'+'.join(m['integrate']) or 'none'}"
    sites = Table(title=f"Circuit: {title}")
    for col in ("site", "nodes", "filtered", "true", "recovered", "recovered (model)"):
        sites.add_column(col, justify="left" if col == "site" else "right")
    for s in sc.sites:
        sites.add_row(s.site, str(s.n_nodes), str(s.n_filtered), str(s.n_true),
                      _fmt(s.recovered), _fmt(s.recovered_model))  # fmt: skip
    total = Table(title="Edges against the true circuit; filter against data-only features")
    for col in ("edges", "true edges", "precision", "recall", "F1", "filter P", "filter R"):
        total.add_column(col, justify="right")
    e = sc.edges
    total.add_row(str(e.n_edges), str(e.n_true), _fmt(e.precision), _fmt(e.recall),
                  _fmt(e.f1), _fmt(sc.filter_precision), _fmt(sc.filter_recall))  # fmt: skip
    console = Console(highlight=False)
    console.print(sites)
    console.print(total)


def circuit_command(args: argparse.Namespace) -> int:
    from decompbench.circuits.pipeline import (
        CircuitSettings,
        parse_steps,
        run_circuit,
        save_run,
    )
    from decompbench.config import validate
    from decompbench.describe import parse_params

    steps = parse_steps(args.integrate)
    cfg = validate(CircuitSettings, parse_params(args.settings), "--set")
    params = load_params(args.params, "--params")
    toy_params = load_params(args.toy_params, "--toy-params")
    out = args.out or Path("runs") / time.strftime(f"circuit-{args.toy}-%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    run = run_circuit(args.toy, toy_params, args.method, params, steps, args.seed, cfg)
    print_scores(run)
    json_path, png_path = save_run(run, out)
    print(f"graph:   {json_path}")
    print(f"picture: {png_path}")
    return 0
