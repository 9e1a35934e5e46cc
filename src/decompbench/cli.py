"""Command line: `decompbench list | run | show | describe | params | report | circuit |
train-real | export | import | export-acts | score` (`decompbench COMMAND --help` for each);
``--plugin MODULE`` (repeatable) on most of them.

Any bad input ends with one line on stderr and exit code 2, never a traceback; `run` exits
with 1 when some runs of the suite failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from decompbench.errors import UserError

EXIT_FAILED_RUNS = 1  # the suite ran, but some runs failed (see the failed lines)
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.splitlines())}\n")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers like 0,1 (got {text!r})"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    from decompbench.registry import all_methods, all_toys

    console = Console(highlight=False, soft_wrap=True)
    console.print("[bold]toys[/bold]")
    for name, toy in all_toys().items():
        console.print(f"  {name:<22} {toy.summary}")
    console.print("[bold]methods[/bold]")
    for name, m in all_methods().items():
        kind = "activation-only " if m.access == "activation_only" else "downstream-aware"
        console.print(f"  {name:<22} {kind}  {m.summary}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from decompbench.bench.executors import usable_cores
    from decompbench.bench.report import write_report
    from decompbench.bench.runner import run_suite
    from decompbench.bench.suite import load_suite, with_seeds
    from decompbench.bench.table import print_tables
    from decompbench.bench.verdict import verdict, write_stance

    torch.set_num_threads(args.threads)
    if args.suite is not None and args.builtin is not None:
        raise UserError("give a suite file or --suite NAME, not both")
    suite, text = load_suite(args.suite, args.builtin or "default")
    builtin = args.suite is None  # a built-in suite's cost is known and documented
    if args.seeds is not None:
        suite = with_seeds(suite, args.seeds)
        text += f"\n# seeds overridden on the command line: {args.seeds}\n"
    out = args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    summary = run_suite(
        suite, text, out, quiet=args.quiet, force=args.force, yes=args.yes or builtin,
        jobs=args.jobs, executor=args.executor, address=args.address, threads=args.threads,
        keep_failed=args.keep_failed, prune=args.prune,
    )  # fmt: skip
    stances = verdict(summary.records)
    print_tables(summary.records, stances)
    print(summary.line(out))
    print(f"results: {out / 'results.jsonl'}")
    print(f"stance:  {write_stance(out, stances)}")
    print(f"report:  {write_report(out, jobs=args.jobs or usable_cores())}")
    return EXIT_FAILED_RUNS if summary.failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from decompbench.bench.results import read_plan, read_records
    from decompbench.bench.table import print_tables
    from decompbench.bench.verdict import verdict

    records = read_records(args.dir)
    plan = read_plan(args.dir)
    mine = [r for r in records if plan is None or r.run_id in plan]
    others = [r for r in records if plan is not None and r.run_id not in plan]
    print_tables(mine, verdict(mine), fmt=args.format, others=others)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from decompbench.describe import describe, describe_json
    from decompbench.params import describe_params
    from decompbench.registry import all_methods, all_toys

    if args.toy in all_methods() and args.toy not in all_toys():
        print(describe_params(args.toy))  # a method has no sites: its parameters
        return 0
    if args.json:
        print(json.dumps(describe_json(args.toy, args.params, args.seed), indent=1))
    else:
        print(describe(args.toy, args.params, args.seed))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from decompbench.params import describe_params

    print(describe_params(args.name))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from decompbench.bench.executors import usable_cores
    from decompbench.bench.report import write_report

    print(write_report(args.dir, jobs=usable_cores()))
    return 0


def cmd_circuit(args: argparse.Namespace) -> int:
    import torch

    from decompbench.circuits.cli import circuit_command

    torch.set_num_threads(args.threads)
    return circuit_command(args)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="decompbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    lst = sub.add_parser("list", help="toys and methods in the registry")
    lst.set_defaults(fn=cmd_list)
    run = sub.add_parser("run", help="run a suite (default: the built-in suite)")
    run.add_argument("suite", nargs="?", type=Path, help="suite YAML file")
    run.add_argument(
        "--suite", dest="builtin", metavar="NAME",
        help="a built-in suite: default (the quick tour), verdict (every toy and site, "
        "widths and sparsity swept, baselines, 3 seeds)",
    )  # fmt: skip
    run.add_argument("--out", type=Path, help="output directory (default runs/run-TIME)")
    run.add_argument("--seeds", type=parse_seeds, help="override the suite's seeds, e.g. 0,1")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--force",
        action="store_true",
        help="discard results already in --out and start over (default: resume)",
    )
    run.add_argument(
        "--keep-failed",
        action="store_true",
        help="on resume, do not retry runs recorded as failed (default: retry them)",
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="drop recorded runs that are not in this suite (default: keep them)",
    )
    run.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads (default 1: toy-sized tensors run fastest on one thread)",
    )
    run.add_argument("--yes", action="store_true", help="run even if the planned work is large")
    run.add_argument(
        "--jobs",
        type=positive_int,
        help="runs at once (default: one per usable CPU core, at most one per 4 runs; "
        "with ray: the cluster's CPUs)",
    )
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local processes (default) or Ray tasks",
    )
    run.add_argument("--address", help="Ray cluster address (with --executor ray; e.g. auto)")
    run.set_defaults(fn=cmd_run)
    show = sub.add_parser("show", help="print the tables of a finished run again")
    show.add_argument("dir", type=Path, help="run directory holding results.jsonl")
    show.add_argument(
        "--format",
        choices=["text", "md", "csv", "json"],
        default="text",
        help="text (default; never cuts a cell), md (GitHub tables), csv or json",
    )
    show.set_defaults(fn=cmd_show)
    desc = sub.add_parser(
        "describe", help="a toy's sites, true features and edges (a method: its parameters)"
    )
    desc.add_argument("toy", help="toy or method name (see `decompbench list`)")
    desc.add_argument("--params", nargs="*", default=[], metavar="K=V", help="e.g. use=cube")
    desc.add_argument("--seed", type=int, default=0, help="seed the toy is built with")
    desc.add_argument("--json", action="store_true", help="as JSON, with the true directions")
    desc.set_defaults(fn=cmd_describe)
    params = sub.add_parser(
        "params", help="every parameter of a method or toy: type, default, bounds, meaning"
    )
    params.add_argument("name", help="method or toy name (see `decompbench list`)")
    params.set_defaults(fn=cmd_params)
    report = sub.add_parser("report", help="regenerate DIR/report.html and DIR/plots/*.png")
    report.add_argument("dir", type=Path, help="run directory holding results.jsonl")
    report.set_defaults(fn=cmd_report)
    circ = sub.add_parser("circuit", help="decompose every site, wire a latent graph, score it")
    from decompbench.circuits.cli import add_circuit_arguments

    add_circuit_arguments(circ)
    circ.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    circ.set_defaults(fn=cmd_circuit)
    from decompbench.real.commands import add_real_commands

    add_real_commands(sub)  # train-real, export, import
    from decompbench.io.commands import add_io_commands

    for parser in (lst, run, show, desc, report, circ, *add_io_commands(sub)):
        parser.add_argument(
            "--plugin", action="append", default=[], metavar="MODULE",
            help="import a plugin module (name or .py file) first; repeatable",
        )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "plugin", None):
            from decompbench.plugins import load_plugins

            load_plugins(args.plugin)
        return int(args.fn(args))
    except UserError as err:
        print(f"decompbench: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("decompbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as err:  # the file system refused (permissions, disk full): one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"decompbench: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
