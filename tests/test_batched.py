"""Batched training of tiny SAEs equals training each alone (methods/batched.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from decompbench.errors import TrainingFailed, UserError
from decompbench.methods import batched
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.sae import SAEMethod
from decompbench.progress import reporting
from decompbench.toys.base import ActivationSite

D, WIDTH = 6, 8
BASE = {"width": WIDTH, "steps": 150, "batch_size": 32, "dead_after_steps": 10}


def sparse_data(seed: int, n: int = 512, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, d, generator=g)) * (torch.rand(n, d, generator=g) < 0.3)


def fit_alone(name: str, params: dict[str, Any], site: ActivationSite, seed: int) -> SAEMethod:
    method = build_method(name, params)
    method.fit(site, seed)
    assert isinstance(method, SAEMethod)
    return method


def assert_same_fit(alone: SAEMethod, together: Decomposition | TrainingFailed) -> None:
    assert isinstance(together, SAEMethod)
    for key, value in alone.sae.state_dict().items():
        torch.testing.assert_close(together.sae.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(together.log.losses), torch.tensor(alone.log.losses), rtol=1e-5, atol=1e-6
    )
    assert together.log.n_dead == alone.log.n_dead
    assert together.log.n_dense == alone.log.n_dense


# (method, extra shared params, per-model parameter and values)
# fmt: off
CASES = [
    ("sae-relu", {}, "l1", [0.0, 0.05, 0.3]),
    ("sae-relu", {"normalize": True, "init_b_dec": "geometric_median",
                  "sparsity_warmup_frac": 0.3}, "l1", [0.02, 0.2]),
    ("sae-topk", {}, "k", [1, 3, 3]),
    ("sae-topk", {"init_b_dec": "mean", "aux_k": 2, "aux_coef": 0.5}, "k", [2]),
    ("sae-topk", {"aux_k": 1, "aux_coef": 0.5, "dead_after_steps": 3}, "k", [1, 2]),
]
# fmt: on


@pytest.mark.parametrize(("name", "extra", "key", "values"), CASES)
def test_batch_equals_sequential(
    name: str, extra: dict[str, Any], key: str, values: list[Any]
) -> None:
    """Several seeds x sparsity settings in one batch; each equals its own ``fit``."""
    site = ActivationSite("x", sparse_data(0))
    configs = [(seed, v) for seed in (0, 1) for v in values]
    params = [{**BASE, **extra, key: v} for _, v in configs]
    seeds = [seed for seed, _ in configs]
    together = batched.fit_many([build_method(name, p) for p in params], site, seeds)
    for p, seed, fitted in zip(params, seeds, together, strict=True):
        assert_same_fit(fit_alone(name, p, site, seed), fitted)


def test_topk_batch_had_dead_latents() -> None:
    """The TopK cases above exercise the auxiliary-k loss (dead latents appear)."""
    site = ActivationSite("x", sparse_data(0))
    alone = fit_alone("sae-topk", {**BASE, "k": 1}, site, 0)
    assert max(alone.log.n_dead) > 0


def test_models_on_different_data() -> None:
    """Each model may train on its own site (same d); rows come from its own data."""
    sites = [ActivationSite("a", sparse_data(1)), ActivationSite("b", sparse_data(2, n=300))]
    params = {**BASE, "k": 2}
    methods = [build_method("sae-topk", params) for _ in sites]
    together = batched.fit_many(methods, sites, [3, 3])
    for site, fitted in zip(sites, together, strict=True):
        assert_same_fit(fit_alone("sae-topk", params, site, 3), fitted)


def test_fitted_methods_encode_like_sequential() -> None:
    site = ActivationSite("x", sparse_data(0))
    params = {**BASE, "l1": 0.1}
    (fitted,) = batched.fit_many([build_method("sae-relu", params)], site, [4])
    alone = fit_alone("sae-relu", params, site, 4)
    assert isinstance(fitted, SAEMethod)
    x = sparse_data(9, n=64)
    torch.testing.assert_close(fitted.encode(x), alone.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fitted.decode(fitted.encode(x)), alone.decode(alone.encode(x)))
    assert fitted.directions().shape == (WIDTH, D)
    assert not fitted.sae.training


def test_diverging_model_fails_alone() -> None:
    """A model whose loss turns non-finite gets the sequential error; the rest train on."""
    bad = sparse_data(3)
    bad[100:] = float("nan")
    sites = [ActivationSite("good", sparse_data(3)), ActivationSite("bad", bad)]
    params = {**BASE, "l1": 0.1}
    together = batched.fit_many([build_method("sae-relu", params) for _ in sites], sites, [0, 0])
    assert_same_fit(fit_alone("sae-relu", params, sites[0], 0), together[0])
    with pytest.raises(TrainingFailed) as alone_err:
        fit_alone("sae-relu", params, sites[1], 0)
    assert isinstance(together[1], TrainingFailed)
    assert str(together[1]) == str(alone_err.value)


@pytest.mark.parametrize(
    ("row", "k"),
    [([3.0, 2.0, 2.0, 1.0], 2), ([5.0, 5.0, 1.0, 0.0], 1), ([0.0, 0.5, 0.0, 0.0], 3),
     ([0.0, 0.0, 0.0, 0.0], 2), ([1.0, 2.0, 3.0, 4.0], 4), ([4.0, 4.0, 4.0, 4.0], 3)],
)  # fmt: skip
def test_top_mask_matches_topk_with_ties(row: list[float], k: int) -> None:
    """Hand-made rows, exact ties included: the kept latents are those topk keeps."""
    r = torch.tensor(row)
    mask = batched.top_mask(r[None, None], torch.tensor([k]), r[None, None])[0, 0]
    vals, idx = r.topk(k)
    expected = torch.zeros_like(r).scatter(0, idx, vals)
    assert torch.equal(r * mask, expected)


@pytest.mark.parametrize(
    ("src", "live", "k"),
    [([-1.0, 3.0, 2.0, 2.0], [True, False, True, True], 1),
     ([-1.0, 3.0, 2.0, 2.0], [True, False, True, True], 2),
     ([-1.0, -2.0, 0.5, 3.0], [True, True, False, False], 1),
     ([4.0, 4.0, 4.0, 1.0], [True, True, True, True], 2)],
)  # fmt: skip
def test_top_mask_on_live_latents(src: list[float], live: list[bool], k: int) -> None:
    """The auxiliary loss's selection: top k of the live (dead) latents, then ReLU."""
    s, live_M = torch.tensor(src), torch.tensor(live)
    r = torch.relu(s) * live_M
    mask = batched.top_mask(r[None, None], torch.tensor([k]), s[None, None], live_M[None])
    vals, idx = torch.where(live_M, s, float("-inf")).topk(min(k, int(live_M.sum())))
    expected = torch.zeros_like(s).scatter(0, idx, torch.relu(vals))
    assert torch.equal(r * mask[0, 0], expected)


