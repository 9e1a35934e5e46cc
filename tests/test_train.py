"""The shared training loop: schedule, unit-norm decoder, failure on a non-finite loss."""

from __future__ import annotations

import pytest
import torch

from decompbench.errors import TrainingFailed
from decompbench.methods.sae_relu import ReLUSAE
from decompbench.methods.train import TrainParams, lr_factor, train


def test_lr_schedule_warms_up_holds_and_decays_to_zero() -> None:
    f = [lr_factor(s, 10, warmup_frac=0.2, decay_frac=0.3) for s in range(10)]
    assert f == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 3 / 3, 2 / 3, 1 / 3])
    assert lr_factor(0, 5, 0.0, 0.0) == 1.0


def test_decoder_rows_stay_unit_norm_and_loss_falls() -> None:
    sae = ReLUSAE(6, 12, torch.Generator().manual_seed(0))
    sae.l1 = 0.01
    X = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))
    log = train(sae, X, TrainParams(steps=300, batch_size=64, lr=1e-2), seed=0, label="t")
    assert torch.allclose(sae.W_dec_MD.norm(dim=1), torch.ones(12), atol=1e-5)
    assert log.final_loss < 0.5 * log.losses[0]


def test_non_finite_loss_raises_training_failed() -> None:
    sae = ReLUSAE(4, 4, torch.Generator().manual_seed(0))
    X = torch.full((32, 4), float("nan"))
    with pytest.raises(TrainingFailed, match="loss became nan at step 0"):
        train(sae, X, TrainParams(steps=5, batch_size=8), seed=0, label="t")
