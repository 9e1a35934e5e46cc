"""Data-parallel dictionary training on a stored activation set: torch
``DistributedDataParallel`` under ``torchrun`` (gloo on CPU, NCCL on GPUs).

Run it on a finished activation store (``real/store.py``)::

    torchrun --nproc_per_node 2 -m decompbench.real.ddp --store DIR/activations \\
        --method sae-topk --params width=4096 k=32 batch_size=4096 --out RUN

or the whole real-model workflow with ``--ddp``::

    torchrun --nproc_per_node 2 -m decompbench.cli train-real --ddp --model ... --out RUN

Why the result is the single-process one. Every process draws the same global batches
(``ActivationStore.batches`` with the run's seed) and computes the loss on its own
contiguous slice of ``batch_size / world`` rows. All losses here are means over rows, so
the mean of the per-process losses is the global batch's loss and DDP's average of the
per-process gradients is its gradient. What is not per-row is made global explicitly:
the firing rates behind dead-latent tracking (and so the aux-k loss's dead mask) are
averaged over processes before they reach the tracker, and BatchTopK's "k * batch largest
activations of the batch" (``sae-batchtopk``, ``sae-matryoshka``) uses the threshold of
the global batch (each process sends its local top values; the cut is the (k * B)-th
largest of all) and the smallest kept activation over all processes for its inference
threshold. Adam, the learning-rate schedule and ``after_step`` (unit decoder rows) then
run identically in every process. Differences from one process are float rounding
(sums in another order), ~1e-7 relative per step; ties at the BatchTopK cut, measure
zero for continuous data, could pick different latents.

Only rank 0 writes checkpoints, the dictionary and ``train_log.json`` (all atomically);
all ranks resume from the same checkpoint. Each rank reads the whole shards it shuffles
(the batch order needs them), so disk reads are not divided, only the compute.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from decompbench.errors import TrainingFailed, UserError
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.sae import SAEMethod, SparseAutoencoder
from decompbench.methods.sae_batchtopk import BatchTopKSAE
from decompbench.methods.sae_jumprelu import JumpReLUSAE
from decompbench.methods.sae_relu import ReLUSAE
from decompbench.methods.sae_topk import TopKSAE
from decompbench.methods.train import TrainLog
from decompbench.real.dictionary import save_dictionary
from decompbench.real.store import (
    FORMAT,
    MANIFEST,
    ActivationStore,
    save_atomic,
    write_json_atomic,
)
from decompbench.real.train import CKPT, CKPT_META, StepTimer, train_streaming

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PER_ROW = (ReLUSAE, TopKSAE, JumpReLUSAE)  # losses that are means of per-row terms
TRAIN_LOG = "train_log.json"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job, from torchrun's environment."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env(env: Mapping[str, str], device: str = "auto") -> Ranks:
    """Read RANK, WORLD_SIZE, LOCAL_RANK (and check MASTER_ADDR/PORT); pick the backend."""
    missing = [k for k in ENV_KEYS if not env.get(k)]
    if missing:
        raise UserError(
            f"data-parallel training needs torchrun's environment (missing {', '.join(missing)}):"
            " run it as torchrun --nproc_per_node N ..."
        )
    try:
        rank, world, local = (int(env[k]) for k in ENV_KEYS[:3])
        int(env["MASTER_PORT"])
    except ValueError:
        raise UserError(
            "RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers "
            f"(got {', '.join(env[k] for k in ENV_KEYS if k != 'MASTER_ADDR')})"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"RANK {rank} and WORLD_SIZE {world} do not fit (0 <= RANK < WORLD_SIZE)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) visible")
        return Ranks(rank, world, local, torch.device("cuda", local), "nccl")
    if device != "cpu":
        raise UserError(f"device must be auto, cpu or cuda (got '{device}')")
    return Ranks(rank, world, local, torch.device("cpu"), "gloo")


@contextmanager
def process_group(ranks: Ranks, timeout_s: float = 1800.0) -> Iterator[Ranks]:
    """Join the job's process group (env:// rendezvous) for the duration of the block; a
    group the caller already joined (e.g. to run several trainings) is used and kept."""
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (ranks.rank, ranks.world):
            raise UserError("the process group already joined does not match RANK/WORLD_SIZE")
        yield ranks
        return
    if ranks.device.type == "cuda":
        torch.cuda.set_device(ranks.device)
    try:
        dist.init_process_group(
            ranks.backend, rank=ranks.rank, world_size=ranks.world,
            timeout=timedelta(seconds=timeout_s),
        )  # fmt: skip
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot join the process group ({ranks.backend}): {first}") from None
    try:
        yield ranks
        dist.barrier()  # gloo can abort a rank that tears down while another still works
    finally:
        gc.collect()  # no DDP reducer may outlive the group (see DDPReplica.detach)
        dist.destroy_process_group()


# --- BatchTopK over the global batch ------------------------------------------------------


def global_batch_topk(pre_BM: Tensor, k: int, world: int) -> Tensor:
    """``batch_topk`` of the global batch, computed on this process's rows.

    Keeps this process's ReLU pre-activations that reach the (k * B_global)-th largest over
    all processes, B_global = world * B (equal shards). Each process contributes its own
    top values, which contain every global top value it holds.
    """
    relu_BM = torch.relu(pre_BM)
    flat = relu_BM.detach().flatten()
    n_keep = k * pre_BM.shape[0] * world
    local = flat.topk(min(n_keep, flat.numel())).values.contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    cut = torch.cat(parts).topk(n_keep).values[-1]
    return relu_BM * (relu_BM >= cut).to(relu_BM.dtype)


@torch.no_grad()
def global_update_threshold(sae: BatchTopKSAE, z_BM: Tensor) -> None:
    """``update_threshold`` with the smallest kept activation over all processes."""
    kept = z_BM[z_BM > 0]
    low = kept.min() if kept.numel() else z_BM.new_full((), float("inf"))
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if torch.isfinite(low):
        BatchTopKSAE.update_threshold(sae, low.reshape(1))


def install_global_batch_topk(sae: BatchTopKSAE, world: int) -> None:
    """Shadow the module's training-time activation by the global-batch one."""
    inference = sae.activation

    def activation(pre_BM: Tensor) -> Tensor:
        if not sae.training:
            return inference(pre_BM)
        z_BM = global_batch_topk(pre_BM, sae.k, world)
        global_update_threshold(sae, z_BM)
        return z_BM

    setattr(sae, "activation", activation)  # noqa: B010 (an instance attribute, removed later)


