"""Cross-check against SAELens itself (marker ``interop``; run by ``make interop``, which
installs sae-lens into the side venv ``.venv-interop``).

Exported folders are loaded with ``sae_lens.SAE.load_from_disk`` and must give the same
latents and reconstructions; folders written by SAELens' own ``save_model`` must import to a
decompbench method with the same outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from decompbench.real.saelens import EXPORT, export_saelens, import_saelens
from decompbench.registry import all_methods
from tests.test_real_saelens import D, data, fitted

pytestmark = pytest.mark.interop

if os.environ.get("DECOMPBENCH_INTEROP") == "1":  # `make interop`: a missing sae-lens fails
    import sae_lens
else:
    sae_lens = pytest.importorskip("sae_lens")

EXPORTABLE = sorted(m for m in EXPORT if m in all_methods())


def same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert torch.equal(ours != 0, theirs != 0)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("name", EXPORTABLE)
def test_saelens_loads_the_export_and_computes_the_same(
    name: str, normalize: bool, tmp_path: Path
) -> None:
    method = fitted(name, normalize=normalize)
    export_saelens(method, tmp_path, {"model": "toy", "hook": "x"})
    sae = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert sae.cfg.architecture() == EXPORT[name].architecture
    X = data(512, seed=5)
    with torch.no_grad():
        z_theirs = sae.encode(X)
        same(method.encode(X), z_theirs)
        same(method.decode(method.encode(X)), sae.decode(z_theirs))


def saelens_sae(arch: str, d_sae: int = 16) -> Any:
    """A SAELens SAE of ``arch`` with random weights, biases and thresholds."""
    g = torch.Generator().manual_seed(7)
    cfgs = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
            "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 3}),
            "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {})}  # fmt: skip
    cls, cfg_cls, extra = cfgs[arch]
    sae = cls(cfg_cls(d_in=D, d_sae=d_sae, **extra))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.2)
    return sae


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_folders_written_by_saelens_import_with_the_same_outputs(arch: str, tmp_path: Path) -> None:
    sae = saelens_sae(arch)
    sae.save_model(str(tmp_path))
    method = import_saelens(tmp_path)
    X = data(512, seed=6)
    with torch.no_grad():
        z = sae.encode(X)
        assert (z != 0).any()
        same(method.encode(X), z)
        same(method.decode(z), sae.decode(z))


def test_saelens_reproduces_a_dictionary_trained_on_a_tiny_gpt2(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from decompbench.real.commands import train_real
    from decompbench.real.dictionary import load_dictionary
    from decompbench.real.store import ActivationStore
    from tests.test_real_sites import TEXTS, tiny_gpt2

    params = {"width": 64, "steps": 200, "batch_size": 64, "l0_coef": 0.1}
    out = tmp_path / "run"
    train_real(str(tiny_gpt2(tmp_path_factory)), "transformer.h.1.mlp:input", "sae-jumprelu",
               params, TEXTS, out, seq_len=16, shard_seqs=16, max_seqs=96)  # fmt: skip
    method, meta = load_dictionary(out)
    export_saelens(method, out / "saelens", meta["site"])
    sae = sae_lens.SAE.load_from_disk(str(out / "saelens"))
    assert sae.cfg.metadata.hook_name == "transformer.h.1.mlp:input"
    X, _ = ActivationStore(out / "activations").select([5]).load_shard(0)
    with torch.no_grad():
        z = sae.encode(X)
        assert (z != 0).sum(dim=1).float().mean() > 0
        same(method.encode(X), z)
        same(method.decode(z), sae.decode(z))
