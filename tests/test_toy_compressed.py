"""`compressed`: the residual MLP computing y = x + ReLU(x) for more features than neurons."""

from __future__ import annotations

import pytest
import torch

from decompbench.toys import trained
from decompbench.toys.base import build_toy, downstream_site
from decompbench.toys.compressed import Compressed

# 20 features, 10 neurons, residual 200: trains in about a second; at seed 0 one feature's
# ReLU is not attributable at mlp_hidden (exercises the exclusion rule).
TINY = {"n_features": 20, "d_resid": 200, "d_mlp": 10, "feature_prob": 0.05,
        "steps": 400, "batch_size": 512}  # fmt: skip


pytestmark = pytest.mark.usefixtures("toy_cache")


@pytest.fixture(scope="module")
def toy() -> Compressed:
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    built = build_toy("compressed", TINY, seed=0)
    assert isinstance(built, Compressed)
    return built


def single_rows(x_NF: torch.Tensor, i: int, sign: int = 1) -> torch.Tensor:
    return ((x_NF != 0).sum(dim=1) == 1) & (sign * x_NF[:, i] > 0)


def test_fast_training_path_is_the_literal_network(toy: Compressed) -> None:
    x = toy.sample(300, seed=1).inputs
    assert torch.allclose(toy.net.folded(x), toy(x), atol=1e-5)


def test_inputs_fire_at_the_probability_with_uniform_signed_values(toy: Compressed) -> None:
    x = toy.sample(20000, seed=2).inputs
    rate = (x != 0).float().mean(dim=0)
    assert (rate - 0.05).abs().max() < 0.008  # > 5 binomial standard deviations
    assert x.abs().max() <= 1
    assert abs(float((x > 0).sum() / (x != 0).sum()) - 0.5) < 0.02


def test_mlp_in_truth_is_the_embedding_and_reconstructs_the_residual(toy: Compressed) -> None:
    b = toy.sample(1000, seed=3)
    gt = toy.ground_truth("mlp_in")
    assert gt.directions_KD.shape == (20, 200) and len(gt.names) == 20 and all(gt.is_model)
    r = toy.acts("mlp_in", b.inputs)
    assert torch.allclose(b.features["mlp_in"] @ gt.directions_KD, r, atol=1e-5)


def test_ablating_a_feature_at_mlp_in_removes_its_target_from_its_output(toy: Compressed) -> None:
    """All samples: removing x_i W_E[i] moves out_i by about -(x_i + ReLU(x_i)), others less."""
    b = toy.sample(20000, seed=4)
    x, gt, ds = b.inputs, toy.ground_truth("mlp_in"), toy.downstream("mlp_in")
    r = toy.acts("mlp_in", x)
    out = ds(r)
    for i in range(20):
        rows = x[:, i] != 0
        delta = ds(r[rows] - x[rows, i : i + 1] * gt.directions_KD[i]) - out[rows]
        target = x[rows, i] + torch.relu(x[rows, i])
        err = (delta[:, i] + target).pow(2).mean() / target.pow(2).mean()
        assert err < 0.15, f"x{i}: relative error {err:.2f}"
        others = torch.cat([delta[:, :i], delta[:, i + 1 :]], dim=1)
        assert others.abs().mean() < 0.1 * delta[:, i].abs().mean()


def test_mlp_hidden_truth_is_exact_on_single_positive_features(toy: Compressed) -> None:
    b = toy.sample(20000, seed=5)
    gt = toy.ground_truth("mlp_hidden")
    h = toy.acts("mlp_hidden", b.inputs)
    for k, i in enumerate(toy.kept.tolist()):
        rows = single_rows(b.inputs, i)
        recon = b.features["mlp_hidden"][rows] @ gt.directions_KD
        assert torch.allclose(recon, h[rows], atol=1e-5)
        assert gt.names[k] == f"relu(x{i})"


def test_ablating_relu_direction_at_mlp_hidden_hurts_exactly_its_own_target(
    toy: Compressed,
) -> None:
    """Feature i alone, positive: removing a_i u_i zeroes the MLP; out_i loses the ReLU part."""
    b = toy.sample(40000, seed=6)
    x, gt, ds = b.inputs, toy.ground_truth("mlp_hidden"), toy.downstream("mlp_hidden")
    h, r = toy.acts("mlp_hidden", x), toy.acts("mlp_in", x)
    assert torch.allclose(ds(h) + r @ toy.net.embed_FD.T, toy(x), atol=1e-5)  # MLP path + skip
    y = x + torch.relu(x)
    for k, i in enumerate(toy.kept.tolist()):
        rows = single_rows(x, i)
        ablated = h[rows] - b.features["mlp_hidden"][rows, k : k + 1] * gt.directions_KD[k]
        assert ablated.abs().max() < 1e-5
        out, out_abl = toy(x[rows]), toy(x[rows]) - ds(h[rows]) + ds(ablated)
        err, err_abl = (out[:, i] - y[rows, i]).pow(2), (out_abl[:, i] - y[rows, i]).pow(2)
        assert err_abl.mean() > 1.5 * err.mean()
        drop = out - out_abl
        other = torch.cat([drop[:, :i], drop[:, i + 1 :]], dim=1).abs().max(dim=1).values
        assert (drop[:, i] > other).all()


def test_unattributable_features_are_excluded_from_mlp_hidden(toy: Compressed) -> None:
    excluded = sorted(set(range(20)) - set(toy.kept.tolist()))
    assert excluded  # this tiny seed has one
    with torch.no_grad():
        rho = toy.net.hidden(toy.net.resid(torch.eye(20)))
        contrib = toy.net.mlp_path(rho)
    for i in excluded:
        others = torch.cat([contrib[i, :i], contrib[i, i + 1 :]]).abs().max()
        assert contrib[i, i] <= others
    assert toy.sample(5, seed=0).features["mlp_hidden"].shape == (5, 20 - len(excluded))


def test_second_build_comes_from_the_cache(
    toy: Compressed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trained, "fit", None)
    again = build_toy("compressed", TINY, seed=0)
    assert again.info.from_cache
    for a, b in zip(toy.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_must_beat_the_one_neuron_per_feature_mlp(toy: Compressed) -> None:
    assert toy.target_loss < toy.naive_loss
    with pytest.raises(trained.TrainingTargetMissed, match="one-neuron-per-feature"):
        build_toy("compressed", {**TINY, "steps": 1}, seed=0)


@pytest.mark.slow
def test_defaults_keep_every_feature() -> None:
    big = build_toy("compressed", {}, seed=0)
    assert big.kept.numel() == 100 and big.target_loss < 0.6 * big.naive_loss


def test_next_layer_is_the_mlp_write_and_output_adds_the_skip(toy: Compressed) -> None:
    x = toy.sample(500, seed=7).inputs
    r, h, E = toy.acts("mlp_in", x), toy.acts("mlp_hidden", x), toy.net.embed_FD
    write = downstream_site(toy, "mlp_in", r).next_output(r)
    assert torch.allclose(write, downstream_site(toy, "mlp_hidden", h).next_output(h), atol=1e-6)
    assert torch.allclose(toy.downstream("mlp_in")(r), (r + write) @ E.T, atol=1e-5)
