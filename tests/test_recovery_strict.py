"""Strict recovery that can reach 1, sign-aware matching, thresholds on dense truths, and
chance as the strongest null (issue 16)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from decompbench import metrics as M
from decompbench.bench import evaluate
from decompbench.toys.base import GroundTruth, build_toy
from tests.conftest import SMALL

N_SAMPLES = 2048


pytestmark = pytest.mark.usefixtures("toy_cache")


@pytest.mark.parametrize(("toy_name", "params"), SMALL, ids=[n for n, _ in SMALL])
def test_exact_model_and_data_only_dictionary_scores_strict_one(
    toy_name: str, params: dict[str, Any]
) -> None:
    """Latents that capture data-only features are not charged: the exact complete
    dictionary scores 1 at every site of every toy; every direction twice does not."""
    toy = build_toy(toy_name, params, 0)
    batch = toy.sample(N_SAMPLES, 1)
    for site in toy.sites:
        exact_and_doubled(toy.ground_truth(site), batch.features[site])


def exact_and_doubled(gt: GroundTruth, A_NK: torch.Tensor) -> None:
    truth = evaluate.truth_at(gt, A_NK)
    exact = M.mcc_strict(truth, gt.directions_KD, truth.sign_K)
    assert exact == pytest.approx(1.0, abs=1e-9)
    twice = torch.cat([gt.directions_KD, gt.directions_KD])
    doubled = M.mcc_strict(truth, twice, torch.cat([truth.sign_K, truth.sign_K]))
    assert doubled <= 0.5 + 1e-9


def test_the_exact_dictionary_is_charged_by_the_all_latents_variant() -> None:
    G = torch.eye(4)
    truth = M.Truth.of(G, torch.ones(4, dtype=torch.int64), torch.tensor([1, 1, 0, 0]))
    assert M.mcc_strict(truth, G, torch.ones(4, dtype=torch.int64)) == pytest.approx(1.0)
    assert M.mcc_strict_all(truth, G, torch.ones(4, dtype=torch.int64)) == pytest.approx(0.5)


def test_a_poor_match_to_a_data_only_feature_is_not_excused() -> None:
    G = torch.eye(3)
    truth = M.Truth.of(G, torch.ones(3, dtype=torch.int64), torch.tensor([1, 1, 0]))
    tilted = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]])  # 0.71 with e3
    assert M.mcc_strict(truth, tilted, torch.ones(3, dtype=torch.int64)) == pytest.approx(2 / 3)


def test_sign_is_not_ignored_for_one_sided_features_and_latents() -> None:
    q = torch.tensor([[1.0, 0.0]])
    truth = M.Truth.of(torch.cat([q, -q]), torch.ones(2, dtype=torch.int64), torch.ones(2))
    one_sided = torch.ones(2, dtype=torch.int64)
    assert M.mcc_strict(truth, torch.cat([q, q]), one_sided) == pytest.approx(0.5)
    assert M.mcc_strict(truth, torch.cat([q, -q]), one_sided) == pytest.approx(1.0)
    # a latent that fires negative along q points along -q
    assert M.mcc(truth, torch.cat([q, q]), torch.tensor([1, -1])) == pytest.approx(1.0)
    # two-sided latents carry no sign: |cos|
    assert M.mcc(truth, torch.cat([q, q]), torch.zeros(2, dtype=torch.int64)) == 1.0


def test_signs_of_activations() -> None:
    A = torch.tensor([[0.0, -1.0, 1.0, 0.0], [2.0, 0.0, -1.0, 0.0], [1.0, -3.0, 0.5, 0.0]])
    assert M.signs_of(A).tolist() == [1, -1, 0, 1]


def test_recall_on_a_dense_truth_needs_more_than_the_neighbours_similarity() -> None:
    """On ``curve`` neighbouring true directions have cos ~0.99: a dictionary of every
    other true direction must not recall them all."""
    toy = build_toy("curve", {}, 0)
    batch = toy.sample(N_SAMPLES, 1)
    gt = toy.ground_truth("hidden")
    truth = evaluate.truth_at(gt, batch.features["hidden"])
    half = gt.directions_KD[::2]
    signs = torch.ones(half.shape[0], dtype=torch.int64)
    assert float(truth.tau_K.min()) > 0.95
    assert M.recall(truth, half, signs) == pytest.approx(0.5, abs=0.02)
    assert M.recall(truth, gt.directions_KD, truth.sign_K) == pytest.approx(1.0)


def composed_site(
    values: list[int],
) -> tuple[GroundTruth, M.Truth, torch.Tensor, torch.Tensor]:
    toy = build_toy("composed", {"values": values, "d_model": 24, "use": "factored"}, 0)
    batch = toy.sample(N_SAMPLES, 1)
    gt, A_NK = toy.ground_truth("hidden"), batch.features["hidden"]
    return gt, evaluate.truth_at(gt, A_NK), A_NK, toy.acts("hidden", batch.inputs)


def test_random_orthonormal_bases_score_at_chance() -> None:
    """The issue's case: orthonormal bases of the span beat random-direction chance; the
    printed chance is now the strongest null, so they no longer look better than chance."""
    gt, truth, A_NK, X_ND = composed_site([3, 5])
    m = 8
    signs = torch.ones(m, dtype=torch.int64)
    chance = evaluate.chance_scores(gt, truth, A_NK, X_ND, signs, seed=0)
    basis = M.span_basis(X_ND)
    g = torch.Generator().manual_seed(123)
    fresh = [M.mcc_strict(truth, M.random_orthonormal(m, basis, g), signs) for _ in range(20)]
    assert sum(fresh) / len(fresh) <= chance["mcc_strict_chance"] + 0.03
    pca = M.mcc_strict(truth, M.pca_dictionary(m, X_ND, basis, g), signs)
    assert pca <= chance["mcc_strict_chance"] + 1e-9


def test_null_dictionaries_lie_in_the_span_with_unit_rows() -> None:
    *_, X_ND = composed_site([3, 3])
    basis = M.span_basis(X_ND)
    g = torch.Generator().manual_seed(0)
    for D in (M.random_orthonormal(13, basis, g), M.pca_dictionary(13, X_ND, basis, g)):
        assert D.shape == (13, X_ND.shape[1])
        assert torch.allclose(D.norm(dim=1), torch.ones(13, dtype=D.dtype))
        inside = D @ basis.T @ basis
        assert torch.allclose(inside, D, atol=1e-6)  # the data are float32
    r = basis.shape[0]
    first = M.random_orthonormal(r, basis, g)  # one whole basis of the span
    assert torch.allclose(first @ first.T, torch.eye(r, dtype=first.dtype), atol=1e-9)
    assert math.isclose(float(M.random_orthonormal(0, basis, g).numel()), 0.0)
