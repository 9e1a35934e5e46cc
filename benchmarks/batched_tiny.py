"""Batched tiny models: G toy-sized SAEs trained as one batched job vs one after another.

    .venv/bin/python benchmarks/batched_tiny.py [--models 64] [--steps 500] [--repeats 3]
        [--threads 1 2] [--methods sae-relu sae-topk] [--suite | --suite-only]

The G models (d 16, width 32, batch 256, half of them at each of two sparsity settings:
l1 0.03 / 0.3 or k 2 / 4, seeds 0..G-1) are fitted once with ``SAEMethod.fit`` one after
another and once with ``methods.batched.fit_many``. Each timing runs in a fresh process
(so its peak RSS is its own); the table gives the median over the repeats of wall and CPU
(user + sys) seconds, the speed-up of the medians, the largest |difference| of any final
parameter between the two paths, the peak RSS above the process's baseline, and the
1-minute load average around the measurements (the machine is shared: load above the
thread count means the wall times are inflated).

``--suite`` adds a second table: the built-in suite's batchable runs (sae-relu, sae-topk at
their suite settings, on the suite's own toy sites) fitted one after another, batched per
toy site (``plan_groups`` with the site as data key: the runner hook), and batched across
toys per site dimension d.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

D, WIDTH, BATCH, N_TRAIN = 16, 32, 256, 8192
TARGET_SPEEDUP = 10.0
SWEEP: dict[str, tuple[str, list[float | int]]] = {
    "sae-relu": ("l1", [0.03, 0.3]),
    "sae-topk": ("k", [2, 4]),
}


def toy_data() -> torch.Tensor:
    """Sparse non-negative data: 16 features, each active 20 % of the time."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(N_TRAIN, D, generator=g))
    return x * (torch.rand(N_TRAIN, D, generator=g) < 0.2)


