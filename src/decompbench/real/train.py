"""Training an SAE method on a real site, streamed from the activation store.

``methods/train.py`` draws minibatches from rows held in memory; a real site's activations
live on disk (``ActivationStore``), possibly larger than memory. This loop runs the same
optimisation — Adam, the shared ``lr_factor`` warm-up/decay and ``sparsity_factor`` ramp,
dead/dense latent tracking, ``after_step`` (unit decoder rows) — on batches from
``ActivationStore.batches``. ``prepare`` (input scale, decoder-bias init) sees the first
``n_prepare`` cached rows.

Every ``checkpoint_every`` steps it writes, atomically and without pickle::

    checkpoint.safetensors   "model/<name>" module state, "opt/<i>/<name>" Adam state,
                             "tracker/since_fired", "tracker/rate"
    checkpoint.json          method, params, seed, store identity, step, losses so far

A later run with the same method, parameters, seed and store resumes from it: the state is
loaded and the data stream fast-forwarded by ``step`` batches, so the resumed run sees the
batches an uninterrupted one would. The checkpoint is removed once training finishes.

Data-parallel training (``real/ddp.py``) runs this same loop in every process with a
``Replica`` that takes the process's rows of each global batch, computes the loss through
``DistributedDataParallel`` and averages the loss and the firing rates over processes; the
default (``replica=None``) is one process, unchanged. Only the main replica writes
checkpoints and reports progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from decompbench.errors import TrainingFailed, UserError
from decompbench.methods.sae import SAEMethod, SparseAutoencoder
from decompbench.methods.train import (
    LatentTracker,
    TrainLog,
    TrainState,
    lr_factor,
    sparsity_factor,
)
from decompbench.progress import reporter
from decompbench.real.dictionary import read_tensors
from decompbench.real.store import ActivationStore, read_json, save_atomic, write_json_atomic
from decompbench.seeding import generator

CKPT = "checkpoint.safetensors"
CKPT_META = "checkpoint.json"


def store_identity(store: ActivationStore) -> dict[str, Any]:
    man = store.manifest
    return {"model": man["model"], "hook": man["hook"], "dataset": man["dataset"],
            "seq_len": man["seq_len"], "shards": store.indices}  # fmt: skip


def run_identity(method: SAEMethod, seed: int, store: ActivationStore) -> dict[str, Any]:
    return {"method": method.name, "params": method.params.model_dump(mode="json"),
            "seed": seed, "store": store_identity(store)}  # fmt: skip


def save_checkpoint(
    out_dir: Path, ident: dict[str, Any], method: SAEMethod, opt: torch.optim.Optimizer,
    tracker: LatentTracker, step: int, log: TrainLog,
) -> None:  # fmt: skip
    tensors: dict[str, Tensor] = {
        f"model/{k}": v.detach().cpu() for k, v in method.sae.state_dict().items()
    }
    for i, state in opt.state_dict()["state"].items():
        tensors.update({f"opt/{i}/{k}": torch.as_tensor(v).cpu() for k, v in state.items()})
    if tracker.since_fired_M is not None and tracker.rate_M is not None:
        tensors["tracker/since_fired"] = tracker.since_fired_M
        tensors["tracker/rate"] = tracker.rate_M
    save_atomic(tensors, out_dir / CKPT)
    write_json_atomic(out_dir / CKPT_META, {**ident, "step": step, "losses": log.losses})


def load_checkpoint(
    out_dir: Path, ident: dict[str, Any], method: SAEMethod, opt: torch.optim.Optimizer,
    tracker: LatentTracker, log: TrainLog,
) -> int:  # fmt: skip
    """Restore a matching checkpoint; the step to continue from (0 without one)."""
    if not (out_dir / CKPT_META).exists():
        return 0
    meta = read_json(out_dir / CKPT_META, "checkpoint")
    if {k: meta.get(k) for k in ident} != ident:
        raise UserError(
            f"checkpoint in {out_dir} is from another run (method, params, seed or data): "
            "use a new --out or --force"
        )
    t = read_tensors(out_dir / CKPT)
    method.sae.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model/")})
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in t.items():
        if key.startswith("opt/"):
            _, i, name = key.split("/")
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    if "tracker/rate" in t:
        tracker.since_fired_M, tracker.rate_M = t["tracker/since_fired"], t["tracker/rate"]
    log.losses = [float(x) for x in meta["losses"]]
    return int(meta["step"])


class Replica(Protocol):
    """How one training process sees the others (``Single``: there are none)."""

    is_main: bool  # writes checkpoints and reports progress
    device: torch.device

    def attach(self, sae: SparseAutoencoder) -> None: ...
    def detach(self) -> None: ...
    def rows(self, batch_BD: Tensor) -> Tensor: ...  # this process's rows, on ``device``
    def loss(self, x_BD: Tensor) -> Tensor: ...  # mean loss over this process's rows
    def average(self, x: Tensor) -> Tensor: ...  # mean of ``x`` over processes


class Single:
    """One process: the whole batch, nothing to average."""

    is_main = True
    device = torch.device("cpu")

    def attach(self, sae: SparseAutoencoder) -> None:
        self.sae = sae

    def detach(self) -> None:
        pass

    def rows(self, batch_BD: Tensor) -> Tensor:
        return batch_BD

    def loss(self, x_BD: Tensor) -> Tensor:
        return self.sae.loss(x_BD)

    def average(self, x: Tensor) -> Tensor:
        return x


def replica_step(
    method: SAEMethod, opt: torch.optim.Optimizer, batch: Tensor, step: int,
    tracker: LatentTracker, label: str, replica: Replica,
) -> float:  # fmt: skip
    """One optimiser step on the global ``batch``; the loss averaged over the batch.

    With equal-sized shards, the mean of per-process mean losses is the global mean loss,
    and DDP's gradient average is its gradient; the firing rates are averaged the same
    way, so every process's tracker (hence the dead mask the aux-k loss sees) is the
    single-process one.
    """
    p, sae = method.params, method.sae
    for group in opt.param_groups:
        group["lr"] = p.lr * lr_factor(step, p.steps, p.warmup_frac, p.decay_frac)
    scale = sparsity_factor(step, p.steps, p.sparsity_warmup_frac)
    dead_M = tracker.dead_M()
    dead_M = None if dead_M is None else dead_M.to(replica.device)
    sae.set_train_state(TrainState(step, p.steps, scale, dead_M))
    loss = replica.loss(replica.rows(batch))
    rate_M = sae.fire_rate_M
    stats = loss.detach().double().reshape(1)
    if rate_M is not None:
        stats = torch.cat([stats, rate_M.detach().double()])
    stats = replica.average(stats).cpu()
    value = float(stats[0])
    if not math.isfinite(value):
        raise TrainingFailed(f"{label}: loss became {value} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sae.after_step()
    if rate_M is not None:
        tracker.update(stats[1:] > 0, stats[1:])
    return value


def _step(
    method: SAEMethod, opt: torch.optim.Optimizer, batch: Tensor, step: int,
    tracker: LatentTracker, label: str,
) -> float:  # fmt: skip
    """One single-process step (the seam tests patch to interrupt a run)."""
    single = Single()
    single.attach(method.sae)
    return replica_step(method, opt, batch, step, tracker, label, single)


def _setup(
    method: SAEMethod, store: ActivationStore, seed: int, n_prepare: int, device: torch.device
) -> tuple[torch.optim.Optimizer, LatentTracker]:
    """Build, move and prepare the module; its optimiser and latent tracker."""
    p = method.params
    method.sae = method.configure(
        method.make_module(store.d, generator(seed, f"method/{method.name}/init"))
    )
    method.sae.to(device).train()
    method.sae.prepare(store.head(n_prepare).to(device))
    opt = torch.optim.Adam(method.sae.parameters(), lr=p.lr)
    return opt, LatentTracker(p.dead_after_steps, p.dense_rate)


class StepTimer:
    """``on_step`` callback: the wall time of each step after the first (the first one also
    pays for warm-up), in seconds."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, step: int) -> None:
        self.stamps.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def train_streaming(
    method: SAEMethod, store: ActivationStore, seed: int, out_dir: Path,
    checkpoint_every: int = 500, n_prepare: int = 16384, replica: Replica | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainLog:  # fmt: skip
    """Fit ``method`` (an SAE method) on ``store``, checkpointing into ``out_dir``.

    ``replica`` (default: one process) is how this process shares the work with others;
    ``on_step(step)`` is called after every step (e.g. to time it).
    """
    main = replica is None or replica.is_main
    device = torch.device("cpu") if replica is None else replica.device
    opt, tracker = _setup(method, store, seed, n_prepare, device)
    log, ident = TrainLog(), run_identity(method, seed, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = load_checkpoint(out_dir, ident, method, opt, tracker, log)
    stream = store.batches(method.params.batch_size, seed)
    for _ in range(start):
        next(stream)
    label, steps = f"{method.name} @ {store.manifest['hook']}", method.params.steps
    rep, every, shown = reporter() if main else None, max(1, steps // 100), start
    if rep is not None:
        rep.start(label, steps)
        rep.advance(start)
    if replica is not None:
        replica.attach(method.sae)
    try:
        for step in range(start, steps):
            if replica is None:
                log.losses.append(_step(method, opt, next(stream), step, tracker, label))
            else:
                loss = replica_step(method, opt, next(stream), step, tracker, label, replica)
                log.losses.append(loss)
            if on_step is not None:
                on_step(step)
            if (step + 1) % every == 0 or step + 1 == steps:
                log.note_latents(tracker)
                if rep is not None:
                    rep.advance(step + 1 - shown, f"loss {log.losses[-1]:.4g}")
                    shown = step + 1
            if main and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                save_checkpoint(out_dir, ident, method, opt, tracker, step + 1, log)
    finally:
        if replica is not None:
            replica.detach()
    if rep is not None:
        rep.finish()
    method.sae.cpu().eval()
    method.log = log
    if main:
        for name in (CKPT, CKPT_META):
            (out_dir / name).unlink(missing_ok=True)
    return log
