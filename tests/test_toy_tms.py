"""`tms`: the trained toy model of superposition, its causal ground truth, and the shared
trained-toy machinery (cache, target check) of `toys/trained.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys import trained
from decompbench.toys.base import build_toy, downstream_site
from decompbench.toys.tms import MIN_NORM, TMSParams

FAST = {"steps": 1000, "batch_size": 256}  # reaches the target on seeds 0-2 in < 0.5 s


pytestmark = pytest.mark.usefixtures("toy_cache")


def single_feature_rows(x_NF: torch.Tensor, i: int) -> torch.Tensor:
    return ((x_NF > 0).sum(dim=1) == 1) & (x_NF[:, i] > 0)


@pytest.mark.parametrize("site", ["hidden", "identity"])
def test_features_times_directions_are_the_activations(site: str) -> None:
    toy = build_toy("tms", {**FAST, "identity": True}, seed=0)
    b = toy.sample(2000, seed=1)
    gt = toy.ground_truth(site)
    assert gt.names == ("f0", "f1", "f2", "f3", "f4") and all(gt.is_model)
    assert torch.allclose(b.features[site] @ gt.directions_KD, toy.acts(site, b.inputs), atol=1e-5)


def test_ablating_a_feature_removes_its_own_output() -> None:
    """Feature i alone: removing a_i u_i leaves h = 0; output i loses about x_i, the rest little."""
    toy = build_toy("tms", FAST, seed=0)
    b = toy.sample(40000, seed=2)
    gt, ds = toy.ground_truth("hidden"), toy.downstream("hidden")
    h = toy.acts("hidden", b.inputs)
    for i in range(5):
        rows = single_feature_rows(b.inputs, i)
        a = b.features["hidden"][rows, i : i + 1]
        ablated = ds(h[rows] - a * gt.directions_KD[i])
        assert torch.allclose(ablated, torch.relu(toy.net.b_F).expand_as(ablated), atol=1e-6)
        drop = ds(h[rows]) - ablated
        own = drop[:, i].mean() / b.inputs[rows, i].mean()
        others = torch.cat([drop[:, :i], drop[:, i + 1 :]], dim=1).abs().mean()
        assert 0.8 < own < 1.2, f"f{i}: output moves {own:.2f} x the feature"
        assert others < 0.1 * drop[:, i].mean()


def test_moving_along_a_feature_moves_its_output_by_the_column_norm() -> None:
    toy = build_toy("tms", FAST, seed=0)
    b = toy.sample(40000, seed=3)
    gt, ds = toy.ground_truth("hidden"), toy.downstream("hidden")
    h = toy.acts("hidden", b.inputs)
    norms = toy.net.W_HF.norm(dim=0)
    for i in range(5):
        rows = single_feature_rows(b.inputs, i) & (b.inputs[:, i] > 0.5)  # past the threshold
        delta = ds(h[rows] + 0.1 * gt.directions_KD[i]) - ds(h[rows])
        assert torch.allclose(delta[:, i], 0.1 * norms[i].expand(int(rows.sum())), atol=1e-5)


def test_identity_layer_is_a_copy_and_changes_no_training() -> None:
    plain = build_toy("tms", FAST, seed=0)
    ident = build_toy("tms", {**FAST, "identity": True}, seed=0)
    assert plain.sites == ("hidden",) and ident.sites == ("hidden", "identity")
    assert torch.allclose(plain.net.W_HF, ident.net.W_HF)
    x = ident.sample(500, seed=4).inputs
    h = ident.acts("hidden", x)
    assert torch.equal(h, ident.acts("identity", x))
    out = ident(x)
    assert torch.allclose(ident.downstream("hidden")(h), out)
    assert torch.allclose(ident.downstream("identity")(h), out)


def test_sampled_features_fire_at_the_feature_probability() -> None:
    toy = build_toy("tms", FAST, seed=0)
    x = toy.sample(20000, seed=5).inputs
    rate = (x > 0).float().mean(dim=0)
    assert (rate - 0.05).abs().max() < 0.008  # > 5 binomial standard deviations
    assert x.min() >= 0 and x.max() <= 1
    assert abs(float(x[x > 0].mean()) - 0.5) < 0.02


def test_loss_bound_is_the_no_superposition_loss_plus_slack() -> None:
    toy = build_toy("tms", FAST, seed=0)
    triv = 0.05 / 3 - 0.05**2 / 4
    nosup = 3 / 5 * triv
    assert toy.loss_bound() == pytest.approx(nosup + 0.05 * (triv - nosup))
    assert toy.target_loss < toy.loss_bound() / 4


def test_an_unrepresented_feature_is_excluded() -> None:
    """At p = 0.3 a 5-in-2 TMS keeps two antipodal pairs and drops the fifth feature."""
    toy = build_toy("tms", {"feature_prob": 0.3, "steps": 1500, "batch_size": 512}, seed=0)
    norms = toy.net.W_HF.norm(dim=0)
    kept = toy.kept.tolist()
    assert 0 < len(kept) < 5
    dropped = [i for i in range(5) if i not in kept]
    assert (norms[dropped] < MIN_NORM).all() and (norms[kept] > 0.9).all()
    gt = toy.ground_truth("hidden")
    assert gt.names == tuple(f"f{i}" for i in kept)
    assert toy.sample(10, seed=0).features["hidden"].shape == (10, len(kept))


def test_second_build_loads_identical_weights_without_training(
    monkeypatch: pytest.MonkeyPatch, toy_cache: Path
) -> None:
    params = {**FAST, "n_features": 6}
    first = build_toy("tms", params, seed=7)
    assert not first.info.from_cache

    def no_training(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(trained, "fit", no_training)
    second = build_toy("tms", params, seed=7)
    assert second.info.from_cache and second.info.final_loss == first.info.final_loss
    for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.ground_truth("hidden").directions_KD,
                       second.ground_truth("hidden").directions_KD)  # fmt: skip
    stem = trained.cache_stem("tms", TMSParams(**params), 7)
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["params"]["n_features"] == 6 and meta["seed"] == 7
    assert not list((toy_cache / "toys").glob(".*.tmp"))  # no temporary left behind


def test_unreadable_cache_entry_is_retrained() -> None:
    params = {**FAST, "n_features": 7}
    first = build_toy("tms", params, seed=0)
    stem = trained.cache_stem("tms", TMSParams(**params), 0)
    stem.with_suffix(".safetensors").write_bytes(b"not a tensor file")
    again = build_toy("tms", params, seed=0)
    assert not again.info.from_cache
    assert torch.equal(first.net.W_HF, again.net.W_HF)  # training is deterministic


def test_cache_key_covers_parameters_and_seed() -> None:
    a = trained.cache_stem("tms", TMSParams(), 0)
    assert a == trained.cache_stem("tms", TMSParams(), 0)
    assert a != trained.cache_stem("tms", TMSParams(), 1)
    assert a != trained.cache_stem("tms", TMSParams(steps=10), 0)
    assert a != trained.cache_stem("composed-tms", TMSParams(), 0)


@pytest.mark.parametrize(("seed", "fragment"), [(0, "single-feature"), (1, "evaluation loss")])
def test_a_missed_target_raises_a_one_line_user_error(
    seed: int, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step of training: both checks catch it, also when the weights come from the cache."""
    params = {"steps": 1, "batch_size": 256}
    with pytest.raises(trained.TrainingTargetMissed, match=fragment) as info:
        build_toy("tms", params, seed=seed)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    monkeypatch.setattr(trained, "fit", None)  # a retrain would crash differently
    with pytest.raises(trained.TrainingTargetMissed, match=fragment):
        build_toy("tms", params, seed=seed)


