"""The real-model subcommands: ``train-real``, ``export``, ``import`` (and their library
functions ``train_real`` and ``score_on_toy``).

Folders. ``train-real --out DIR`` writes::

    DIR/activations/          the activation store (manifest.json + shards; ``--store``)
    DIR/dictionary.safetensors, DIR/dictionary.json    the trained SAE (decompbench format)
    DIR/metrics.json          real-model metrics on the held-out shards
    DIR/train_log.json        SAE methods: loss per step, dead/dense counts, step times
    DIR/checkpoint.*          while training (removed at the end)

``train-real --ddp`` under ``torchrun`` trains with DistributedDataParallel
(``real/ddp.py``): rank 0 builds the store while the others wait, every rank trains on
its share of each batch, rank 0 saves, scores and prints.

``export DIR --format saelens`` converts ``DIR/dictionary.*`` into a SAELens folder
(default ``DIR/saelens``); ``import DIR`` reads a SAELens folder, optionally writes it as
a decompbench dictionary (``--out``) and scores it on a toy site of the same width
(``--toy``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from decompbench.errors import UserError
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.sae import SAEMethod
from decompbench.progress import reporting
from decompbench.real.ddp import (
    TRAIN_LOG,
    Ranks,
    process_group,
    ranks_from_env,
    require_streaming,
    train_ddp,
    train_log_record,
)
from decompbench.real.dictionary import load_dictionary, save_dictionary
from decompbench.real.metrics import real_scores
from decompbench.real.saelens import export_saelens, import_saelens
from decompbench.real.sites import RealDownstream, RealSite, open_site, read_texts
from decompbench.real.store import (
    ActivationStore,
    build_store,
    file_sha256,
    texts_sha256,
    write_json_atomic,
)
from decompbench.real.train import CKPT, CKPT_META, StepTimer, train_streaming
from decompbench.toys.base import ActivationSite, DownstreamSite

MIN_EVAL_TOKENS = 2048  # fewer held-out tokens than this: the CE metrics get a warning
STORE_WAIT_S = 6 * 3600.0  # --ddp: how long ranks wait on each other (rank 0 builds the store)
REAL_KEYS = ("fvu", "l0", "dead_frac", "dense_frac", "ce_clean", "ce_spliced", "ce_zero",
             "ce_increase", "kl", "loss_recovered")  # fmt: skip


def parse_kv(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, each value parsed as YAML (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag}: expected key=value, got '{item}'")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag}: cannot parse the value of '{key}'") from None
    return out


def dataset_of(data: Path | Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The texts and their ``{"path", "sha256"}`` record."""
    if isinstance(data, Path):
        if not data.is_file():
            raise UserError(f"data file {data} does not exist")
        return read_texts(data), {"path": str(data.resolve()), "sha256": file_sha256(data)}
    texts = list(data)
    return texts, {"path": None, "sha256": texts_sha256(texts)}


