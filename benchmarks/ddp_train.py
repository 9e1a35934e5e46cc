"""Samples/s of dictionary training on a stored activation set: one process versus
``torchrun`` DistributedDataParallel with 2 processes (gloo on CPU). Run by hand::

    .venv/bin/python benchmarks/ddp_train.py [--d 512 --width 4096 --batch 4096 --steps 12]

Writes a synthetic store (Gaussian rows) to a temporary folder, then trains the same
method on it in each configuration, every one in its own subprocess:

* ``single``: ``train_streaming`` in one process (no DDP), 1 and 2 torch threads;
* ``ddp``: ``torchrun --nproc_per_node N -m decompbench.real.ddp``, 1 thread per process.

Per row: seconds per step (median over the steps after the first), samples/s, the ratio
to one process with one thread, the largest per-process peak RSS, the largest relative loss
difference from the single-process run, and the other processes' CPU use while the
configuration ran (share of all CPUs, from /proc/stat minus this benchmark's own
children; above a few % the timing is contaminated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")


def busy_seconds() -> float:
    """CPU seconds spent busy on all CPUs since boot (/proc/stat); 0 where unavailable."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def write_store(root: Path, d: int, rows: int) -> None:
    from decompbench.real.ddp import store_from_tensor

    g = torch.Generator().manual_seed(0)
    store_from_tensor(root, torch.randn(rows, d, generator=g), seq_len=64, shard_seqs=rows // 256)


def single_worker(store: str, out: str, method: str, params: list[str], threads: int) -> None:
    """One process, no DDP: the ``train_log.json`` the DDP entry writes, for comparison."""
    torch.set_num_threads(threads)
    from decompbench.methods.base import build_method
    from decompbench.methods.sae import SAEMethod
    from decompbench.real.commands import parse_kv
    from decompbench.real.ddp import TRAIN_LOG, train_log_record
    from decompbench.real.store import ActivationStore
    from decompbench.real.train import StepTimer, train_streaming

    m = build_method(method, parse_kv(params, "--params"), "--params")
    assert isinstance(m, SAEMethod)
    timer = StepTimer()
    log = train_streaming(m, ActivationStore(Path(store)), 0, Path(out), 10**9, on_step=timer)
    Path(out, TRAIN_LOG).write_text(json.dumps(train_log_record(m, 0, None, log, timer.seconds)))


def launch(cfg: tuple[str, int, int], store: Path, out: Path, args: argparse.Namespace) -> None:
    kind, procs, threads = cfg
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    params = [*args.params, f"width={args.width}", f"batch_size={args.batch}",
              f"steps={args.steps}"]  # fmt: skip
    if kind == "single":
        cmd = [sys.executable, __file__, "--single-worker", str(store), str(out), args.method,
               str(threads), *params]  # fmt: skip
    else:
        launcher = (
            [str(TORCHRUN)]
            if TORCHRUN.exists()
            else [sys.executable, "-m", "torch.distributed.run"]
        )
        cmd = [*launcher, "--nproc_per_node", str(procs), "--standalone", "-m",
               "decompbench.real.ddp", "--store", str(store), "--method", args.method,
               "--params", *params, "--out", str(out), "--device", "cpu"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{kind} x{procs} failed:\n{res.stderr[-3000:]}")


def row(cfg: tuple[str, int, int], log: dict[str, Any], base: dict[str, Any], batch: int,
        other: float) -> str:  # fmt: skip
    kind, procs, threads = cfg
    step_s = statistics.median(log["step_seconds"])
    base_s = statistics.median(base["step_seconds"])
    diff = max(
        abs(a - b) / max(1.0, abs(b)) for a, b in zip(log["losses"], base["losses"], strict=True)
    )
    return (f"{kind:<7} {procs:>5} {threads:>7} {step_s:>8.3f} {batch / step_s:>10.0f} "
            f"{base_s / step_s:>6.2f} {log['peak_rss_mb'] or 0:>8.0f} {diff:>10.1e} "
            f"{100 * other:>9.0f}%")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--method", default="sae-relu")
    ap.add_argument("--params", nargs="*", default=[], metavar="K=V", help="extra parameters")
    ap.add_argument("--single-worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single_worker:
        store, out, method, threads, *params = args.single_worker
        single_worker(store, out, method, params, int(threads))
        return
    configs = [("single", 1, 1), ("single", 1, 2), ("ddp", 1, 1), ("ddp", 2, 1)]
    ncpu = os.cpu_count() or 1
    print(f"{' '.join([args.method, *args.params])}: d_in {args.d}, width {args.width}, "
          f"batch {args.batch}, {args.steps} steps, float32, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'config':<7} {'procs':>5} {'threads':>7} {'s/step':>8} {'samples/s':>10} "
          f"{'ratio':>6} {'rss MB':>8} {'rel diff':>10} {'others CPU':>10}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "store")
        write_store(store, args.d, max(4 * args.batch, 16384))
        base: dict[str, Any] | None = None
        for i, cfg in enumerate(configs):
            out = Path(tmp, f"run{i}")
            t0, busy0, own0 = time.perf_counter(), busy_seconds(), own_seconds()
            launch(cfg, store, out, args)
            wall = time.perf_counter() - t0
            other = (busy_seconds() - busy0 - (own_seconds() - own0)) / (wall * ncpu)
            log = json.loads((out / "train_log.json").read_text())
            base = base or log
            print(row(cfg, log, base, args.batch, max(0.0, other)), flush=True)


if __name__ == "__main__":
    main()
