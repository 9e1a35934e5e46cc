"""The polysemantic hierarchy: the same activations and computation as `hierarchy`, the
ground truth verified causally, and the `weights` baseline defeated (issue 17)."""

from __future__ import annotations

import torch

from decompbench import metrics as M
from decompbench.bench import evaluate
from decompbench.bench.runner import site_data, site_view
from decompbench.methods.base import build_method
from decompbench.toys.base import build_toy

PARAMS = {"d_model": 24}  # 20 features: 4 directions outside their span are data-only


def test_same_activations_and_outputs_as_hierarchy() -> None:
    poly = build_toy("hierarchy-poly", PARAMS, seed=1)
    mono = build_toy("hierarchy", PARAMS, seed=1)
    b = poly.sample(1000, seed=0)
    h = poly.acts("hidden", b.inputs)
    assert torch.equal(h, mono.acts("hidden", mono.sample(1000, seed=0).inputs))
    assert torch.allclose(poly.downstream("hidden")(h), b.features["hidden"], atol=1e-5)
    assert torch.allclose(poly.downstream("hidden")(h), mono.downstream("hidden")(h), atol=1e-5)


def test_every_neuron_reads_several_features() -> None:
    toy = build_toy("hierarchy-poly", PARAMS, seed=1)
    rows = toy.first_linear("hidden")
    dirs = toy.ground_truth("hidden").directions_KD
    cos = (rows / rows.norm(dim=1, keepdim=True)) @ dirs.T
    assert rows.shape[0] == 40 and cos.abs().max() < 0.9


def test_ablating_a_feature_zeroes_exactly_its_own_output() -> None:
    toy = build_toy("hierarchy-poly", PARAMS, seed=1)
    b = toy.sample(500, seed=2)
    h = toy.acts("hidden", b.inputs)
    dirs = toy.ground_truth("hidden").directions_KD
    down = toy.downstream("hidden")
    out = down(h)
    for i in range(dirs.shape[0]):
        a = b.features["hidden"][:, i]
        ablated = down(h - a[:, None] * dirs[i])
        others = [j for j in range(dirs.shape[0]) if j != i]
        assert ablated[:, i].abs().max() < 1e-5
        assert torch.allclose(ablated[:, others], out[:, others], atol=1e-5)


def test_moving_along_a_feature_moves_only_its_output_and_data_only_nothing() -> None:
    toy = build_toy("hierarchy-poly", PARAMS, seed=1)
    b = toy.sample(300, seed=3)
    h = toy.acts("hidden", b.inputs)
    dirs = toy.ground_truth("hidden").directions_KD
    down = toy.downstream("hidden")
    delta = down(h + 0.25 * dirs[5]) - down(h)
    assert torch.allclose(delta[:, 5], torch.full((300,), 0.25), atol=1e-5)
    assert delta[:, [j for j in range(20) if j != 5]].abs().max() < 1e-5
    q_DD, _ = torch.linalg.qr(torch.cat([dirs, torch.randn(24, 24)]).T)
    outside_D = q_DD[:, 20]  # orthogonal to every feature direction
    assert torch.allclose(down(h + 3.0 * outside_D), down(h), atol=1e-5)


def test_the_weights_baseline_scores_at_most_half_strict() -> None:
    """Measured at the default parameters, seeds 0-2: strict 0.33-0.35."""
    for seed in range(3):
        toy = build_toy("hierarchy-poly", {}, seed=seed)
        data = site_data(toy, "hidden", 1024, 1024, seed=seed)
        method = build_method("weights", {})
        method.fit(site_view(toy, data, method), seed=seed)
        truth = evaluate.truth_at(toy.ground_truth("hidden"), data.eval_feats_NK)
        signs = M.signs_of(method.encode(data.eval_ND))
        assert M.mcc_strict(truth, method.directions(), signs) <= 0.5