def in_memory(store: ActivationStore, max_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole shards (activations, tokens) until ``max_rows`` rows, cut at a sequence."""
    acts, toks, have = [], [], 0
    for a, t in store.shards():
        keep = max(1, min(t.shape[0], (max_rows - have) // t.shape[1]))
        acts.append(a[: keep * t.shape[1]])
        toks.append(t[:keep])
        have += keep * t.shape[1]
        if have >= max_rows:
            break
    return torch.cat(acts), torch.cat(toks)


def fit_real(
    method: Decomposition, site: RealSite, store: ActivationStore, seed: int, out: Path,
    checkpoint_every: int, max_rows: int, on_step: StepTimer | None = None,
) -> None:  # fmt: skip
    """SAE methods stream from the store; other methods fit on up to ``max_rows`` rows."""
    if isinstance(method, SAEMethod) and method.access == "activation_only":
        train_streaming(method, store, seed, out, checkpoint_every, on_step=on_step)
        return
    acts, tokens = in_memory(store, max_rows)
    view: ActivationSite = ActivationSite(str(site.hook), acts)
    if method.access == "downstream_aware":
        down = RealDownstream(site, tokens)
        view = DownstreamSite(str(site.hook), acts, downstream=down, output_kind="categorical")
    method.fit(view, seed)


def split_store(store: ActivationStore, eval_shards: int) -> tuple[ActivationStore, ...]:
    """(training shards, the last ``eval_shards`` held out)."""
    n = len(store.indices)
    if n <= eval_shards:
        raise UserError(
            f"the data gives {n} shard(s) but {eval_shards} are held out for evaluation: "
            "give more text or fewer sequences per shard"
        )
    return store.select(range(n - eval_shards)), store.select(range(n - eval_shards, n))


def train_real(
    model: str, hook: str, method_name: str, params: dict[str, Any],
    data: Path | Sequence[str], out: Path, *, seq_len: int = 64, shard_seqs: int = 128,
    max_seqs: int | None = None, dtype: str = "float32", seed: int = 0,
    checkpoint_every: int = 500, eval_shards: int = 1, max_rows: int = 65536,
    store_dir: Path | None = None, ranks: Ranks | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """Cache, train, save and score; returns the metrics record (also in ``out/metrics.json``).

    With ``ranks`` (a joined DDP process group) rank 0 caches, every rank trains its share,
    rank 0 saves and scores; the other ranks return None.
    """
    method = build_method(method_name, params, "--params")
    if ranks is not None:
        require_streaming(method)
    main = ranks is None or ranks.is_main
    out.mkdir(parents=True, exist_ok=True)
    store_dir = store_dir or out / "activations"
    if main:
        site = open_site(model, hook)
        texts, dataset = dataset_of(data)
        build_store(store_dir, site, texts, dataset, seq_len, shard_seqs, max_seqs, dtype)
    if ranks is not None:
        dist.barrier()  # the others wait for rank 0's store
    train_store, eval_store = split_store(ActivationStore(store_dir), eval_shards)
    timer = StepTimer()
    if ranks is None:
        fit_real(method, site, train_store, seed, out, checkpoint_every, max_rows, timer)
    else:
        train_ddp(require_streaming(method), train_store, seed, out, ranks, checkpoint_every, timer)
    if not main:
        return None
    info = {"model": model, "hook": str(site.hook), "seq_len": seq_len, "store": str(store_dir)}
    saved = isinstance(method, SAEMethod)
    if saved:
        save_dictionary(method, out, info)
    if isinstance(method, SAEMethod) and method.access == "activation_only":
        log = train_log_record(method, seed, ranks, method.log, timer.seconds)
        write_json_atomic(out / TRAIN_LOG, log)
    scores = real_scores(site, method, eval_store.shards())
    record = {**info, "method": method_name, "params": params, "seed": seed,
              "n_train_tokens": train_store.n_rows, "n_eval_tokens": eval_store.n_rows,
              "dictionary_saved": saved, "metrics": scores}  # fmt: skip
    write_json_atomic(out / "metrics.json", record)
    return record


def score_on_toy(
    method: Decomposition, toy_name: str, toy_params: dict[str, Any], site: str | None,
    seed: int = 0, n_eval: int = 4096,
) -> dict[str, Any]:  # fmt: skip
    """Score a (e.g. imported) dictionary on a toy site of the same width, against its truth."""
    from decompbench.bench.evaluate import score
    from decompbench.bench.runner import site_data
    from decompbench.toys.base import build_toy

    toy = build_toy(toy_name, toy_params, seed, f"toy '{toy_name}' params")
    name = site or toy.sites[0]
    toy.check_site(name)
    data = site_data(toy, name, 1, n_eval, seed)
    d = int(method.directions().shape[1])
    if data.eval_ND.shape[1] != d:
        raise UserError(
            f"dictionary width d={d} does not match site '{name}' (d={data.eval_ND.shape[1]})"
        )
    return score(method, toy.ground_truth(name), data.eval_feats_NK, data.eval_ND, seed)


# --- command line -----------------------------------------------------------------------


class LineReporter:
    """Off a terminal: one line per 10 % of training."""

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.next = label, total, 0, total / 10

    def advance(self, n: int, info: str = "") -> None:
        self.done += n
        if self.done >= self.next or self.done == self.total:
            print(
                f"decompbench: {self.label}: step {self.done}/{self.total} {info}", file=sys.stderr
            )
            self.next = self.done + self.total / 10

    def finish(self) -> None:
        pass


@contextmanager
def train_progress(quiet: bool) -> Iterator[None]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from decompbench.bench.runner import RichReporter

    console = Console(stderr=True)
    if quiet:
        yield
    elif not console.is_terminal:
        with reporting(LineReporter()):
            yield
    else:
        cols = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with (
            Progress(*cols, console=console, transient=True) as progress,
            reporting(RichReporter(progress)),
        ):
            yield


def print_metrics(title: str, scores: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    print(title)
    for key in keys or sorted(scores):
        v = scores.get(key)
        print(f"  {key:<16} {v:.4g}" if isinstance(v, float) else f"  {key:<16} {v}")


def cmd_train_real(args: argparse.Namespace) -> int:
    if not args.ddp:
        if args.device is not None:
            raise UserError("--device is for --ddp (one-process training runs on the CPU)")
        return run_train_real(args, None)
    ranks = ranks_from_env(os.environ, args.device or "auto")
    with process_group(ranks, timeout_s=STORE_WAIT_S):
        return run_train_real(args, ranks)


@contextmanager
def removed_on_error(out: Path, main: bool) -> Iterator[None]:
    """An ``out`` folder this command creates is removed again if it ends with a user
    error (bad model, hook, data, too little text): no empty or half-built folder is left."""
    created = main and not out.exists()
    try:
        yield
    except UserError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def run_train_real(args: argparse.Namespace, ranks: Ranks | None) -> int:
    main = ranks is None or ranks.is_main
    with removed_on_error(args.out, main):
        return train_and_print(args, ranks, main)


def train_and_print(args: argparse.Namespace, ranks: Ranks | None, main: bool) -> int:
    if args.force and main:
        for name in (CKPT, CKPT_META):
            (args.out / name).unlink(missing_ok=True)
    with train_progress(args.quiet or not main):
        record = train_real(
            args.model, args.hook, args.method, parse_kv(args.params, "--params"), args.data,
            args.out, seq_len=args.seq_len, shard_seqs=max(1, args.shard_tokens // args.seq_len),
            max_seqs=None if args.max_tokens is None else max(1, args.max_tokens // args.seq_len),
            dtype=args.dtype, seed=args.seed, checkpoint_every=args.checkpoint_every,
            max_rows=args.max_rows, store_dir=args.store, ranks=ranks,
        )  # fmt: skip
    if record is None:
        return 0
    title = (
        f"{args.method} @ {args.model} {record['hook']} ({record['n_eval_tokens']} held-out tokens)"
    )
    print_metrics(title, record["metrics"], REAL_KEYS)
    if record["n_eval_tokens"] < MIN_EVAL_TOKENS:
        print(
            f"decompbench: warning: the held-out shard has only {record['n_eval_tokens']} "
            f"tokens (< {MIN_EVAL_TOKENS}): CE, KL and loss_recovered are noisy; give more "
            "text or raise --shard-tokens",
            file=sys.stderr,
        )
    if record["dictionary_saved"]:
        print(f"dictionary: {args.out / 'dictionary.json'}")
    print(f"metrics: {args.out / 'metrics.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    method, meta = load_dictionary(args.dir)
    out = args.out or args.dir / "saelens"
    export_saelens(method, out, meta.get("site"))
    print(f"wrote {out / 'cfg.json'} and {out / 'sae_weights.safetensors'}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists() and not args.force:
        raise UserError(f"--out {args.out} exists; pass --force to replace it")
    method = import_saelens(args.dir)
    d = int(method.sae.W_dec_MD.shape[1])
    print(f"read {args.dir}: {method.name}, d_in={d}, d_sae={method.params.width}")
    if args.out is not None:
        if args.out.is_dir():
            shutil.rmtree(args.out)
        elif args.out.exists():
            args.out.unlink()
        save_dictionary(method, args.out, {"imported_from": str(args.dir)})
        print(f"dictionary: {args.out / 'dictionary.json'}")
    if args.toy is not None:
        scores = score_on_toy(method, args.toy, parse_kv(args.toy_param, "--toy-param"),
                              args.site, args.seed, args.n_eval)  # fmt: skip
        print_metrics(f"{method.name} (imported) on toy {args.toy}", scores)
    return 0


def add_real_commands(sub: Any) -> None:
    """Register ``train-real``, ``export`` and ``import`` on the CLI's subparsers."""
    tr = sub.add_parser("train-real", help="train a method on a Hugging Face model's activations")
    tr.add_argument("--model", required=True, help="local folder (or hub id) of a causal LM")
    tr.add_argument("--hook", required=True, help="module name, e.g. transformer.h.3 or NAME:input")
    tr.add_argument("--method", required=True, help="registered method, e.g. sae-topk")
    tr.add_argument("--params", nargs="*", metavar="K=V", help="method parameters")
    tr.add_argument("--data", required=True, type=Path, help="text file, one text per line")
    tr.add_argument("--out", required=True, type=Path, help="output folder")
    tr.add_argument("--seq-len", type=int, default=64, help="tokens per window (default 64)")
    tr.add_argument("--shard-tokens", type=int, default=8192, help="tokens per cache shard")
    tr.add_argument("--max-tokens", type=int, help="cache at most this many tokens")
    tr.add_argument("--dtype", default="float32", help="cache dtype: float32, float16, bfloat16")
    tr.add_argument("--store", type=Path, help="activation store folder (default OUT/activations)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    tr.add_argument(
        "--max-rows", type=int, default=65536, help="rows for non-SAE (in-memory) methods"
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--force", action="store_true", help="ignore an earlier checkpoint in --out")
    tr.add_argument(
        "--ddp", action="store_true",
        help="data-parallel training; run as torchrun --nproc_per_node N -m decompbench.cli ...",
    )  # fmt: skip
    tr.add_argument("--device", help="with --ddp: auto (default; cuda if available), cpu, cuda")
    tr.set_defaults(fn=cmd_train_real)
    ex = sub.add_parser("export", help="write a trained dictionary in another library's format")
    ex.add_argument("dir", type=Path, help="folder holding dictionary.json (from train-real)")
    ex.add_argument("--format", required=True, choices=["saelens"])
    ex.add_argument("--out", type=Path, help="output folder (default DIR/saelens)")
    ex.set_defaults(fn=cmd_export)
    im = sub.add_parser("import", help="read a SAELens folder (cfg.json + sae_weights.safetensors)")
    im.add_argument("dir", type=Path, help="SAELens folder")
    im.add_argument("--out", type=Path, help="also write it as a decompbench dictionary here")
    im.add_argument("--force", action="store_true", help="replace --out if it exists")
    im.add_argument("--toy", help="score it on this toy (site width must match)")
    im.add_argument("--toy-param", nargs="*", metavar="K=V", help="toy parameters")
    im.add_argument("--site", help="toy site (default: the toy's first)")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--n-eval", type=int, default=4096, help="toy samples to score on")
    im.set_defaults(fn=cmd_import)
