"""Real-model metrics: hand-checkable pure functions, then splicing on a tiny GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench.methods.base import build_method
from decompbench.real.metrics import (
    dense_frac,
    loss_recovered,
    next_token_ce,
    next_token_kl,
    real_scores,
)
from decompbench.real.sites import open_site, token_windows
from decompbench.toys.base import ActivationSite
from tests.test_real_sites import TEXTS, tiny_gpt2


def test_uniform_logits_cost_log_vocab_per_token() -> None:
    tokens = torch.tensor([[0, 1, 2, 3]])
    ce = next_token_ce(torch.zeros(1, 4, 5), tokens)
    assert ce.shape == (1, 3)
    assert torch.allclose(ce, torch.full((1, 3), math.log(5), dtype=torch.float64))


def test_ce_reads_the_next_token() -> None:
    logits = torch.full((1, 2, 3), -1e4)
    logits[0, 0, 2] = 0.0  # position 0 is sure the next token is 2
    assert float(next_token_ce(logits, torch.tensor([[1, 2]]))[0, 0]) == pytest.approx(0.0)
    assert float(next_token_ce(logits, torch.tensor([[1, 0]]))[0, 0]) == pytest.approx(1e4)


def test_kl_is_zero_for_equal_logits_and_matches_a_hand_value() -> None:
    a = torch.randn(2, 3, 4)
    assert torch.allclose(next_token_kl(a, a + 7.0), torch.zeros(2, 3, dtype=torch.float64))
    p, q = (
        torch.tensor([[[0.0, 0.0]]]),
        torch.tensor([[[math.log(3.0), 0.0]]]),
    )  # (1/2,1/2) vs (3/4,1/4)
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(next_token_kl(p, q)) == pytest.approx(want)


@pytest.mark.parametrize(
    ("clean", "spliced", "zero", "want"),
    [(1.0, 1.0, 3.0, 1.0), (1.0, 3.0, 3.0, 0.0), (1.0, 2.0, 3.0, 0.5), (1.0, 4.0, 3.0, -0.5)],
)
def test_loss_recovered(clean: float, spliced: float, zero: float, want: float) -> None:
    assert loss_recovered(clean, spliced, zero) == pytest.approx(want)
    assert math.isnan(loss_recovered(1.0, 2.0, 1.0))


def test_dense_frac_counts_latents_firing_on_more_than_half_the_samples() -> None:
    Z = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert dense_frac(Z) == pytest.approx(1 / 3)  # latent 0 fires on 3/3; others on 1/3


class Zero:
    """A 'dictionary' that reconstructs everything as zero (the zero-ablation baseline)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    pytest.importorskip("transformers")
    site = open_site(str(tiny_gpt2(tmp_path_factory)), "transformer.h.0")
    batches = list(token_windows(site.tokenizer, TEXTS[:60], 16, 8))[:3]
    return site, [(site.acts(t), t) for t in batches]


class Identity(Zero):
    """Latents = activations: a perfect reconstruction."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.clone()


def test_a_perfect_reconstruction_recovers_all_the_loss(shards: tuple) -> None:
    site, parts = shards
    s = real_scores(site, Identity(), parts)  # type: ignore[arg-type]
    assert s["fvu"] == 0.0 and s["kl"] == 0.0 and s["ce_increase"] == 0.0
    assert s["loss_recovered"] == 1.0
    assert s["ce_zero"] > s["ce_clean"] + 1.0  # the trained tiny model needs its activations


def test_pca_at_full_width_recovers_nearly_all_the_loss(shards: tuple) -> None:
    site, parts = shards
    pca = build_method("pca", {"width": 32})
    pca.fit(ActivationSite("h0", torch.cat([a for a, _ in parts])), seed=0)
    s = real_scores(site, pca, parts)
    assert s["fvu"] < 1e-6 and s["kl"] < 1e-4
    assert s["loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_a_zero_reconstruction_recovers_none(shards: tuple) -> None:
    site, parts = shards
    s = real_scores(site, Zero(), parts)  # type: ignore[arg-type]
    assert s["ce_spliced"] == pytest.approx(s["ce_zero"])
    assert s["loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert s["l0"] == 0.0 and s["dead_frac"] == 1.0 and s["kl"] > 0.1
