"""Shared pieces of the speed benchmarks: step clock with an idle-machine check, peak
memory, the GEMM floor, FLOP counting, and markdown tables.

Idle check: for every timed step the clock also records how much CPU *other* processes
used meanwhile (system-wide busy time from /proc/stat minus this process's own from
/proc/self/stat, in cores). A step during which others used more than ``MAX_OTHER_CORES``
is contaminated: summaries use the clean steps only, and a configuration with fewer than
half of its steps clean is flagged ``CONTAMINATED`` (its figures are then medians over all
steps and not to be trusted).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MAX_OTHER_CORES = 0.10  # other processes' mean CPU use (in cores) above which a step is dirty
_HZ = os.sysconf("SC_CLK_TCK")
_CLOCK = [time.perf_counter]  # wall time; ``--cpu-clock``: this process's CPU time


def add_shape_args(p: argparse.ArgumentParser) -> None:
    """The issue's SAE shape: batch 4096, d_in 512, width 4096 (each overridable)."""
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--width", type=int, default=4096)


def add_common_args(p: argparse.ArgumentParser, steps: int = 6) -> None:
    p.add_argument("--threads", type=int, default=2, help="torch threads (floor and steps)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time with this process's CPU time and 1 thread: a rough stand-in for an idle "
        "machine while other processes load it (wall time is the real measure)",
    )


def apply_common_args(a: argparse.Namespace) -> str:
    """Set threads and clock from the parsed arguments; returns the clock's description."""
    if a.cpu_clock:
        a.threads = 1
        _CLOCK[0] = time.process_time
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clock = "process CPU time (--cpu-clock)" if a.cpu_clock else "wall time"
    return f"{a.threads} threads, {clock}"


def _busy_ticks() -> tuple[int, int]:
    """(all CPUs' busy ticks, this process's ticks); (0, 0) where /proc is missing."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(v) for v in fields]
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime (all threads)
    except (OSError, ValueError, IndexError):
        return 0, 0


@dataclass
class StepClock:
    """Call ``tick()`` at every step boundary; the intervals are the step times."""

    seconds: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    _last: tuple[float, int, int] | None = None

    def tick(self) -> None:
        now, (busy, own) = _CLOCK[0](), _busy_ticks()
        if self._last is not None:
            t0, busy0, own0 = self._last
            dt = now - t0
            self.seconds.append(dt)
            self.other_cores.append(max(0, (busy - busy0) - (own - own0)) / _HZ / max(dt, 1e-9))
        self._last = (now, busy, own)

    def reset(self) -> None:
        self.seconds.clear()
        self.other_cores.clear()
        self._last = None


@dataclass(frozen=True)
class Timing:
    """Median seconds of the clean steps (or of all, when too few are clean)."""

    seconds: float
    n_clean: int
    n: int
    max_other: float

    @property
    def contaminated(self) -> bool:
        return self.n_clean * 2 < self.n or self.n_clean == 0

    @property
    def flag(self) -> str:
        note = f"{self.n_clean}/{self.n} clean"
        return f"CONTAMINATED ({note})" if self.contaminated else note


def summarise(clock: StepClock, skip: int = 0) -> Timing:
    secs, other = clock.seconds[skip:], clock.other_cores[skip:]
    clean = [s for s, o in zip(secs, other, strict=True) if o <= MAX_OTHER_CORES]
    pool = secs if len(clean) * 2 < len(secs) or not clean else clean
    return Timing(statistics.median(pool), len(clean), len(secs), max(other, default=0.0))


def time_calls(
    fn: Callable[[], object], warmup: int, repeats: int,
    after_warmup: Callable[[], object] | None = None,
) -> Timing:  # fmt: skip
    """Time ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (then ``after_warmup``,
    e.g. ``reset_peak_memory``)."""
    for _ in range(warmup):
        fn()
    if after_warmup is not None:
        after_warmup()
    clock = StepClock()
    clock.tick()
    for _ in range(repeats):
        fn()
        clock.tick()
    return summarise(clock)


# --- memory ------------------------------------------------------------------------------


_baseline_mb = [0.0]


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) and remember the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    _baseline_mb[0] = _status_mb("VmRSS") or 0.0


def peak_memory_mb() -> float:
    """Peak resident memory since ``reset_peak_memory`` above the RSS at that moment (MB);
    where /proc is missing, the process's lifetime peak."""
    hwm = _status_mb("VmHWM")
    if hwm is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return hwm - _baseline_mb[0]


