"""The one training loop shared by every gradient-trained method.

Adam; linear warm-up, constant, then linear decay of the learning rate to zero;
minibatches drawn from the run's seed; ``after_step`` hook (e.g. unit-norm decoder rows);
progress through ``decompbench.progress``; stop with ``TrainingFailed`` on a non-finite
loss.

Optional hooks a model may define (each is looked up with ``getattr``; a model without
them trains exactly as before):

* ``prepare(*tensors)`` — called once with the whole training data before the first
  step (e.g. input normalisation, geometric-median decoder bias).
* ``set_train_state(state: TrainState)`` — called before every step with the step
  index, the sparsity-penalty warm-up factor and the mask of dead latents.
* ``fire_rate_M`` — after ``loss``, a float [m] tensor: the share of the minibatch on
  which each latent fired. The loop then tracks, per latent, the steps since it last
  fired (dead when above ``dead_after_steps``) and an exponential average of its firing
  rate (dense when above ``dense_rate``); counts land in the ``TrainLog``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from pydantic import Field
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.errors import TrainingFailed
from decompbench.progress import reporter
from decompbench.seeding import generator

FIRE_RATE_DECAY = 0.99  # exponential average of per-step firing rates (~100 steps)
# From this many parameters on, Adam runs as one fused kernel (3x faster than the foreach
# kernels at 4M parameters). Below it both cost the same; foreach is kept there because its
# rounding is the one ``methods/batched.py`` mirrors bit for bit (fused differs by 1 ulp).
FUSED_ADAM_MIN_PARAMS = 1 << 20


# Convergence of a run (``loss_rel_change``): the last TAIL_FRAC of the steps is split in
# two halves and the change of the mean loss between them is taken relative to the later
# mean. Means over tens to hundreds of minibatches average the minibatch noise out; the
# denominator never falls below LOSS_FLOOR x the mean loss of the first TAIL_FRAC of
# steps, so a loss that has fallen to ~0 (an exact fit) is not flagged for noise in its
# last digits.
TAIL_FRAC = 0.1
LOSS_FLOOR = 1e-3
# A run counts as converged when its loss_rel_change is at most this. Chosen from the
# losses alone (no ground-truth score) of the default suite's 104 gradient-trained runs
# (seed 0, 2000 steps, every toy and site): quartiles 0.003 / 0.007 / 0.020, 90th
# percentile 0.039, max 0.201. Runs on dense, steady losses (sae-relu, transcoder and
# spd on composed, sae-relu on curve and data-structure; noise standard error <= 0.01)
# all sit at <= 0.011. Of the runs above 0.02 retrained 4x longer, 6 of 7 reached a clearly lower
# loss, i.e. had not converged: tms sae-topk k2 0.033 (860x lower), tms sae-e2e 0.061
# (38x), composed-tms sae-topk k2 0.12 (10x), data-structure sae-topk k4 0.033 (4.6x),
# curve sae-topk k4 0.022 (3.9x), hierarchy sae-topk k4 0.197 (1.4x; its minibatch
# losses vary by ~100 %); the 7th, compressed sae-e2e 0.022, only by 2 %. 25 of the
# 104 runs are flagged.
CONVERGED_TOL = 0.02


def loss_rel_change(losses: Sequence[float]) -> float | None:
    """|mean(first half of the last 10 % of steps) - mean(second half)| / max(|mean(second
    half)|, LOSS_FLOOR x |mean of the first 10 % of steps|); None under 2 steps."""
    n = len(losses)
    if n < 2:
        return None
    tail = max(2, math.ceil(TAIL_FRAC * n))
    half = tail // 2
    early = sum(losses[-tail:][:half]) / half
    late = sum(losses[-half:]) / half
    start = sum(losses[:tail]) / tail
    scale = max(abs(late), LOSS_FLOOR * abs(start), 1e-30)
    return abs(early - late) / scale


def convergence(losses: Sequence[float]) -> dict[str, float | None]:
    """``{"loss_rel_change": x, "converged": 1.0 | 0.0}`` of one training run's losses
    (``converged`` is None when there is no change to measure)."""
    change = loss_rel_change(losses)
    if change is None:
        return {"loss_rel_change": None, "converged": None}
    return {"loss_rel_change": change, "converged": float(change <= CONVERGED_TOL)}


class TrainParams(StrictModel):
    """Optimisation settings; gradient-trained methods inherit these fields."""

    steps: int = Field(default=3000, ge=1, description="optimiser steps")
    lr: float = Field(default=3e-3, gt=0, description="peak learning rate (Adam)")
    batch_size: int = Field(default=256, ge=1, description="samples per minibatch")
    warmup_frac: float = Field(
        default=0.05, ge=0, le=1, description="share of steps of linear learning-rate warm-up"
    )
    decay_frac: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="share of final steps of linear learning-rate decay to 0",
    )
    sparsity_warmup_frac: float = Field(
        default=0.0, ge=0, le=1, description="share of steps over which the penalty ramps 0->1"
    )
    dead_after_steps: int = Field(
        default=200, ge=1, description="a latent silent for this many steps counts as dead"
    )
    dense_rate: float = Field(
        default=0.5, gt=0, le=1, description="a latent firing on more samples counts as dense"
    )


class Trainable(Protocol):
    """``loss`` takes one minibatch row-slice of each training tensor, in order."""

    @property
    def loss(self) -> Callable[..., Tensor]: ...

    def parameters(self) -> object: ...
    def after_step(self) -> None: ...


@dataclass(frozen=True)
class TrainState:
    """What the loop tells a model before each step."""

    step: int
    steps: int
    sparsity_scale: float
    dead_M: Tensor | None  # bool [m], or None before the model reported any latents


def lr_factor(step: int, steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    warm = math.ceil(warmup_frac * steps)
    decay = math.ceil(decay_frac * steps)
    if step < warm:
        return (step + 1) / warm
    if decay and step >= steps - decay:  # decay 0: no decay (the scheduler also asks
        return max(steps - step, 0) / decay  # for step == steps after the last step)
    return 1.0


def sparsity_factor(step: int, steps: int, warmup_frac: float) -> float:
    """Multiplier of the sparsity penalty: linear ramp from 1/warm to 1, then 1."""
    warm = math.ceil(warmup_frac * steps)
    return 1.0 if step >= warm else (step + 1) / warm


class LatentTracker:
    """Steps since each latent last fired, and an exponential average of its firing rate."""

    def __init__(self, dead_after: int, dense_rate: float) -> None:
        self.dead_after = dead_after
        self.dense_rate = dense_rate
        self.since_fired_M: Tensor | None = None
        self.rate_M: Tensor | None = None

    def update(self, fired_M: Tensor, rate_M: Tensor) -> None:
        if self.since_fired_M is None or self.rate_M is None:
            self.since_fired_M = torch.zeros(fired_M.shape[0], dtype=torch.long)
            self.rate_M = rate_M.detach().double().clone()
        self.since_fired_M = torch.where(fired_M, 0, self.since_fired_M + 1)
        self.rate_M = FIRE_RATE_DECAY * self.rate_M + (1 - FIRE_RATE_DECAY) * rate_M.double()

    def dead_M(self) -> Tensor | None:
        return None if self.since_fired_M is None else self.since_fired_M > self.dead_after

    def dense_M(self) -> Tensor | None:
        return None if self.rate_M is None else self.rate_M > self.dense_rate


@dataclass
class TrainLog:
    """Loss per step; dead/dense latent counts every 1 % of training; final tracker state."""

    losses: list[float] = field(default_factory=list)
    n_dead: list[int] = field(default_factory=list)
    n_dense: list[int] = field(default_factory=list)
    steps_since_fired_M: Tensor | None = None
    fire_rate_M: Tensor | None = None

    def convergence(self) -> dict[str, float | None]:
        """Relative loss change over the last 10 % of steps and the converged flag."""
        return convergence(self.losses)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 20) :]
        return sum(tail) / len(tail)

    def note_latents(self, tracker: LatentTracker) -> None:
        dead, dense = tracker.dead_M(), tracker.dense_M()
        if dead is not None and dense is not None:
            self.n_dead.append(int(dead.sum()))
            self.n_dense.append(int(dense.sum()))
        self.steps_since_fired_M = tracker.since_fired_M
        self.fire_rate_M = tracker.rate_M


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over ``model``'s parameters; the fused kernel for large float models."""
    params = list(model.parameters())
    fused = sum(p.numel() for p in params) >= FUSED_ADAM_MIN_PARAMS and all(
        p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
        for p in params
    )
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def _call_hook(model: nn.Module, name: str, *args: object) -> None:
    hook = getattr(model, name, None)
    if callable(hook):
        hook(*args)


