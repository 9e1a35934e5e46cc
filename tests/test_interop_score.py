"""A round trip with SAELens itself (issue 18; marker ``interop``, run by ``make interop``
in the side environment ``.venv-interop``): toy activations out with ``export-acts``, a
SAELens SAE trained on them there, scored back with ``decompbench score``; its recovery
must equal what ``decompbench import`` + scoring gives."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from decompbench.cli import main
from decompbench.real.commands import score_on_toy
from decompbench.real.saelens import import_saelens

pytestmark = pytest.mark.interop

if os.environ.get("DECOMPBENCH_INTEROP") == "1":  # `make interop`: a missing sae-lens fails
    import sae_lens
else:
    sae_lens = pytest.importorskip("sae_lens")

COMPARED = ("mcc", "mcc_strict", "mmcs", "recall", "precision", "mcc_act", "fvu", "l0")


def train_saelens_topk(X: torch.Tensor, d_sae: int, k: int, steps: int = 1500) -> Any:
    """A SAELens TopK SAE fitted to ``X`` by Adam on its own encode/decode (MSE)."""
    torch.manual_seed(0)
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=X.shape[1], d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = X[torch.randint(0, X.shape[0], (256,), generator=g)]
        loss = (sae.decode(sae.encode(x)) - x).pow(2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return sae


def test_saelens_sae_on_export_acts_scores_like_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = tmp_path / "acts"
    argv = ["export-acts", "composed", "--site", "hidden", "--seed", "0", "--n-train", "8192"]
    assert main([*argv, "--n-eval", "1024", "--out", str(acts)]) == 0
    X = load_file(str(acts / "train.safetensors"))["activations"]
    sae = train_saelens_topk(X, d_sae=16, k=2)
    folder = tmp_path / "saelens"
    sae.save_model(str(folder))
    run = tmp_path / "run"
    toy = ["--toy", "composed", "--site", "hidden"]
    assert main(["score", str(folder), *toy, "--out", str(run)]) == 0
    capsys.readouterr()
    (record,) = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    via_score = record["metrics"]
    via_import = score_on_toy(import_saelens(folder), "composed", {}, "hidden", 0, 4096)
    with capsys.disabled():
        print("\nscore vs import:", {k: (via_score[k], via_import[k]) for k in COMPARED})
    assert via_score["mcc"] > 0.5  # it learned something
    for key in COMPARED:
        assert via_score[key] == pytest.approx(via_import[key], rel=1e-6, abs=1e-9), key