# --- the GEMM floor and FLOP counting -----------------------------------------------------


def matmul_flops(fn: Callable[[], object]) -> int:
    """Matmul FLOPs of one call of ``fn``, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Gemm:
    """One matmul of a step: out = op(a) @ op(b), op = transpose or not; shapes as stored."""

    name: str
    a_shape: tuple[int, int]
    a_transposed: bool
    b_shape: tuple[int, int]
    b_transposed: bool

    def operands(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        a = torch.randn(*self.a_shape, generator=gen)
        b = torch.randn(*self.b_shape, generator=gen)
        a, b = (a.T if self.a_transposed else a), (b.T if self.b_transposed else b)
        return a, b, torch.empty(a.shape[0], b.shape[1])

    @property
    def flops(self) -> int:
        m, k = self.a_shape[::-1] if self.a_transposed else self.a_shape
        n = self.b_shape[0] if self.b_transposed else self.b_shape[1]
        return 2 * m * k * n


def sae_gemms(B: int, d: int, m: int) -> list[Gemm]:
    """The six [B,d]x[d,m]-sized matmuls of a dense SAE step, in autograd's layouts.

    The last one is the input gradient of (x - b_dec) W_enc, which a step that folds the
    decoder bias into the encoder bias does not need.
    """
    return [
        Gemm("x W_enc", (B, d), False, (d, m), False),
        Gemm("z W_dec", (B, m), False, (m, d), False),
        Gemm("g W_dec^T", (B, d), False, (m, d), True),
        Gemm("z^T g", (B, m), True, (B, d), False),
        Gemm("x^T g", (B, d), True, (B, m), False),
        Gemm("g W_enc^T", (B, m), False, (d, m), True),
    ]


@dataclass(frozen=True)
class Floor:
    """Median time of each matmul (``torch.mm`` into a preallocated output)."""

    seconds: dict[str, float]
    flops: dict[str, int]
    timings: dict[str, Timing]

    def time(self, names: Iterable[str] | None = None) -> float:
        return sum(self.seconds[n] for n in (names or self.seconds))

    def rate(self) -> float:
        """FLOP/s over all measured matmuls."""
        return sum(self.flops.values()) / self.time()

    @property
    def contaminated(self) -> bool:
        return any(t.contaminated for t in self.timings.values())


def measure_floor(gemms: Sequence[Gemm], repeats: int = 5) -> Floor:
    gen = torch.Generator().manual_seed(0)
    seconds, flops, timings = {}, {}, {}
    for g in gemms:
        a, b, out = g.operands(gen)
        t = time_calls(functools.partial(torch.mm, a, b, out=out), 1, repeats)
        seconds[g.name], flops[g.name], timings[g.name] = t.seconds, g.flops, t
    return Floor(seconds, flops, timings)


# --- reporting ----------------------------------------------------------------------------


def machine_line(setting: str) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} | {cpu}, {os.cpu_count()} cores | "
        f"torch {torch.__version__} | python {sys.version.split()[0]} | {setting}"
    )


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A markdown table (pastes into the README as is)."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


# --- timing decompbench's own training loop -------------------------------------------------


def time_train(
    model: Any, data: Tensor, params: Any, warmup: int, steps: int
) -> tuple[Timing, float]:
    """Per-step times of ``methods.train.train`` (every step of the real loop: batch draw,
    loss, backward, Adam, schedule, ``after_step``, latent tracking) and peak memory (MB).
    """
    from decompbench.methods.train import TrainParams, train

    assert isinstance(params, TrainParams)
    clock = StepClock()
    original = model.after_step

    def after_step() -> None:
        original()
        clock.tick()

    setattr(model, "after_step", after_step)  # noqa: B010 (an instance attribute, removed below)
    reset_peak_memory()
    try:
        cfg = params.model_copy(update={"steps": warmup + steps + 1})
        train(model, data, cfg, seed=0, label="bench")
    finally:
        delattr(model, "after_step")
    return summarise(clock, skip=warmup), peak_memory_mb()


def profile_table(fn: Callable[[], object], rows: int = 12) -> str:
    """torch.profiler's self-CPU-time table of one call of ``fn`` (explains a miss)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return table
