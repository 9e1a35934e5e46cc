"""Absorption on the `hierarchy` toy: MCC and per-parent absorption rate per method (by hand).

    .venv/bin/python benchmarks/hierarchy_absorption.py examples/hierarchy_absorption.yaml

For every method x seed of the suite: fit on the toy's site, match latents to true
features by Hungarian matching on decoder |cos|, and report MCC (plain and strict) and
each parent's absorption rate (``metrics/absorption.py``) on held-out samples, beside
the rate at which the parent's latent is silent when the parent fires without a child
(the baseline: small magnitudes can be missed without any absorption).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from decompbench import metrics as M
from decompbench.bench.runner import site_data, site_view
from decompbench.bench.suite import load_suite
from decompbench.methods.base import build_method
from decompbench.metrics.absorption import absorption_rate, absorption_rates, match_latents
from decompbench.metrics.reconstruction import active
from decompbench.toys.base import build_toy


def parent_alone_misses(
    A_NK: Tensor, Z_NM: Tensor, latent_of: list[int], children: dict[int, list[int]]
) -> dict[int, float]:
    """Baseline: share of parent-without-child samples on which the parent latent is silent.

    A parent latent can miss small parent magnitudes without any absorption; absorption
    proper is the excess of the absorption rate over this.
    """
    fires = active(Z_NM)
    out = {}
    for p, kids in children.items():
        alone_N = (A_NK[:, p] > 0) & ~(A_NK[:, kids] > 0).any(dim=1)
        j = latent_of[p]
        out[p] = 1.0 if j < 0 else absorption_rate(alone_N, fires[:, j])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suite", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write JSON lines here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite, _ = load_suite(args.suite)
    rows = []
    for seed in suite.seeds:
        for tspec in suite.toys:
            toy = build_toy(tspec.name, tspec.params, seed)
            data = site_data(toy, "hidden", suite.n_train, suite.n_eval, seed)
            gt = toy.ground_truth("hidden")
            children = {p: toy.children_of(p) for p in range(toy.params.n_parents)}  # type: ignore[attr-defined,operator]
            for mspec in suite.methods:
                method = build_method(mspec.name, mspec.params)
                method.fit(site_view(toy, data, method), seed)
                Z = method.encode(data.eval_ND)
                alive = M.alive_mask(Z)
                D = method.directions()[alive]
                latent_of = match_latents(gt.directions_KD, D)
                A = data.eval_feats_NK
                rates = absorption_rates(A, Z[:, alive], latent_of, children)
                misses = parent_alone_misses(A, Z[:, alive], latent_of, children)
                G = gt.directions_KD
                row = dict(method=mspec.name, params=mspec.params, seed=seed,
                           mcc=M.mcc(G, D), mcc_strict=M.mcc_strict(G, D),
                           l0=M.l0(Z), fvu=M.fvu(data.eval_ND, method.decode(Z)),
                           absorption=[rates[p] for p in sorted(rates)],
                           parent_alone_silent=[misses[p] for p in sorted(misses)])  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
