"""Samples/s of the shared training loop for the built-in SAE variants (run by hand).

    .venv/bin/python benchmarks/train_speed.py [--steps 50]

Prints one row per (method, d_in, width): seconds per step and samples per second.
"""

from __future__ import annotations

import argparse
import time

import torch

from decompbench.methods.base import build_method
from decompbench.toys.base import ActivationSite

SHAPES = [(16, 64), (128, 1024), (512, 4096)]
BATCH = 4096


def time_method(name: str, d: int, width: int, steps: int) -> float:
    extra = {"k": 32} if name == "sae-topk" else {}
    params = {"width": width, "steps": steps, "batch_size": BATCH, **extra}
    method = build_method(name, params)
    site = ActivationSite("x", torch.randn(BATCH * 4, d))
    t0 = time.perf_counter()
    method.fit(site, seed=0)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"{'method':<10} {'d_in':>5} {'width':>6} {'s/step':>9} {'samples/s':>11}")
    for name in ("sae-relu", "sae-topk"):
        for d, width in SHAPES:
            s = time_method(name, d, width, args.steps)
            print(f"{name:<10} {d:>5} {width:>6} {s:>9.4f} {BATCH / s:>11.0f}")


if __name__ == "__main__":
    main()
