"""Hand-checked relatedness and causal-agreement values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decompbench.metrics import causal, relatedness

EYE4 = torch.eye(4)
MIXED = torch.stack(  # every true direction is an exact 2-sparse mix of these
    [EYE4[0] + EYE4[1], EYE4[0] - EYE4[1], EYE4[2] + EYE4[3], EYE4[2] - EYE4[3]]
) / math.sqrt(2)


def test_exact_two_sparse_mix_has_relatedness_two() -> None:
    counts = relatedness.direction_relatedness(EYE4, MIXED)
    assert counts == [2, 2, 2, 2]
    assert relatedness.summarise(counts) == (2.0, 1.0)
    assert relatedness.direction_relatedness(EYE4, EYE4) == [1, 1, 1, 1]


def test_unreachable_feature_counts_as_infinite() -> None:
    counts = relatedness.direction_relatedness(EYE4, EYE4[:2])
    assert counts == [1, 1, None, None]
    median, share = relatedness.summarise(counts)
    assert median is None and share == 0.5


def test_dense_rotation_needs_many_latents() -> None:
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    median, share = relatedness.summarise(relatedness.direction_relatedness(torch.eye(8), q))
    assert median is not None and median > 3 and share < 0.5


def test_activation_relatedness_of_summed_latents() -> None:
    g = torch.Generator().manual_seed(0)
    Z = torch.rand(1000, 3, generator=g)
    A = torch.stack([Z[:, 0], Z[:, 1] + Z[:, 2]], dim=1)
    assert relatedness.activation_relatedness(A, Z) == [1, 2]


def greedy_lstsq_count(y: torch.Tensor, C: torch.Tensor, r2: float) -> int | None:
    """The textbook OMP: pick the column most correlated with the residual, refit by
    least squares on every chosen column, until R^2 >= r2."""
    chosen: list[int] = []
    resid = y
    for n in range(1, C.shape[1] + 1):
        score = (C.T @ resid).abs() / C.norm(dim=0).clamp_min(1e-12)
        score[chosen] = -1.0
        chosen.append(int(score.argmax()))
        coef = torch.linalg.lstsq(C[:, chosen], y[:, None]).solution
        resid = y - (C[:, chosen] @ coef)[:, 0]
        if 1 - float(resid @ resid) / float(y @ y) >= r2 - 1e-9:
            return n
    return None


def test_batched_pursuit_matches_textbook_omp_target_by_target() -> None:
    g = torch.Generator().manual_seed(1)
    C = torch.randn(30, 12, generator=g, dtype=torch.float64)
    C[:, 5] = C[:, 4]  # a duplicated column adds nothing once the other is chosen
    Y = torch.randn(30, 9, generator=g, dtype=torch.float64)
    Y[:, 0] = 0.0  # nothing to explain: 0 terms
    Y[:, 1] = C[:, 2] - 0.5 * C[:, 7]  # exactly 2-sparse
    Y[:, 2] = C[:, 4]
    counts = relatedness.pursuit_counts(Y, C, r2=0.9)
    assert counts[:3] == [0, 2, 1]
    for t in range(1, Y.shape[1]):
        assert counts[t] == greedy_lstsq_count(Y[:, t], C, 0.9), t
    assert counts == [relatedness.pursuit_count(Y[:, t], C, 0.9) for t in range(9)]


def test_rounding_noise_of_a_rank_deficient_set_writes_nothing() -> None:
    """Three float32 columns spanning a plane (c2 = c0/3 + c1/7 up to rounding) cannot
    write the plane's normal, although float32 rounding makes them full rank (smallest
    singular value ~1e-8; a tolerance of 1e-10 counted 3). A vector in the plane: 1 or 2."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        c0, c1 = torch.randn(3, generator=g), torch.randn(3, generator=g)
        C_ND = torch.stack([c0, c1, c0 / 3 + c1 / 7], dim=1)
        assert relatedness.pursuit_count(torch.linalg.cross(c0, c1), C_ND) is None
        assert relatedness.pursuit_count(2 * c0, C_ND) == 1
        assert relatedness.pursuit_count(c0 - c1, C_ND) in (1, 2)


def test_output_fvu_zero_for_exact_and_one_for_mean() -> None:
    f = nn.ReLU()
    X = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.5, 1.0]])
    assert causal.output_fvu(f, X, X) == 0.0
    mean = X.mean(dim=0).expand_as(X)
    assert causal.output_fvu(nn.Identity(), X, mean) == pytest.approx(1.0)


def test_causal_agreement_is_one_for_the_truth_and_low_for_a_wrong_latent() -> None:
    f = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU())
    f[0].weight.data = torch.eye(4)
    A = torch.rand(200, 4, generator=torch.Generator().manual_seed(1))
    X = A @ EYE4  # truth: the axes

    def identity(x: torch.Tensor) -> torch.Tensor:
        return x

    right = [(k, k) for k in range(4)]
    cos, err = causal.causal_agreement(f, X, EYE4, A, right, identity, identity)
    assert cos == pytest.approx(1.0) and err == pytest.approx(0.0)
    wrong = [(k, (k + 1) % 4) for k in range(4)]
    cos, _ = causal.causal_agreement(f, X, EYE4, A, wrong, identity, identity)
    assert cos == pytest.approx(0.0, abs=1e-9)


def test_change_agreement_nan_when_feature_has_no_effect() -> None:
    cos, err = causal.change_agreement(torch.zeros(3, 2), torch.ones(3, 2))
    assert math.isnan(cos) and math.isnan(err)