def _track(model: nn.Module, tracker: LatentTracker) -> None:
    """Feed the model's ``fire_rate_M`` of the last minibatch to the tracker."""
    rate = getattr(model, "fire_rate_M", None)
    if isinstance(rate, Tensor):
        tracker.update(rate > 0, rate)


def _checked_loss(model: Trainable, batch: tuple[Tensor, ...], label: str, step: int) -> Tensor:
    loss = model.loss(*batch)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingFailed(f"{label}: loss became {value} at step {step}")
    return loss


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
    _call_hook(model, "prepare", *tensors)
    opt = make_adam(model, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
    )
    g = generator(seed, "train/batches")
    log, tracker = TrainLog(), LatentTracker(cfg.dead_after_steps, cfg.dense_rate)
    rep = reporter()
    if rep is not None:
        rep.start(label, cfg.steps)
    every = max(1, cfg.steps // 100)
    for step in range(cfg.steps):
        scale = sparsity_factor(step, cfg.steps, cfg.sparsity_warmup_frac)
        _call_hook(model, "set_train_state", TrainState(step, cfg.steps, scale, tracker.dead_M()))
        idx = torch.randint(n, (cfg.batch_size,), generator=g)
        loss = _checked_loss(model, tuple(t[idx] for t in tensors), label, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.after_step()
        _track(model, tracker)
        log.losses.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            log.note_latents(tracker)
            if rep is not None and (step + 1) % every == 0:
                rep.advance(every, f"loss {log.losses[-1]:.4g}")
    if rep is not None:
        rep.finish()
    return log