def test_cosine_schedule_runs_from_lr_to_zero() -> None:
    cfg = trained.ToyTrainParams(steps=11, lr=1.0, lr_schedule="cosine")
    assert trained.lr_at(0, cfg) == 1.0 and trained.lr_at(5, cfg) == pytest.approx(0.5)
    assert trained.lr_at(10, cfg) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_reference_40_in_10_keeps_every_feature_and_reads_each_back() -> None:
    toy = build_toy("tms", {"n_features": 40, "d_hidden": 10}, seed=0)
    assert toy.kept.numel() == 40 and toy.target_loss < 0.5 * toy.loss_bound()
    b = toy.sample(200000, seed=1)
    h, ds, gt = toy.acts("hidden", b.inputs), toy.downstream("hidden"), toy.ground_truth("hidden")
    for i in range(40):
        rows = single_feature_rows(b.inputs, i)
        a = b.features["hidden"][rows, i : i + 1]
        drop = ds(h[rows]) - ds(h[rows] - a * gt.directions_KD[i])
        # b is about -0.33 here: magnitudes below ~0.26 are filtered, so ~0.68 x on average
        assert 0.5 < drop[:, i].mean() / b.inputs[rows, i].mean() < 1.2
        others = torch.cat([drop[:, :i], drop[:, i + 1 :]], dim=1).abs().mean()
        assert others < 0.1 * drop[:, i].mean()


def test_next_layer_is_the_identity_layer_when_there_is_one() -> None:
    ident = build_toy("tms", {**FAST, "identity": True}, seed=0)
    h = ident.acts("hidden", ident.sample(100, seed=0).inputs)
    view = downstream_site(ident, "hidden", h)
    assert torch.equal(view.next_output(h), h)
    assert torch.allclose(view.output(h), ident.downstream("hidden")(h))
    assert torch.allclose(ident.next_layer("identity")(h), ident.downstream("identity")(h))
