"""Hand-checked values for every metric."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench import metrics as M
from decompbench.metrics.recovery import abs_cos

EYE4 = torch.eye(4)


def test_perfect_dictionary_scores_one() -> None:
    perm = EYE4[[2, 0, 3, 1]] * torch.tensor([[1.0], [-1.0], [1.0], [1.0]])
    for fn in (M.mmcs, M.mcc, M.mcc_strict, M.recall, M.precision):
        assert fn(EYE4, perm) == pytest.approx(1.0)


def test_rotated_by_45_degrees_gives_cos_one_over_sqrt2() -> None:
    G = EYE4[:2]
    D = torch.tensor([[1.0, 1.0, 0, 0], [1.0, -1.0, 0, 0]]) / math.sqrt(2)
    assert M.mmcs(G, D) == pytest.approx(1 / math.sqrt(2))
    assert M.mcc(G, D) == pytest.approx(1 / math.sqrt(2))
    assert M.recall(G, D) == 0.0 and M.precision(G, D) == 0.0


def test_mcc_is_one_to_one_while_mmcs_is_not() -> None:
    # Both true features' best match is the same latent; one-to-one must use the other.
    G = EYE4[:2]
    D = torch.tensor([[1.0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    assert M.mmcs(G, D) == pytest.approx(1 / math.sqrt(2))
    assert M.mcc(G, D) == pytest.approx((1 / math.sqrt(2) + 0.0) / 2)


def test_strict_mcc_charges_for_extra_latents() -> None:
    G = EYE4[:2]
    D = EYE4  # holds the truth plus two unrelated latents
    assert M.mcc(G, D) == 1.0
    assert M.mcc_strict(G, D) == pytest.approx(2 / 4)
    assert M.precision(G, D) == pytest.approx(2 / 4)


def test_union_of_factored_and_composed_scores_one_plain_but_a_third_strict() -> None:
    """DESIGN.md §4: a union of both twins' truths scores plain 1.00, strict 0.33."""
    u = torch.eye(8)
    factored = u
    composed = torch.stack([(u[i] + u[4 + j]) / math.sqrt(2) for i in range(4) for j in range(4)])
    union = torch.cat([factored, composed])
    for truth in (factored, composed):
        assert M.mcc(truth, union) == pytest.approx(1.0)
    assert M.mcc_strict(factored, union) == pytest.approx(8 / 24)
    assert M.mcc_strict(composed, union) == pytest.approx(16 / 24)


def test_composition_counts_sums_across_groups_only() -> None:
    G = EYE4
    groups = [0, 0, 1, 1]
    across = (EYE4[0] + EYE4[2]) / math.sqrt(2)
    within = (EYE4[0] + EYE4[1]) / math.sqrt(2)
    assert M.composition(G, groups, across[None]) == 1.0
    assert M.composition(G, groups, within[None]) == 0.0
    assert M.composition(G, groups, EYE4[:1]) == 0.0
    assert M.composition(G, groups, torch.stack([across, EYE4[1]])) == 0.5
    assert M.composition(G, groups, -across[None]) == 1.0  # sign of a direction is arbitrary


def test_mcc_act_is_invariant_to_scale_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.rand(500, 3, generator=g)
    Z = torch.cat([3 * A[:, [2]], A[:, [0]], -0.5 * A[:, [1]], torch.zeros(500, 1)], dim=1)
    assert M.mcc_act(A, Z) == pytest.approx(1.0)
    assert M.mcc_act(A, torch.zeros(500, 2)) == 0.0


def test_reconstruction_scores() -> None:
    X = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert M.fvu(X, X) == 0.0
    assert M.fvu(X, X.mean(dim=0).expand_as(X)) == pytest.approx(1.0)
    Z = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.5, 0.0]])
    assert M.l0(Z) == pytest.approx(1.5)
    assert M.dead_frac(Z) == pytest.approx(1 / 3)
    assert M.n_alive(Z) == 2


def test_random_dictionary_lies_in_the_span() -> None:
    X = torch.randn(100, 3) @ torch.eye(6)[:3]  # data in the first 3 of 6 dims
    basis = M.span_basis(X)
    assert basis.shape[0] == 3
    D = M.random_dictionary(20, basis, torch.Generator().manual_seed(0))
    assert torch.allclose(D.norm(dim=1), torch.ones(20, dtype=D.dtype))
    assert D[:, 3:].abs().max() < 1e-12


def test_chance_level_on_4x4_twins_matches_design_note() -> None:
    """DESIGN.md §4: random directions reach plain MCC about 0.65 on 4x4 twins in 16 dims."""
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    G = q[:8].double()
    g = torch.Generator().manual_seed(0)
    scores = [M.mcc(G, M.random_dictionary(16, G, g)) for _ in range(50)]
    assert 0.55 < sum(scores) / len(scores) < 0.75


def test_abs_cos_rejects_mismatched_dims() -> None:
    with pytest.raises(AssertionError):
        abs_cos(torch.eye(3), torch.eye(4))


def test_chance_scores_are_kept_by_content_and_equal_a_fresh_computation() -> None:
    from decompbench.bench import evaluate
    from decompbench.toys.base import GroundTruth

    g = torch.Generator().manual_seed(0)
    G_KD = torch.linalg.qr(torch.randn(6, 6, generator=g))[0][:3]
    gt = GroundTruth(G_KD, ("a", "b", "c"), (True, True, True))
    A_NK = torch.rand(200, 3, generator=g)
    X_ND = A_NK @ G_KD
    truth = evaluate.truth_at(gt, A_NK)
    signs = torch.ones(4, dtype=torch.int64)
    evaluate.CHANCE_KEPT.clear()
    first = evaluate.chance_scores(gt, truth, A_NK, X_ND, signs, seed=0)
    assert first == evaluate.chance_scores_afresh(gt, truth, A_NK, X_ND, signs, seed=0)
    first["mcc_chance"] = -1.0  # the caller's copy, not the kept one
    again = evaluate.chance_scores(gt, truth, A_NK, X_ND.clone(), signs, seed=0)  # equal content
    assert len(evaluate.CHANCE_KEPT) == 1 and again["mcc_chance"] != -1.0
    other = evaluate.chance_scores(gt, truth, A_NK, 2 * X_ND, signs, seed=0)  # other data
    assert len(evaluate.CHANCE_KEPT) == 2 and other == evaluate.chance_scores_afresh(
        gt, truth, A_NK, 2 * X_ND, signs, seed=0
    )
