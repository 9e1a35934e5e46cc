"""The ``export-acts`` and ``score`` subcommands.

``score PATH --toy TOY --site S`` reads a dictionary trained anywhere (``dictionaries``),
scores it on the runner's evaluation samples of that seed with the suite's metrics and
chance levels, and prints them. With ``--out RUNDIR`` it also appends one ``ok`` record to
``RUNDIR/results.jsonl`` (method name ``--name``, default ``FORMAT:NAME``; parameters: the
path, format and SHA-256 of the files), writes the run's artefacts and rewrites
``stance.json`` and the report, so the dictionary sits in ``show``, the verdict and the
report beside built-in methods. Everything is read, checked and scored before anything is
written.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from decompbench.cli import positive_int
from decompbench.errors import UserError

SHOWN = ("mcc", "mcc_strict", "mmcs", "mcc_act", "recall", "precision", "rel_dir_share3",
         "fvu", "l0", "n_alive", "width", "n_true", "out_fvu", "causal_agreement")  # fmt: skip


def files_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted)."""
    from decompbench.real.store import file_sha256

    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def print_scores(title: str, metrics: dict[str, Any]) -> None:
    print(title)
    print(f"  {'metric':<16} {'value':>10} {'chance':>10}")
    for key in SHOWN:
        if key not in metrics:
            continue
        v, c = metrics[key], metrics.get(f"{key}_chance")
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        chance = f"{c:.4g}" if isinstance(c, float) else ""
        print(f"  {key:<16} {text:>10} {chance:>10}")


def cmd_export_acts(args: argparse.Namespace) -> int:
    from decompbench.describe import parse_params
    from decompbench.io.acts import MANIFEST, export_acts

    m = export_acts(args.toy, parse_params(args.params), args.site, args.seed, args.n_train,
                    args.n_eval, args.out, args.force)  # fmt: skip
    print(f"{m['toy']}@{m['site']} seed {m['seed']}: train [{m['n_train']}, {m['d']}], "
          f"eval [{m['n_eval']}, {m['d']}]")  # fmt: skip
    print(f"wrote {args.out / MANIFEST}")
    return 0


def score_record(args: argparse.Namespace, kind: str, scored: Any, params: dict[str, Any]) -> Any:
    from decompbench.bench.results import Record, make_run_id
    from decompbench.bench.suite import normalised

    name = args.name or f"{kind}:{args.path.resolve().name}"
    mparams = {"path": str(args.path.resolve()), "format": kind,
               "sha256": files_sha256(args.path)}  # fmt: skip
    identity = dict(toy=args.toy, toy_params=normalised("toy", args.toy, params), site=args.site,
                    method=name, method_params=mparams, seed=args.seed, n_train=None,
                    n_eval=args.n_eval)  # fmt: skip
    return Record(
        toy=args.toy, toy_params=params, site=args.site, method=name, method_params=mparams,
        access=args.access, directions=scored.method.directions_kind, seed=args.seed,
        status="ok", metrics=scored.metrics, wall_s=scored.wall_s,
        run_id=make_run_id(identity), n_train=None, n_eval=args.n_eval,
    )  # fmt: skip


def append_scored(out: Path, record: Any, scored: Any) -> None:
    """Append ``record`` to ``out`` with its artefacts; rewrite the verdict and report."""
    from decompbench.bench.artefacts import run_artefacts, write_run_artefacts
    from decompbench.bench.executors import usable_cores
    from decompbench.bench.report import write_report
    from decompbench.bench.results import RESULTS, append_record, read_records, scan_results
    from decompbench.bench.runner import check_out_dir, locked, make_dir
    from decompbench.bench.verdict import verdict, write_stance

    check_out_dir(out)
    if any(r.run_id == record.run_id for r in scan_results(out / RESULTS).records):
        raise UserError(f"{out / RESULTS} already holds this dictionary on this site and seed")
    gt, f = scored.toy.ground_truth(scored.site), scored.toy.downstream(scored.site)
    meta = record.model_dump(exclude={"status", "error", "metrics", "wall_s"})
    arts = run_artefacts(str(record.run_id), scored.method, gt, scored.eval_ND,
                         scored.eval_feats_NK, f, meta=meta)  # fmt: skip
    make_dir(out)
    with locked(out):
        write_run_artefacts(out, arts)
        append_record(out / RESULTS, record)
    print(f"results: {out / RESULTS}")
    print(f"stance:  {write_stance(out, verdict(read_records(out)))}")
    print(f"report:  {write_report(out, jobs=usable_cores())}")


def cmd_score(args: argparse.Namespace) -> int:
    from decompbench.api import score_on_site, toy_of
    from decompbench.describe import parse_params
    from decompbench.io.dictionaries import read_dictionary

    params = parse_params(args.params)
    toy = toy_of(args.toy, params, args.seed)
    toy.check_site(args.site)
    method, kind = read_dictionary(args.path)
    scored = score_on_site(method, toy, args.site, args.seed, args.n_eval)
    record = score_record(args, kind, scored, params)
    print_scores(f"{record.method} ({kind}) on {args.toy}@{args.site}, seed {args.seed}",
                 scored.metrics)  # fmt: skip
    if args.out is not None:
        append_scored(args.out, record, scored)
    return 0


def add_io_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """Register ``export-acts`` and ``score``; return their parsers (for ``--plugin``)."""
    ex = sub.add_parser("export-acts", help="write a toy site's activations as safetensors")
    ex.add_argument("toy", help="toy name (see `decompbench list`)")
    ex.add_argument("--params", nargs="*", default=[], metavar="K=V", help="toy parameters")
    ex.add_argument("--site", required=True, help="the toy's site")
    ex.add_argument("--seed", type=int, default=0, help="run seed (toy and samples)")
    ex.add_argument("--n-train", type=positive_int, default=16384, help="training samples")
    ex.add_argument("--n-eval", type=positive_int, default=4096, help="evaluation samples")
    ex.add_argument("--out", type=Path, required=True, help="output folder")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(fn=cmd_export_acts)
    sc = sub.add_parser("score", help="score a dictionary trained elsewhere on a toy site")
    sc.add_argument("path", type=Path, help="SAELens/sparsify/decompbench folder or .safetensors")
    sc.add_argument("--toy", required=True, help="toy name")
    sc.add_argument("--params", nargs="*", default=[], metavar="K=V", help="toy parameters")
    sc.add_argument("--site", required=True, help="the toy's site")
    sc.add_argument("--seed", type=int, default=0, help="run seed (toy and samples)")
    sc.add_argument("--n-eval", type=positive_int, default=4096, help="evaluation samples")
    sc.add_argument("--out", type=Path, help="run directory to append a record to")
    sc.add_argument("--name", help="method name in the record (default FORMAT:NAME)")
    sc.add_argument(
        "--access", choices=["activation_only", "downstream_aware"], default="activation_only",
        help="what the dictionary's training saw (default activation_only)",
    )  # fmt: skip
    sc.set_defaults(fn=cmd_score)
    return [ex, sc]
