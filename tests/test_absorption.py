"""The absorption rate, checked by hand on tiny tables."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench.metrics.absorption import absorption_rate, absorption_rates, match_latents


def test_rate_counts_silent_parent_latent_among_child_samples() -> None:
    child = torch.tensor([True, True, True, True, False, False])
    parent_latent = torch.tensor([True, False, False, True, False, True])
    # 4 samples with a child active; on 2 of them (rows 1, 2) the parent latent is silent.
    assert absorption_rate(child, parent_latent) == pytest.approx(0.5)
    assert math.isnan(absorption_rate(torch.zeros(3, dtype=torch.bool), torch.ones(3).bool()))


def test_rates_per_parent_from_activation_tables() -> None:
    # Features: 0 = parent, 1 and 2 its children, 3 an independent feature.
    A = torch.tensor(
        [
            [1.0, 0.5, 0.0, 0.0],  # parent + child 1: parent latent silent  -> absorbed
            [1.0, 0.0, 0.7, 0.0],  # parent + child 2: parent latent fires   -> kept
            [1.0, 0.0, 0.3, 0.0],  # parent + child 2: parent latent silent  -> absorbed
            [1.0, 0.0, 0.0, 0.2],  # parent alone (not counted)
            [0.0, 0.0, 0.0, 0.9],  # independent feature only
        ]
    )
    # Latents: 0 tracks feature 3, 1 tracks the parent.
    Z = torch.tensor([[0.0, 0.0], [0.0, 0.8], [0.0, 0.0], [0.1, 1.0], [0.9, 0.0]])
    rates = absorption_rates(A, Z, latent_of=[1, -1, -1, 0], children={0: [1, 2]})
    assert rates == {0: pytest.approx(2 / 3)}
    # A parent without a matched latent counts as fully absorbed.
    assert absorption_rates(A, Z, latent_of=[-1, -1, -1, 0], children={0: [1, 2]}) == {0: 1.0}


def test_match_latents_is_one_to_one_on_abs_cos() -> None:
    G = torch.eye(3)
    D = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.1, 0.0]])
    assert match_latents(G, D) == [1, 0, -1]
    assert match_latents(G, torch.zeros(0, 3)) == [-1, -1, -1]
