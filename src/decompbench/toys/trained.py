"""Shared machinery of the trained toys: training settings, one AdamW loop, a disk cache
and the target check.

A trained toy is only as good as its training. Each trained toy therefore
    1. draws a fresh minibatch per step from its own sampler (infinite data, as in the
       reference setups) and trains with ``fit`` (AdamW, constant or cosine learning rate);
    2. stores the weights on disk keyed by (toy name, every parameter, seed), so the next
       build with the same key loads them instead of training (``train_or_load``);
    3. checks *after* training or loading that the weights reach the toy's target (a loss
       bound the toy derives, or a check of its own construction) and raises
       ``TrainingTargetMissed`` otherwise, rather than hand out wrong ground truth.

Cache layout: ``$DECOMPBENCH_CACHE/toys`` (default ``~/.cache/decompbench/toys``), per key
``<toy>-<hash>.safetensors`` (the state dict) and ``<toy>-<hash>.json`` (what was trained:
toy, parameters, seed, final training loss, training time, a thinned loss curve). Both are
written under a temporary name and renamed into place; the JSON is written last and a
cache entry counts only when it exists, so a crash mid-write never leaves a half entry. A
cache entry that cannot be read is retrained and overwritten. Only weights are cached:
the target check always runs on the loaded weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.progress import reporter
from decompbench.seeding import generator

CACHE_ENV = "DECOMPBENCH_CACHE"
CACHE_VERSION = 1  # bump when a trained toy's architecture or training changes
CURVE_POINTS = 100


class TrainingTargetMissed(UserError):
    """A trained toy did not reach its target; its ground truth would be wrong."""


class ToyTrainParams(StrictModel):
    """Training settings of a trained toy (toys override the defaults they need)."""

    steps: int = Field(default=5000, ge=1, description="training steps of the toy")
    lr: float = Field(default=5e-3, gt=0, description="learning rate (AdamW)")
    batch_size: int = Field(default=1024, ge=1, description="samples per minibatch")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="constant or cosine-decayed learning rate"
    )


# A toy's loss on one fresh minibatch: (batch size, generator) -> scalar.
BatchLoss = Callable[[int, torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainInfo:
    """What the cache knows about one trained toy."""

    final_loss: float  # mean training loss over the last 5 % of steps
    train_s: float  # wall time of the training (not of the load)
    from_cache: bool


def lr_at(step: int, cfg: ToyTrainParams) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps - 1, 1)))


def fit(
    module: nn.Module, loss: BatchLoss, cfg: ToyTrainParams, seed: int, label: str
) -> list[float]:
    """AdamW on the module's trainable parameters; one fresh minibatch per step."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = generator(seed, "toy/train-batches")
    losses: list[float] = []
    rep = reporter()
    if rep is not None:
        rep.start(f"training toy {label}", cfg.steps)
    every = max(1, cfg.steps // 100)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        value = loss(cfg.batch_size, g)
        if not math.isfinite(float(value.detach())):
            raise TrainingTargetMissed(
                f"toy {label}: training loss became {float(value)} at step {step}"
            )
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
        if rep is not None and (step + 1) % every == 0:
            rep.advance(every, f"loss {losses[-1]:.4g}")
    if rep is not None:
        rep.finish()
    return losses


def tail_mean(losses: list[float], frac: float = 0.05) -> float:
    tail = losses[-max(1, int(len(losses) * frac)) :]
    return sum(tail) / len(tail)


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "decompbench")
    return Path(base) / "toys"


def cache_stem(name: str, params: StrictModel, seed: int) -> Path:
    """Cache path without suffix; the hash covers toy name, every parameter and the seed."""
    key = {"toy": name, "params": params.model_dump(mode="json"), "seed": seed,
           "version": CACHE_VERSION}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / f"{name}-{digest}"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a unique temporary name beside ``path``, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_entry(stem: Path, module: nn.Module, meta: dict[str, Any]) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    write_atomic(stem.with_suffix(".safetensors"), lambda p: save_file(state, str(p)))
    text = json.dumps(meta, indent=1, sort_keys=True)
    write_atomic(stem.with_suffix(".json"), lambda p: p.write_text(text))


def load_entry(stem: Path, module: nn.Module) -> dict[str, Any] | None:
    """Load a complete cache entry into ``module``; ``None`` if absent or unreadable."""
    meta_path, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not (meta_path.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        module.load_state_dict(load_file(str(weights)), strict=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError):
        return None
    return dict(meta)


def train_or_load(
    module: nn.Module, name: str, params: ToyTrainParams, seed: int, loss: BatchLoss
) -> TrainInfo:
    """Load ``module``'s weights from the cache, or train them with ``fit`` and store them."""
    stem = cache_stem(name, params, seed)
    meta = load_entry(stem, module)
    if meta is not None:
        return TrainInfo(float(meta["final_loss"]), float(meta["train_s"]), from_cache=True)
    t0 = time.perf_counter()
    losses = fit(module, loss, params, seed, name)
    train_s = time.perf_counter() - t0
    thin = max(1, len(losses) // CURVE_POINTS)
    meta = {"toy": name, "params": params.model_dump(mode="json"), "seed": seed,
            "version": CACHE_VERSION, "final_loss": tail_mean(losses), "train_s": train_s,
            "loss_curve": losses[::thin]}  # fmt: skip
    save_entry(stem, module, meta)
    return TrainInfo(tail_mean(losses), train_s, from_cache=False)


@torch.no_grad()
def eval_loss(loss: BatchLoss, n: int, seed: int, tag: str) -> float:
    """The toy's loss on ``n`` fresh samples drawn from a fixed evaluation stream."""
    return float(loss(n, generator(seed, tag)))


ADVICE = "training did not reach its target (try more steps, another lr or another seed)"


def check_target(label: str, what: str, value: float, bound: float) -> None:
    """Raise ``TrainingTargetMissed`` unless ``value <= bound``."""
    if not value <= bound:
        raise TrainingTargetMissed(
            f"toy {label}: {what} {value:.4g} exceeds its bound {bound:.4g}; {ADVICE}"
        )


def require(ok: bool, label: str, why: str) -> None:
    """Raise ``TrainingTargetMissed`` with ``why`` unless ``ok`` (a construction check)."""
    if not ok:
        raise TrainingTargetMissed(f"toy {label}: {why}; {ADVICE}")
