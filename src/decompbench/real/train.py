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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decompbench.errors import UserError
from decompbench.methods.sae import SAEMethod
from decompbench.methods.train import (
    LatentTracker,
    TrainLog,
    TrainState,
    _checked_loss,
    _track,
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
        f"model/{k}": v.detach() for k, v in method.sae.state_dict().items()
    }
    for i, state in opt.state_dict()["state"].items():
        tensors.update({f"opt/{i}/{k}": torch.as_tensor(v) for k, v in state.items()})
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


def _step(
    method: SAEMethod, opt: torch.optim.Optimizer, batch: Tensor, step: int,
    tracker: LatentTracker, label: str,
) -> float:  # fmt: skip
    p, sae = method.params, method.sae
    for group in opt.param_groups:
        group["lr"] = p.lr * lr_factor(step, p.steps, p.warmup_frac, p.decay_frac)
    scale = sparsity_factor(step, p.steps, p.sparsity_warmup_frac)
    sae.set_train_state(TrainState(step, p.steps, scale, tracker.dead_M()))
    loss = _checked_loss(sae, (batch,), label, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sae.after_step()
    _track(sae, tracker)
    return float(loss.detach())


def train_streaming(
    method: SAEMethod, store: ActivationStore, seed: int, out_dir: Path,
    checkpoint_every: int = 500, n_prepare: int = 16384,
) -> TrainLog:  # fmt: skip
    """Fit ``method`` (an SAE method) on ``store``, checkpointing into ``out_dir``."""
    p = method.params
    method.sae = method.configure(
        method.make_module(store.d, generator(seed, f"method/{method.name}/init"))
    )
    method.sae.train()
    method.sae.prepare(store.head(n_prepare))
    opt = torch.optim.Adam(method.sae.parameters(), lr=p.lr)
    log, tracker = TrainLog(), LatentTracker(p.dead_after_steps, p.dense_rate)
    ident = run_identity(method, seed, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = load_checkpoint(out_dir, ident, method, opt, tracker, log)
    stream = store.batches(p.batch_size, seed)
    for _ in range(start):
        next(stream)
    label = f"{method.name} @ {store.manifest['hook']}"
    rep, every, shown = reporter(), max(1, p.steps // 100), start
    if rep is not None:
        rep.start(label, p.steps)
        rep.advance(start)
    for step in range(start, p.steps):
        log.losses.append(_step(method, opt, next(stream), step, tracker, label))
        if (step + 1) % every == 0 or step + 1 == p.steps:
            log.note_latents(tracker)
            if rep is not None:
                rep.advance(step + 1 - shown, f"loss {log.losses[-1]:.4g}")
                shown = step + 1
        if (step + 1) % checkpoint_every == 0 and step + 1 < p.steps:
            save_checkpoint(out_dir, ident, method, opt, tracker, step + 1, log)
    if rep is not None:
        rep.finish()
    method.sae.eval()
    method.log = log
    for name in (CKPT, CKPT_META):
        (out_dir / name).unlink(missing_ok=True)
    return log
