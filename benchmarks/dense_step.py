"""Dense SAE training step against the GEMM floor (issue 9 target: >= 95 % of the floor).

    .venv/bin/python benchmarks/dense_step.py [--threads 2] [--steps 6] [--cpu-clock] [--profile]

Shape: ``sae-relu``, batch 4096, d_in 512, width 4096, float32, Adam. Just before the
steps, the float32 matmul rate is measured on the step's own six matmuls (torch.mm into a
preallocated output, same layouts as autograd uses, same thread count). The floor is
12·B·d·m FLOPs (the matmuls of an SAE that subtracts the decoder bias from its input) at
that rate; "own floor" is the FLOPs the step actually runs, counted with
``torch.utils.flop_counter``, at that rate. Ratios are floor time / step time (1 = at the
floor). Rows: a plain PyTorch loop (the textbook step), and decompbench's ``train()`` on
the registered ``sae-relu`` module.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from common import (
    Floor,
    Timing,
    add_common_args,
    add_shape_args,
    apply_common_args,
    machine_line,
    matmul_flops,
    measure_floor,
    peak_memory_mb,
    print_table,
    profile_table,
    reset_peak_memory,
    sae_gemms,
    time_calls,
    time_train,
)
from torch import Tensor, nn

from decompbench.methods.base import build_method
from decompbench.methods.sae import SAEMethod, SparseAutoencoder
from decompbench.methods.sae_relu import ReLUSAE
from decompbench.methods.train import TrainParams

L1 = 0.1


class PlainSAE(nn.Module):
    """The textbook ReLU-L1 SAE training step, in plain PyTorch."""

    def __init__(self, d: int, m: int, gen: torch.Generator) -> None:
        super().__init__()
        w = torch.randn(m, d, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))

    def loss(self, x: Tensor) -> Tensor:
        z = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        x_hat = z @ self.W_dec + self.b_dec
        return (x_hat - x).pow(2).sum(-1).mean() + L1 * z.abs().sum(-1).mean()


def plain_step(model: PlainSAE, data: Tensor, batch: int) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x = data[torch.randint(data.shape[0], (batch,), generator=gen)]
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.W_dec.div_(model.W_dec.norm(dim=1, keepdim=True))

    return step


def time_plain(
    step: Callable[[], None], warmup: int, steps: int
) -> tuple[Timing, float]:  # fmt: skip
    return time_calls(step, warmup, steps, after_warmup=reset_peak_memory), peak_memory_mb()


def relu_method(width: int, batch: int) -> tuple[SAEMethod, TrainParams]:
    method = build_method("sae-relu", {"width": width, "batch_size": batch, "l1": L1})
    assert isinstance(method, SAEMethod)
    return method, method.params


def make_sae(method: SAEMethod, d: int) -> SparseAutoencoder:
    from decompbench.seeding import generator

    return method.configure(method.make_module(d, generator(0, "bench/init")))


def one_train_step(sae: SparseAutoencoder, data: Tensor, params: TrainParams) -> Callable[[], None]:
    from decompbench.methods.train import train

    cfg = params.model_copy(update={"steps": 1})
    return lambda: train(copy.deepcopy(sae), data, cfg, seed=0, label="flops") and None


def row(name: str, t: Timing, peak: float, flops: int, floor: Floor, B: int) -> list[object]:
    own = flops / floor.rate()
    return [
        name, t.seconds, B / t.seconds, flops / 1e9, floor.time() / t.seconds,
        own / t.seconds, peak, t.flag,
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_common_args(p, steps=6)
    add_shape_args(p)
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    a = p.parse_args()
    a.setting = apply_common_args(a)
    B, d, m = a.batch, a.d, a.width
    data = torch.randn(4 * B, d, generator=torch.Generator().manual_seed(1))
    floor = measure_floor(sae_gemms(B, d, m))
    rows: list[list[object]] = []

    plain = PlainSAE(d, m, torch.Generator().manual_seed(0))
    step = plain_step(plain, data, B)
    t, peak = time_plain(step, a.warmup, a.steps)
    rows.append(row("plain PyTorch loop", t, peak, matmul_flops(step), floor, B))

    method, params = relu_method(m, B)
    sae = make_sae(method, d)
    fused = type(sae).relu_l1 is not SparseAutoencoder.relu_l1
    flops = matmul_flops(one_train_step(sae, data, params))
    t, peak = time_train(sae, data, params, a.warmup, a.steps)
    label = "decompbench sae-relu, train()" + ("" if fused else " [generic step]")
    rows.append(row(label, t, peak, flops, floor, B))
    if not fused:
        # ReLUSAE does not declare relu_l1 yet: also time the fused step it would take.
        sae = FusedReLUSAE.from_module(make_sae(method, d))
        flops = matmul_flops(one_train_step(sae, data, params))
        t, peak = time_train(sae, data, params, a.warmup, a.steps)
        rows.append(row("sae-relu + relu_l1 hook, train()", t, peak, flops, floor, B))

    report(a, floor, rows, B, d, m)
    if a.profile:
        print(profile_table(one_train_step(make_sae(method, d), data, params)))


class FusedReLUSAE(ReLUSAE):
    """ReLUSAE declaring its penalty (penalty = l1 · mean sum z for z >= 0)."""

    def relu_l1(self) -> float | None:
        return self.l1

    @classmethod
    def from_module(cls, sae: SparseAutoencoder) -> FusedReLUSAE:
        sae.__class__ = cls
        assert isinstance(sae, FusedReLUSAE)
        return sae


def report(
    a: argparse.Namespace, floor: Floor, rows: list[list[object]], B: int, d: int, m: int
) -> None:
    print(f"\nmachine: {machine_line(a.setting)}")
    print(f"shape: sae-relu, B {B}, d_in {d}, width {m}, float32, Adam")
    gemm_rows = [
        [n, floor.flops[n] / 1e9, floor.seconds[n], floor.flops[n] / floor.seconds[n] / 1e9,
         floor.timings[n].flag]
        for n in floor.seconds
    ]  # fmt: skip
    print_table("GEMM floor (torch.mm into preallocated outputs)",
                ["matmul", "GFLOP", "s", "GFLOP/s", "idle check"], gemm_rows)  # fmt: skip
    print(f"\nfloor: {floor.time():.3f} s/step for 12·B·d·m = {sum(floor.flops.values()) / 1e9:.1f}"
          f" GFLOP at {floor.rate() / 1e9:.0f} GFLOP/s")  # fmt: skip
    header = ["configuration", "s/step", "samples/s", "counted GFLOP", "floor/step (12Bdm)",
              "own floor/step", "peak +MB", "idle check"]  # fmt: skip
    print_table("Dense SAE step vs GEMM floor", header, rows)
    print()
    for r in rows[1:]:
        ratio = float(r[4])  # type: ignore[arg-type]
        verdict = "MET" if ratio >= 0.95 else "NOT MET"
        flag = " (contaminated: rerun on an idle machine)" if "CONTAM" in str(r[-1]) else ""
        print(f"target >= 0.95 of the 12·B·d·m floor, {r[0]}: {ratio:.3f} -> {verdict}{flag}")


if __name__ == "__main__":
    main()
