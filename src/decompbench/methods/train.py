"""The one training loop shared by every gradient-trained method.

Adam; linear warm-up, constant, then linear decay of the learning rate to zero;
minibatches drawn from the run's seed; ``after_step`` hook (e.g. unit-norm decoder rows);
progress through ``decompbench.progress``; stop with ``TrainingFailed`` on a non-finite
loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from pydantic import Field
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.errors import TrainingFailed
from decompbench.progress import reporter
from decompbench.seeding import generator


class TrainParams(StrictModel):
    """Optimisation settings; gradient-trained methods inherit these fields."""

    steps: int = Field(default=3000, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=256, ge=1)
    warmup_frac: float = Field(default=0.05, ge=0, le=1)
    decay_frac: float = Field(default=0.2, ge=0, le=1)


class Trainable(Protocol):
    """``loss`` takes one minibatch row-slice of each training tensor, in order."""

    @property
    def loss(self) -> Callable[..., Tensor]: ...

    def parameters(self) -> object: ...
    def after_step(self) -> None: ...


def lr_factor(step: int, steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    warm = math.ceil(warmup_frac * steps)
    decay = math.ceil(decay_frac * steps)
    if step < warm:
        return (step + 1) / warm
    if step >= steps - decay:
        return max(steps - step, 0) / decay
    return 1.0


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 20) :]
        return sum(tail) / len(tail)


def train(
    model: Trainable, data: Tensor | tuple[Tensor, ...], cfg: TrainParams, seed: int, label: str
) -> TrainLog:
    """Minimise ``model.loss`` on minibatches drawn from the rows of ``data``.

    ``data`` is one tensor or a tuple of tensors with the same number of rows (e.g. site
    activations and the next layer's output); the same rows of each go to ``loss``.
    """
    assert isinstance(model, nn.Module)
    tensors = data if isinstance(data, tuple) else (data,)
    n = tensors[0].shape[0]
    assert all(t.shape[0] == n for t in tensors), "training tensors differ in rows"
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
    )
    g = generator(seed, "train/batches")
    log = TrainLog()
    rep = reporter()
    if rep is not None:
        rep.start(label, cfg.steps)
    every = max(1, cfg.steps // 100)
    for step in range(cfg.steps):
        idx = torch.randint(n, (cfg.batch_size,), generator=g)
        loss = model.loss(*(t[idx] for t in tensors))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingFailed(f"{label}: loss became {value} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.after_step()
        log.losses.append(value)
        if rep is not None and (step + 1) % every == 0:
            rep.advance(every, f"loss {value:.4g}")
    if rep is not None:
        rep.finish()
    return log