# --- the replica --------------------------------------------------------------------------


class _LossOf(nn.Module):
    """DDP wraps a module's ``forward``; the SAE's training entry is ``loss``."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x_BD: Tensor) -> Tensor:
        return self.sae.loss(x_BD)


class DDPReplica:
    """``real.train.Replica`` for one rank: its slice of each batch, loss through DDP."""

    def __init__(self, ranks: Ranks, batch_size: int) -> None:
        if batch_size % ranks.world:
            raise UserError(
                f"batch_size {batch_size} is not divisible by the {ranks.world} processes"
            )
        self.ranks, self.per_rank = ranks, batch_size // ranks.world
        self.is_main, self.device = ranks.is_main, ranks.device
        self.model: DistributedDataParallel | None = None

    def attach(self, sae: SparseAutoencoder) -> None:
        check_data_parallel(sae)
        if isinstance(sae, BatchTopKSAE):
            install_global_batch_topk(sae, self.ranks.world)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.sae, self.model = sae, DistributedDataParallel(_LossOf(sae), device_ids=ids)

    def detach(self) -> None:
        if "activation" in vars(self.sae):
            delattr(self.sae, "activation")
        self.model = None
        # DDP's wrapper sits in reference cycles; left to the interpreter's final collection,
        # its reducer's gloo work is destroyed mid-shutdown and the process aborts
        # ("terminate called without an active exception"). Collect it now.
        gc.collect()

    def rows(self, batch_BD: Tensor) -> Tensor:
        lo = self.ranks.rank * self.per_rank
        return batch_BD[lo : lo + self.per_rank].to(self.device)

    def loss(self, x_BD: Tensor) -> Tensor:
        assert self.model is not None, "attach() first"
        out: Tensor = self.model(x_BD)
        return out

    def average(self, x: Tensor) -> Tensor:
        total = x.to(self.device).clone()
        dist.all_reduce(total)
        return total / self.ranks.world


def check_data_parallel(sae: SparseAutoencoder) -> None:
    if not isinstance(sae, PER_ROW):
        raise UserError(
            f"{type(sae).__name__} has not been checked for data-parallel training "
            "(its loss may not be a mean over rows)"
        )


def require_streaming(method: Decomposition) -> SAEMethod:
    if not isinstance(method, SAEMethod) or method.access != "activation_only":
        raise UserError(
            f"method '{method.name}' is not trained from the activation store; "
            "data-parallel training is for activation-only SAE methods"
        )
    return method


def train_ddp(
    method: SAEMethod, store: ActivationStore, seed: int, out_dir: Path, ranks: Ranks,
    checkpoint_every: int = 500, on_step: Callable[[int], None] | None = None,
) -> TrainLog:  # fmt: skip
    """``train_streaming`` as one rank of the job (``ranks``' process group is joined)."""
    replica = DDPReplica(ranks, method.params.batch_size)
    return train_streaming(
        method, store, seed, out_dir, checkpoint_every, replica=replica, on_step=on_step
    )


def train_log_record(
    method: SAEMethod, seed: int, ranks: Ranks | None, log: TrainLog, step_s: Sequence[float]
) -> dict[str, Any]:
    """What ``train_log.json`` holds: the per-step global-batch losses, dead/dense counts,
    step times and this process's peak resident memory."""
    return {"method": method.name, "params": method.params.model_dump(mode="json"),
            "seed": seed, "world_size": 1 if ranks is None else ranks.world,
            "backend": None if ranks is None else ranks.backend, "losses": log.losses,
            "n_dead": log.n_dead, "n_dense": log.n_dense, "step_seconds": list(step_s),
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def peak_rss_mb() -> float | None:
    """This process's peak resident set size (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kb / 1024, 1)


# --- a store from rows in memory ------------------------------------------------------------


def store_from_tensor(
    root: Path, acts_ND: Tensor, seq_len: int, shard_seqs: int, hook: str = "synthetic"
) -> ActivationStore:
    """A finished store holding ``acts_ND`` (rows computed elsewhere; tests, benchmarks).

    Rows are cut into windows of ``seq_len`` (the row count must be a multiple) and shards
    of ``shard_seqs`` windows; tokens are zeros (no model produced them).
    """
    n, d = acts_ND.shape
    if n % seq_len or n == 0:
        raise UserError(f"{n} rows are not a positive multiple of seq_len {seq_len}")
    acts = acts_ND.detach().float().contiguous()
    root.mkdir(parents=True, exist_ok=True)
    shards, rows = [], shard_seqs * seq_len
    for i, start in enumerate(range(0, n, rows)):
        part = acts[start : start + rows]
        name = f"shard-{i:05d}.safetensors"
        tokens = torch.zeros(part.shape[0] // seq_len, seq_len, dtype=torch.long)
        save_atomic({"acts": part, "tokens": tokens}, root / name)
        shards.append({"file": name, "seqs": tokens.shape[0], "rows": part.shape[0]})
    digest = hashlib.sha256(acts.numpy().tobytes()).hexdigest()
    write_json_atomic(root / MANIFEST, {
        "format": FORMAT, "model": "synthetic", "hook": hook,
        "dataset": {"path": None, "sha256": digest}, "seq_len": seq_len, "dtype": "float32",
        "shard_seqs": shard_seqs, "max_seqs": None, "d": d, "shards": shards, "complete": True,
    })  # fmt: skip
    return ActivationStore(root)


# --- command line: torchrun -m decompbench.real.ddp ---------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m decompbench.real.ddp",
        description="Train an SAE method on a stored activation set with DDP; rank 0 writes "
        "OUT/dictionary.* and OUT/train_log.json.",
    )
    p.add_argument("--store", required=True, type=Path, help="activation store folder")
    p.add_argument("--method", required=True, help="activation-only SAE method, e.g. sae-topk")
    p.add_argument("--params", nargs="*", metavar="K=V", help="method parameters")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hold-out", type=int, default=0, help="last shards not trained on")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--force", action="store_true", help="ignore an earlier checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress (rank 0 shows it)")
    return p


def run(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any] | None:
    """Train as one rank; rank 0 returns the ``train_log.json`` record, others None."""
    from decompbench.real.commands import parse_kv, train_progress

    ranks = ranks_from_env(env, args.device)
    method = require_streaming(
        build_method(args.method, parse_kv(args.params, "--params"), "--params")
    )
    store = ActivationStore(args.store)
    n = len(store.indices)
    if not 0 <= args.hold_out < n:
        raise UserError(f"--hold-out must be from 0 to {n - 1} (the store has {n} shards)")
    train_store = store.select(range(n - args.hold_out))
    with process_group(ranks):
        if ranks.is_main and args.force:
            for name in (CKPT, CKPT_META):
                (args.out / name).unlink(missing_ok=True)
        dist.barrier()
        timer = StepTimer()
        with train_progress(args.quiet or not ranks.is_main):
            log = train_ddp(method, train_store, args.seed, args.out, ranks,
                            args.checkpoint_every, timer)  # fmt: skip
        if not ranks.is_main:
            return None
        man = store.manifest
        info = {"model": man["model"], "hook": man["hook"], "seq_len": man["seq_len"],
                "store": str(args.store)}  # fmt: skip
        save_dictionary(method, args.out, info)
        record = train_log_record(method, args.seed, ranks, log, timer.seconds)
        write_json_atomic(args.out / TRAIN_LOG, record)
        return record


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        record = run(args, os.environ if env is None else env)
    except UserError as err:
        print(f"decompbench: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"decompbench: training failed: {err}", file=sys.stderr)
        return 1
    if record is not None:
        loss = record["losses"][-1] if record["losses"] else float("nan")
        print(json.dumps({"world_size": record["world_size"], "steps": len(record["losses"]),
                          "final_loss": loss, "out": str(args.out)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