def test_top_mask_per_model_k() -> None:
    r_GBM = torch.tensor([[[1.0, 4.0, 3.0, 2.0]], [[1.0, 4.0, 3.0, 2.0]]])
    mask = batched.top_mask(r_GBM, torch.tensor([1, 3]), r_GBM)
    assert mask.tolist() == [[[0.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 1.0]]]


def test_reports_progress() -> None:
    events: list[str] = []

    class Rec:
        def start(self, label: str, total: int) -> None:
            events.append(f"start {label} {total}")

        def advance(self, n: int, info: str = "") -> None:
            events.append("advance")

        def finish(self) -> None:
            events.append("finish")

    with reporting(Rec()):
        method = build_method("sae-relu", {**BASE, "steps": 10})
        batched.fit_many([method], ActivationSite("x", sparse_data(0)), [0])
    assert events == ["start 1 x sae-relu @ x (batched) 10", *["advance"] * 10, "finish"]


# --- refusals -------------------------------------------------------------------------


def site_d(d: int) -> ActivationSite:
    return ActivationSite("x", sparse_data(0, n=64, d=d))


@pytest.mark.parametrize(
    ("methods", "match"),
    [
        ([("pca", {})], "supports sae-relu, sae-topk only, not 'pca'"),
        ([("sae-jumprelu", {})], "not 'sae-jumprelu'"),
        ([("sae-relu", {}), ("sae-topk", {})], "differ in method"),
        ([("sae-relu", {"width": 8}), ("sae-relu", {"width": 9})], "differ in 'width'"),
        ([("sae-relu", {"steps": 5}), ("sae-relu", {"steps": 6})], "differ in 'steps'"),
        ([("sae-topk", {"aux_k": 2}), ("sae-topk", {"aux_k": 3})], "differ in 'aux_k'"),
        ([], "at least one model"),
        ([("sae-relu", {"batch_size": 4096, "width": 256})], "takes the fused step alone"),
    ],
)
def test_refuses_what_it_cannot_mirror(
    methods: list[tuple[str, dict[str, Any]]], match: str
) -> None:
    built = [build_method(n, p) for n, p in methods]
    with pytest.raises(UserError, match=match):
        batched.fit_many(built, [site_d(D)] * len(built), list(range(len(built))))


