"""decompbench versus SAELens: training samples/s, same shapes, same data, one process.

    .venv-bench/bin/python benchmarks/vs_saelens.py [--threads 2] [--steps 6] [--cpu-clock]

Needs ``sae-lens`` (``make bench`` installs it into the side environment ``.venv-bench``).
Both libraries train on minibatches of 4096 rows drawn from the same activation tensor
(d_in 512, width 4096, float32, Adam):

* ReLU-L1: decompbench ``sae-relu`` through ``methods.train.train`` vs SAELens's
  ``StandardTrainingSAE`` through its ``SAETrainer`` (fed an iterator of batches);
* TopK, k = 32: decompbench ``sae-topk`` vs SAELens's ``TopKTrainingSAE`` with its
  defaults (``rescale_acts_by_decoder_norm`` on, dense activations, aux-k loss).

A step is timed from one batch to the next, so each library's whole loop is inside
(its bookkeeping, optimiser, schedule). Targets (issue 9): >= 1.4x SAELens's samples/s
for ReLU-L1 and >= 2x for TopK.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from common import (
    StepClock,
    Timing,
    add_common_args,
    add_shape_args,
    apply_common_args,
    machine_line,
    peak_memory_mb,
    print_table,
    reset_peak_memory,
    summarise,
    time_train,
)
from dense_step import FusedReLUSAE, make_sae
from torch import Tensor

from decompbench.methods.base import build_method
from decompbench.methods.sae import SAEMethod, SparseAutoencoder

L1 = 0.1
TARGETS = {"ReLU-L1": 1.4, "TopK k=32": 2.0}


def batches(data: Tensor, batch: int, clock: StepClock) -> Iterator[Tensor]:
    gen = torch.Generator().manual_seed(0)
    while True:
        clock.tick()
        yield data[torch.randint(data.shape[0], (batch,), generator=gen)]


def time_saelens(
    arch: str, data: Tensor, batch: int, width: int, warmup: int, steps: int
) -> tuple[Timing, float]:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d = data.shape[1]
    if arch == "ReLU-L1":
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=width, l1_coefficient=L1))
    else:
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=width, k=32))
    clock = StepClock()
    n = warmup + steps + 1
    cfg = SAETrainerConfig(
        total_training_samples=n * batch, train_batch_size_samples=batch, lr=3e-4, lr_end=3e-4
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(data, batch, clock))
    reset_peak_memory()
    trainer.fit()
    return summarise(clock, skip=warmup), peak_memory_mb()


def ours(arch: str, width: int, batch: int) -> SAEMethod:
    name, extra = ("sae-relu", {"l1": L1}) if arch == "ReLU-L1" else ("sae-topk", {"k": 32})
    method = build_method(name, {"width": width, "batch_size": batch, **extra})
    assert isinstance(method, SAEMethod)
    return method


def run_arch(arch: str, data: Tensor, a: argparse.Namespace) -> list[list[object]]:
    B, m, d = a.batch, a.width, data.shape[1]
    method = ours(arch, m, B)
    configs: list[tuple[str, SparseAutoencoder]] = [
        (f"decompbench {method.name}", make_sae(method, d))
    ]
    if arch == "ReLU-L1" and type(configs[0][1]).relu_l1 is SparseAutoencoder.relu_l1:
        configs[0] = (configs[0][0] + " [generic step]", configs[0][1])
        configs.append(("sae-relu + relu_l1 hook", FusedReLUSAE.from_module(make_sae(method, d))))
    timed = [
        (label, *time_train(sae, data, method.params, a.warmup, a.steps)) for label, sae in configs
    ]
    try:
        ref, ref_peak = time_saelens(arch, data, B, m, a.warmup, a.steps)
    except Exception as e:  # SAELens's API moves; report instead of crashing the suite
        print(f"SAELens {arch} failed: {type(e).__name__}: {e}")
        return [
            [arch, label, t.seconds, B / t.seconds, "n/a", peak, t.flag] for label, t, peak in timed
        ]
    rows: list[list[object]] = [
        [arch, "SAELens", ref.seconds, B / ref.seconds, 1.0, ref_peak, ref.flag]
    ]
    for label, t, peak in timed:
        rows.append([arch, label, t.seconds, B / t.seconds, ref.seconds / t.seconds, peak, t.flag])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_common_args(p, steps=6)
    add_shape_args(p)
    a = p.parse_args()
    a.setting = apply_common_args(a)
    data = torch.randn(4 * a.batch, a.d, generator=torch.Generator().manual_seed(1))
    try:
        import sae_lens
    except ImportError:
        print("sae-lens is not installed: run `make bench` (side environment .venv-bench)")
        raise SystemExit(0) from None
    rows = [r for arch in TARGETS for r in run_arch(arch, data, a)]
    print(f"\nmachine: {machine_line(a.setting)}; sae-lens {sae_lens.__version__}")
    print(f"shape: B {a.batch}, d_in {a.d}, width {a.width}, float32, Adam")
    header = ["SAE", "implementation", "s/step", "samples/s", "x SAELens", "peak +MB", "idle check"]
    print_table("decompbench vs SAELens (training samples/s)", header, rows)
    print()
    for r in rows:
        if r[1] == "SAELens" or not isinstance(r[4], float):
            continue
        target = TARGETS[str(r[0])]
        verdict = "MET" if r[4] >= target else "NOT MET"
        flag = " (contaminated: rerun on an idle machine)" if "CONTAM" in str(r[-1]) else ""
        print(f"target >= {target}x SAELens, {r[0]}, {r[1]}: {r[4]:.2f}x -> {verdict}{flag}")


if __name__ == "__main__":
    main()
