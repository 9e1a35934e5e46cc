"""Samples/s of the shared training loop for the built-in SAE variants at three sizes.

    .venv/bin/python benchmarks/train_speed.py [--threads 2] [--steps 4] [--cpu-clock]

One row per (method, d_in, width): seconds per step and samples/s of ``train()`` with
batch 4096, for the generic autograd step and the fast step (``step_path``; ``auto``
takes the fast step from batch x width >= 2^20 on, see ``methods/sae.py``). ``sae-relu``'s
fast step needs its ``relu_l1`` hook; without it both columns time the generic step.
"""

from __future__ import annotations

import argparse

import torch
from common import add_common_args, apply_common_args, machine_line, print_table, time_train
from dense_step import make_sae

from decompbench.methods.base import build_method
from decompbench.methods.sae import SAEMethod

SHAPES = [(16, 64), (128, 1024), (512, 4096)]
BATCH = 4096


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_common_args(p, steps=4)
    a = p.parse_args()
    a.setting = apply_common_args(a)
    rows: list[list[object]] = []
    for name, extra in (("sae-relu", {}), ("sae-topk", {"k": 32})):
        for d, width in SHAPES:
            method = build_method(name, {"width": width, "batch_size": BATCH, **extra})
            assert isinstance(method, SAEMethod)
            data = torch.randn(4 * BATCH, d, generator=torch.Generator().manual_seed(1))
            row: list[object] = [name, d, width]
            flags = []
            for path in ("generic", "fast"):
                sae = make_sae(method, d)
                sae.step_path = path
                t, _ = time_train(sae, data, method.params, a.warmup, a.steps)
                row += [t.seconds, BATCH / t.seconds]
                flags.append(t.flag)
            rows.append([*row, row[3] / row[5], " / ".join(flags)])  # type: ignore[operator]
    print(f"\nmachine: {machine_line(a.setting)}; batch {BATCH}, float32, Adam")
    header = ["method", "d_in", "width", "generic s/step", "generic samples/s", "fast s/step",
              "fast samples/s", "fast speed-up", "idle check (generic / fast)"]  # fmt: skip
    print_table("Training-loop speed by size", header, rows)


if __name__ == "__main__":
    main()
