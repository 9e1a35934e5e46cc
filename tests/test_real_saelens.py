"""SAELens format: export -> import gives the same latents and reconstruction; bad folders
are refused in one line; an imported dictionary scores on a toy site of its width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.methods.sae import SAEMethod
from decompbench.real.commands import score_on_toy
from decompbench.real.dictionary import load_dictionary, save_dictionary
from decompbench.real.saelens import CFG, EXPORT, IMPORT, WEIGHTS, export_saelens, import_saelens
from decompbench.registry import all_methods
from decompbench.toys.base import ActivationSite
from tests.conftest import fast_params

D = 8
EXPORTABLE = sorted(m for m in EXPORT if m in all_methods())


def data(n: int = 2048, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative codes on 12 random unit directions in 8 dims, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(12, D, generator=g), dim=1)
    codes = torch.rand(n, 12, generator=g) * (torch.rand(n, 12, generator=g) < 0.2)
    return 3.0 * codes @ dirs + 0.5


def fitted(name: str, **extra: object) -> SAEMethod:
    method = build_method(name, {**fast_params(name), **extra})
    method.fit(ActivationSite("x", data()), seed=0)
    assert isinstance(method, SAEMethod)
    return method


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("name", EXPORTABLE)
def test_export_then_import_gives_the_same_latents_and_reconstruction(
    name: str, normalize: bool, tmp_path: Path
) -> None:
    method = fitted(name, normalize=normalize)
    export_saelens(method, tmp_path, {"model": "toy", "hook": "x"})
    back = import_saelens(tmp_path)
    X = data(512, seed=1)
    Z, Zb = method.encode(X), back.encode(X)
    assert Z.abs().sum() > 0 and (Z != 0).any(dim=0).sum() >= 2
    if method.sae.in_scale == 1:  # nothing folded: bit-identical
        assert torch.equal(Z, Zb) and torch.equal(method.decode(Z), back.decode(Zb))
    else:
        assert torch.equal(Z != 0, Zb != 0)
        assert torch.allclose(Z, Zb, rtol=1e-5, atol=1e-6)
        assert torch.allclose(method.decode(Z), back.decode(Zb), rtol=1e-5, atol=1e-5)
    assert back.name == IMPORT[EXPORT[name].architecture].method


def test_the_cfg_json_has_saelens_keys(tmp_path: Path) -> None:
    export_saelens(fitted("sae-topk"), tmp_path, {"model": "m", "hook": "transformer.h.0"})
    cfg = json.loads((tmp_path / CFG).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == fast_params("sae-topk")["k"]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D, 8, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"] >= "6.0.0"
    assert cfg["metadata"]["hook_name"] == "transformer.h.0"
    t = load_file(str(tmp_path / WEIGHTS))
    assert {k: tuple(v.shape) for k, v in t.items()} == {
        "W_enc": (D, 8), "b_enc": (8,), "W_dec": (8, D), "b_dec": (D,)}  # fmt: skip


def test_saelens_forward_by_hand_matches_the_method(tmp_path: Path) -> None:
    """The SAELens 'jumprelu' forward, written out, on the exported tensors."""
    method = fitted("sae-jumprelu", normalize=True)
    export_saelens(method, tmp_path)
    t = load_file(str(tmp_path / WEIGHTS))
    X = data(256, seed=2)
    pre = (X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    z = torch.relu(pre) * (pre > t["threshold"])
    assert torch.allclose(z, method.encode(X), rtol=1e-5, atol=1e-6)
    assert torch.allclose(z @ t["W_dec"] + t["b_dec"], method.decode(method.encode(X)), atol=1e-5)


def test_apply_b_dec_to_input_false_is_folded_into_the_encoder_bias(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(D, 6, generator=g), "b_enc": torch.randn(6, generator=g),
         "W_dec": torch.randn(6, D, generator=g), "b_dec": torch.randn(D, generator=g)}  # fmt: skip
    save_file(t, str(tmp_path / WEIGHTS))
    cfg = {"architecture": "standard", "d_in": D, "d_sae": 6, "dtype": "float32",
           "apply_b_dec_to_input": False, "metadata": {"sae_lens_version": "6.5.1"}}  # fmt: skip
    (tmp_path / CFG).write_text(json.dumps(cfg))
    X = torch.randn(64, D, generator=g)
    z = torch.relu(X @ t["W_enc"] + t["b_enc"])
    m = import_saelens(tmp_path)
    assert torch.allclose(m.encode(X), z, atol=1e-5)
    assert torch.allclose(m.decode(z), z @ t["W_dec"] + t["b_dec"], atol=1e-5)


def write_bad(tmp_path: Path, cfg_change: dict, tensor_change: dict) -> Path:
    export_saelens(fitted("sae-relu"), tmp_path)
    cfg = json.loads((tmp_path / CFG).read_text())
    cfg.update(cfg_change)
    (tmp_path / CFG).write_text(json.dumps(cfg))
    t = load_file(str(tmp_path / WEIGHTS))
    t.update(tensor_change)
    save_file({k: v for k, v in t.items() if v is not None}, str(tmp_path / WEIGHTS))
    return tmp_path


@pytest.mark.parametrize(
    ("cfg", "tensors", "match"),
    [
        ({"architecture": "gated"}, {}, "architecture 'gated' not supported"),
        ({"metadata": {"sae_lens_version": "5.9.0"}}, {}, "SAELens >= 6"),
        ({"d_sae": 9}, {}, "'W_enc' has shape"),
        ({"d_out": 4}, {}, "transcoders"),
        ({"normalize_activations": "layer_norm"}, {}, "normalize_activations"),
        ({"dtype": "int8"}, {}, "unknown dtype"),
        ({}, {"b_dec": torch.zeros(D, dtype=torch.int32)}, "expected a float type"),
        ({}, {"threshold": torch.zeros(8)}, "unexpected \\['threshold'\\]"),
        ({}, {"W_dec": torch.full((8, D), float("nan"))}, "non-finite"),
        ({"architecture": "topk"}, {}, "integer 'k'"),
    ],
)
def test_bad_saelens_folders_are_one_line_errors(
    cfg: dict, tensors: dict, match: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=match) as err:
        import_saelens(write_bad(tmp_path, cfg, tensors))
    assert "\n" not in str(err.value)


def test_methods_without_a_mapping_are_refused(tmp_path: Path) -> None:
    pca = build_method("pca", {})
    pca.fit(ActivationSite("x", data()), seed=0)
    with pytest.raises(UserError, match="no SAE module"):
        export_saelens(pca, tmp_path)


def test_decompbench_dictionary_round_trip_is_bit_identical(tmp_path: Path) -> None:
    method = fitted("sae-jumprelu")
    save_dictionary(method, tmp_path, {"model": "toy"})
    back, meta = load_dictionary(tmp_path)
    X = data(256, seed=4)
    assert meta["method"] == "sae-jumprelu" and meta["site"] == {"model": "toy"}
    assert torch.equal(method.encode(X), back.encode(X))
    assert torch.equal(method.directions(), back.directions())


def test_an_imported_dictionary_scores_on_a_toy_site_of_matching_width(tmp_path: Path) -> None:
    method = fitted("sae-topk")  # d = 8
    export_saelens(method, tmp_path)
    back = import_saelens(tmp_path)
    toy = {"values": [2, 2], "d_model": D}
    scores = score_on_toy(back, "composed", toy, None, seed=0, n_eval=256)
    assert 0.0 <= scores["mcc"] <= 1.0 and scores["width"] == 8
    with pytest.raises(UserError, match="does not match"):
        score_on_toy(back, "composed", {"values": [2, 2], "d_model": 6}, None, n_eval=64)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "x"}, "format"),
        ({"d": 0}, "d:"),
        ({"method": "nope"}, "unknown method"),
        ({"d": 9}, "'W_dec_MD' has shape"),
    ],
)
def test_bad_dictionary_folders_are_one_line_errors(
    change: dict, match: str, tmp_path: Path
) -> None:
    save_dictionary(fitted("sae-relu"), tmp_path, {})
    meta = json.loads((tmp_path / "dictionary.json").read_text())
    (tmp_path / "dictionary.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(UserError, match=match) as err:
        load_dictionary(tmp_path)
    assert "\n" not in str(err.value)