def test_refuses_mismatched_inputs() -> None:
    m = [build_method("sae-relu", {"steps": 5}) for _ in range(2)]
    with pytest.raises(UserError, match="one d"):
        batched.fit_many(m, [site_d(4), site_d(5)], [0, 1])
    with pytest.raises(UserError, match="2 methods, 1 sites and 2 seeds"):
        batched.fit_many(m, [site_d(4)], [0, 1])
    with pytest.raises(UserError, match="no training rows"):
        batched.fit_many(m, ActivationSite("x", torch.zeros(0, 4)), [0, 1])


def test_refuses_unmirrored_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter the batched path does not know must stay at its default."""
    monkeypatch.setattr(batched, "MIRRORED", batched.MIRRORED - {"normalize"})
    plain = build_method("sae-relu", {"steps": 5})
    assert batched.check_mirrored(plain).per_model == "l1"
    with pytest.raises(UserError, match="does not mirror 'sae-relu' parameter 'normalize'"):
        batched.check_mirrored(build_method("sae-relu", {"steps": 5, "normalize": True}))


# --- suite hook -----------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    seed: int
    method: Spec


def test_group_key_and_plan_groups() -> None:
    runs = [
        Run(0, Spec("sae-relu", {"l1": 0.03})),
        Run(0, Spec("pca")),
        Run(1, Spec("sae-relu", {"l1": 0.3})),
        Run(0, Spec("sae-relu", {"l1": 0.3, "width": 16})),
        Run(0, Spec("sae-topk", {"k": 2})),
        Run(0, Spec("sae-topk", {"k": 4})),
        Run(0, Spec("sae-jumprelu")),
    ]
    assert batched.group_key(runs[1]) is None and batched.group_key(runs[6]) is None
    assert batched.group_key(runs[0]) == batched.group_key(runs[2])
    assert batched.group_key(runs[0]) != batched.group_key(runs[3])
    assert batched.plan_groups(runs) == [[0, 2], [1], [3], [4, 5], [6]]
    assert batched.plan_groups(runs, max_size=1) == [[0], [1], [2], [3], [4], [5], [6]]
    by_seed = batched.plan_groups(runs, data_key=lambda r: r.seed)
    assert by_seed == [[0], [1], [2], [3], [4, 5], [6]]


def test_fit_group_equals_sequential() -> None:
    site = ActivationSite("x", sparse_data(0))
    runs = [Run(0, Spec("sae-topk", {**BASE, "k": 2})), Run(1, Spec("sae-topk", {**BASE, "k": 3}))]
    fitted = batched.fit_group(runs, [site, site])
    for run, f in zip(runs, fitted, strict=True):
        assert_same_fit(fit_alone("sae-topk", run.method.params, site, run.seed), f)
