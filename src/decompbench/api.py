"""The Python API: score a dictionary on a toy site, run a suite.

``evaluate`` gives the flat metrics dict of a suite run (``bench.evaluate.score`` on the
runner's evaluation samples of that seed, with the toy's downstream network for the
faithfulness and causal scores, and the chance levels); ``run_suite`` runs a suite like
``decompbench run`` and also writes ``stance.json`` and the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from decompbench.bench.results import Record
from decompbench.errors import TrainingFailed, UserError
from decompbench.methods.base import Decomposition
from decompbench.toys.base import Toy

N_EVAL = 4096


@dataclass(frozen=True)
class Scored:
    """A dictionary scored on a toy site: the metrics, and what a run record needs."""

    metrics: dict[str, float | int | None]
    toy: Toy
    site: str
    method: Decomposition
    eval_ND: Tensor
    eval_feats_NK: Tensor
    wall_s: float


def as_method(
    dictionary: Decomposition | Tensor,
    encoder: Callable[[Tensor], Tensor] | None = None,
    decoder_bias: Tensor | None = None,
) -> Decomposition:
    """A fitted decomposition, or bare directions ``[m, d]`` (decoder rows) wrapped as one:
    latents from ``encoder`` if given, else least-squares coefficients."""
    from decompbench.io.dictionaries import ReadDictionary, Weights

    if isinstance(dictionary, Decomposition):
        if encoder is not None or decoder_bias is not None:
            raise UserError("encoder and decoder_bias go with bare directions, not a method")
        return dictionary
    D = torch.as_tensor(dictionary).detach().float()
    if D.ndim != 2:
        raise UserError(f"directions must be [m, d], got shape {list(D.shape)}")
    b = torch.zeros(D.shape[1]) if decoder_bias is None else decoder_bias.detach().float()
    w = Weights(D, b, activation="custom", encoder=encoder) if encoder else Weights(D, b)
    return ReadDictionary(w, "directions")


def toy_of(toy: str | Toy, params: Mapping[str, Any] | None, seed: int) -> Toy:
    from decompbench.toys.base import build_toy

    if isinstance(toy, Toy):
        if params:
            raise UserError("params go with a toy name, not a built toy")
        return toy
    return build_toy(toy, dict(params or {}), seed, f"toy '{toy}' params")


def score_on_site(method: Decomposition, toy: Toy, site: str, seed: int = 0,
                  n_eval: int = N_EVAL) -> Scored:  # fmt: skip
    """Check ``method`` against the site's width, then score it as the runner does."""
    from decompbench.bench.evaluate import score
    from decompbench.bench.runner import check_outputs, site_data

    t0 = time.perf_counter()
    toy.check_site(site)
    data = site_data(toy, site, 1, n_eval, seed)
    d = int(data.eval_ND.shape[1])
    D = method.directions()
    if D.ndim != 2 or D.shape[1] != d:
        raise UserError(
            f"dictionary d_in={D.shape[-1]} does not match site '{site}' of toy '{toy.name}' "
            f"(d={d})"
        )
    try:
        check_outputs(method, data.eval_ND)
    except TrainingFailed as err:
        raise UserError(f"the dictionary's {err}") from None
    gt, f = toy.ground_truth(site), toy.downstream(site)
    metrics = score(method, gt, data.eval_feats_NK, data.eval_ND, seed, downstream=f)
    wall = time.perf_counter() - t0
    return Scored(metrics, toy, site, method, data.eval_ND, data.eval_feats_NK, wall)


def evaluate(
    dictionary: Decomposition | Tensor,
    toy: str | Toy,
    site: str,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_eval: int = N_EVAL,
    encoder: Callable[[Tensor], Tensor] | None = None,
    decoder_bias: Tensor | None = None,
) -> dict[str, float | int | None]:
    """Score a fitted decomposition, or bare directions ``[m, d]`` (with an optional
    ``encoder`` mapping activations ``[n, d]`` to latents ``[n, m]``), on ``site`` of
    ``toy`` (a name built with ``params`` and ``seed``, or a built toy). Returns the metrics
    dict a suite run records (mcc, mcc_strict, ..., fvu, l0, ``*_chance``)."""
    method = as_method(dictionary, encoder, decoder_bias)
    built = toy_of(toy, params, seed)
    return score_on_site(method, built, site, seed, n_eval).metrics


def suite_of(suite: str | Path | Mapping[str, Any] | None) -> tuple[Any, str]:
    from decompbench.bench.suite import BUILTIN_SUITES, Suite, load_suite, parse_suite

    if suite is None or (suite in BUILTIN_SUITES and not Path(str(suite)).exists()):
        return load_suite(None, str(suite or "default"))
    if isinstance(suite, str | Path):
        return load_suite(Path(suite))
    if isinstance(suite, Suite):
        return suite, yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
    data = dict(suite)
    return parse_suite(data, "<suite dict>"), yaml.safe_dump(data, sort_keys=False)


def run_suite(
    suite: str | Path | Mapping[str, Any] | None,
    out: str | Path,
    *,
    plugins: Iterable[str] = (),
    seeds: list[int] | None = None,
    jobs: int | None = 1,
    executor: str = "local",
    force: bool = False,
    yes: bool = False,
    quiet: bool = True,
    report: bool = True,
) -> list[Record]:
    """Run a suite (a YAML path, a dict in the suite-file layout, a ``Suite``, a built-in
    suite's name or ``None`` for the default one) into ``out`` as ``decompbench run`` does, writing
    ``results.jsonl``, ``stance.json`` and (with ``report``) ``report.html``. Returns every
    record of the suite."""
    from decompbench.bench import runner
    from decompbench.bench.suite import with_seeds
    from decompbench.bench.verdict import verdict, write_stance
    from decompbench.plugins import load_plugins

    if executor not in ("local", "ray"):
        raise UserError(f"executor must be 'local' or 'ray', got {executor!r}")
    load_plugins(plugins)
    parsed, text = suite_of(suite)
    if seeds is not None:
        parsed = with_seeds(parsed, seeds)
    out = Path(out)
    builtin = suite is None or (isinstance(suite, str) and not Path(suite).exists())
    summary = runner.run_suite(parsed, text, out, quiet=quiet, force=force, yes=yes or builtin,
                               jobs=jobs, executor=executor)  # type: ignore[arg-type]  # fmt: skip
    write_stance(out, verdict(summary.records))
    if report:
        from decompbench.bench.report import write_report

        write_report(out, jobs=1)
    return summary.records