def status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process from /proc, in MB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def timed_fit(job: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: fit the G models one way; time, memory, final parameters."""
    torch.set_num_threads(job["threads"])
    from decompbench.methods import batched
    from decompbench.methods.base import build_method
    from decompbench.toys.base import ActivationSite

    site = ActivationSite("x", toy_data())
    key, values = SWEEP[job["method"]]
    seeds = list(range(job["models"]))
    params = [{"width": WIDTH, "steps": job["steps"], "batch_size": BATCH,
               key: values[s % len(values)]} for s in seeds]  # fmt: skip
    methods = [build_method(job["method"], p) for p in params]
    warm = [build_method(job["method"], {**p, "steps": 3}) for p in params]
    warm[0].fit(site, 0)  # one-off costs (lazy init, allocator) out of the timing
    batched.fit_many(warm, site, seeds)
    reset_peak_rss()
    base, t0, c0 = status_mb("VmRSS"), time.perf_counter(), os.times()
    if job["batched"]:
        fitted: list[Any] = batched.fit_many(methods, site, seeds)
    else:
        for m, s in zip(methods, seeds, strict=True):
            m.fit(site, s)
        fitted = list(methods)
    wall, c1 = time.perf_counter() - t0, os.times()
    peak = status_mb("VmHWM")
    states = [{k: v.clone() for k, v in m.sae.state_dict().items()} for m in fitted]
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return dict(wall=wall, cpu=cpu, peak_mb=peak - base, states=states)


def in_child(ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
    with ctx.Pool(1) as pool:
        return dict(pool.apply(timed_fit, (job,)))


def max_param_diff(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> float:
    return max(float((sa[k] - sb[k]).abs().max()) for sa, sb in zip(a, b, strict=True) for k in sa)


def measure(ctx: Any, job: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Alternate sequential and batched runs ``repeats`` times; medians and load."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    loads = [os.getloadavg()[0]]
    for _ in range(repeats):
        for is_batched in (False, True):
            runs[is_batched].append(in_child(ctx, {**job, "batched": is_batched}))
            loads.append(os.getloadavg()[0])
    med = {b: {k: statistics.median(r[k] for r in runs[b]) for k in ("wall", "cpu", "peak_mb")}
           for b in runs}  # fmt: skip
    diff = max_param_diff(runs[False][0]["states"], runs[True][0]["states"])
    return dict(seq=med[False], bat=med[True], diff=diff, load=(min(loads), max(loads)))


# --- the default suite ------------------------------------------------------------------


def suite_sae_runs() -> list[tuple[Any, Any]]:
    """(planned run, activation site) of every batchable run of the built-in suite."""
    import json

    from decompbench.bench.runner import site_data
    from decompbench.bench.suite import load_suite, plan_runs
    from decompbench.methods.batched import group_key
    from decompbench.toys.base import ActivationSite, build_toy

    suite = load_suite(None)[0]
    toys: dict[str, Any] = {}
    sites: dict[tuple[str, str], Any] = {}
    out = []
    for run in plan_runs(suite):
        if group_key(run) is None:
            continue
        key = json.dumps([run.toy.name, run.toy.params, run.seed], sort_keys=True)
        if key not in toys:
            toys[key] = build_toy(run.toy.name, run.toy.params, run.seed)
        if (key, run.site) not in sites:
            data = site_data(toys[key], run.site, suite.n_train, suite.n_eval, run.seed)
            sites[key, run.site] = ActivationSite(data.name, data.train_ND)
        out.append((run, sites[key, run.site]))
    return out


def time_suite_mode(mode: str, threads: int) -> dict[str, Any]:
    """Fit the suite's batchable runs one after another, per toy site, or per d."""
    torch.set_num_threads(threads)
    from decompbench.methods import batched
    from decompbench.methods.base import build_method

    pairs = suite_sae_runs()
    groups: dict[Any, list[int]] = {}
    for i, (run, site) in enumerate(pairs):
        key = (batched.group_key(run), site.d, id(site.acts_ND) if mode == "site" else 0)
        groups.setdefault(key, []).append(i)
    t0 = time.perf_counter()
    if mode == "sequential":
        for run, site in pairs:
            build_method(run.method.name, run.method.params).fit(site, run.seed)
    else:
        for idx in groups.values():
            batched.fit_group([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
    sizes = [1] * len(pairs) if mode == "sequential" else [len(g) for g in groups.values()]
    return dict(wall=time.perf_counter() - t0, runs=len(pairs), sizes=sorted(sizes))


def suite_table(ctx: Any, threads: list[int]) -> None:
    print("\nbuilt-in suite, its batchable runs (sae-relu, sae-topk), fit only, one repeat")
    print(f"{'grouping':<11} {'thr':>3} {'runs':>4} {'batches':>7} {'fit s':>7} {'speed-up':>8} "
          f"{'load':>5}  batch sizes")  # fmt: skip
    for thr in threads:
        seq = 0.0
        for mode in ("sequential", "site", "d"):
            with ctx.Pool(1) as pool:
                r = pool.apply(time_suite_mode, (mode, thr))
            seq = seq or r["wall"]
            print(f"{mode:<11} {thr:>3} {r['runs']:>4} {len(r['sizes']):>7} {r['wall']:>7.1f} "
                  f"{seq / r['wall']:>7.1f}x {os.getloadavg()[0]:>5.1f}  "
                  f"{sorted(set(r['sizes']))}", flush=True)  # fmt: skip


def target_line(method: str, threads: int, speedup: float, diff: float) -> str:
    met = "MET" if speedup >= TARGET_SPEEDUP and diff == 0 else "NOT met"
    return (f"target {TARGET_SPEEDUP:.0f}x one by one with equal parameters, {method}, "
            f"{threads} thread(s): {speedup:.1f}x, max|dp| {diff:.1e} -> {met}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(SWEEP), choices=list(SWEEP))
    parser.add_argument("--suite", action="store_true", help="also time the built-in suite")
    parser.add_argument("--suite-only", action="store_true", help="only the suite table")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    if args.suite_only:
        suite_table(ctx, args.threads)
        return
    print(f"{args.models} SAEs d {D} width {WIDTH} batch {BATCH}, median of {args.repeats}; "
          f"cores {os.cpu_count()}; torch {torch.__version__}")  # fmt: skip
    print(f"{'method':<9} {'thr':>3} {'steps':>5} {'seq s':>7} {'bat s':>6} {'speed-up':>8} "
          f"{'cpu x':>6} {'max|dp|':>8} {'seq MB':>7} {'bat MB':>7} {'load':>9}")  # fmt: skip
    targets: list[str] = []
    for method in args.methods:
        for threads in args.threads:
            job = dict(method=method, threads=threads, models=args.models, steps=args.steps)
            r = measure(ctx, job, args.repeats)
            s, b = r["seq"], r["bat"]
            print(f"{method:<9} {threads:>3} {args.steps:>5} {s['wall']:>7.2f} {b['wall']:>6.2f} "
                  f"{s['wall'] / b['wall']:>7.1f}x {s['cpu'] / b['cpu']:>5.1f}x "
                  f"{r['diff']:>8.1e} {s['peak_mb']:>7.1f} {b['peak_mb']:>7.1f} "
                  f"{r['load'][0]:>4.1f}-{r['load'][1]:<4.1f}", flush=True)  # fmt: skip
            targets.append(target_line(method, threads, s["wall"] / b["wall"], r["diff"]))
    print("\n" + "\n".join(targets))
    if args.suite:
        suite_table(ctx, args.threads)


if __name__ == "__main__":
    main()
