"""Toy activations out and any dictionary in (issue 18): ``export-acts`` writes the
runner's samples; ``score`` reads SAELens, sparsify, decompbench and plain safetensors
dictionaries and scores them like a suite run; ``describe --json``'s true directions score
mcc 1; bad input is one line, exit 2, nothing written; ``decompbench.evaluate`` gives a
suite run's metrics."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import decompbench
from decompbench.bench.runner import site_data
from decompbench.cli import main
from decompbench.methods.base import build_method
from decompbench.real.commands import score_on_toy
from decompbench.real.dictionary import save_dictionary
from decompbench.real.saelens import export_saelens, import_saelens, saelens_tensors
from decompbench.real.store import file_sha256
from decompbench.toys.base import ActivationSite, build_toy
from tests.conftest import fast_params

TOY = ["--toy", "composed", "--site", "hidden"]
D = 16  # composed's default d_model
SAME = ("mcc", "mcc_strict", "mmcs", "recall", "precision", "fvu", "l0", "n_alive", "mcc_act")


def json_out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def acts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("acts") / "composed"
    argv = ["export-acts", "composed", "--site", "hidden", "--seed", "1", "--n-train", "2048"]
    assert main([*argv, "--n-eval", "512", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained_topk(acts: Path) -> Any:
    """A TopK SAE trained "elsewhere": only on export-acts' train.safetensors."""
    X = load_file(str(acts / "train.safetensors"))["activations"]
    method = build_method("sae-topk", {**fast_params("sae-topk"), "width": 16})
    method.fit(ActivationSite("hidden", X), seed=3)
    return method


def test_export_acts_writes_the_runner_samples(acts: Path) -> None:
    manifest = json.loads((acts / "manifest.json").read_text())
    data = site_data(build_toy("composed", {}, 1), "hidden", 2048, 512, 1)
    train = load_file(str(acts / "train.safetensors"))
    evals = load_file(str(acts / "eval.safetensors"))
    assert torch.equal(train["activations"], data.train_ND)
    assert torch.equal(evals["activations"], data.eval_ND)
    assert torch.equal(evals["features"], data.eval_feats_NK)
    assert (manifest["toy"], manifest["site"], manifest["seed"]) == ("composed", "hidden", 1)
    assert (manifest["n_train"], manifest["n_eval"], manifest["d"]) == (2048, 512, D)
    for name in ("train.safetensors", "eval.safetensors"):
        assert manifest["files"][name]["sha256"] == file_sha256(acts / name)
    assert manifest["files"]["eval.safetensors"]["tensors"]["features"]["shape"] == [512, 8]
    assert sorted(p.name for p in acts.iterdir()) == [
        "eval.safetensors", "manifest.json", "train.safetensors"]  # fmt: skip


def test_export_acts_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a"
    assert main(["export-acts", "composed", "--site", "nope", "--out", str(out)]) == 2
    assert "has no site 'nope'" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-acts", "composed", "--site", "hidden", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_true_directions_from_describe_json_score_mcc_1_and_join_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = json_out(["describe", "composed", "--json"], capsys)
    site = desc["sites"]["hidden"]
    assert site["d"] == D and len(site["model"]["names"]) == 8 and site["groups"] is not None
    G = torch.tensor(site["model"]["directions"], dtype=torch.float32)
    save_file({"W_dec": G}, str(tmp_path / "truth.safetensors"))
    run = tmp_path / "run"
    argv = ["score", str(tmp_path / "truth.safetensors"), *TOY, "--out", str(run)]
    assert main([*argv, "--name", "truth"]) == 0
    assert "mcc" in capsys.readouterr().out
    (rec,) = records(run)
    assert (rec["method"], rec["status"], rec["access"]) == ("truth", "ok", "activation_only")
    assert rec["metrics"]["mcc"] == pytest.approx(1.0, abs=1e-6)
    assert rec["metrics"]["mcc_strict"] == pytest.approx(1.0, abs=1e-6)
    assert rec["metrics"]["mcc_chance"] < 0.9
    assert "truth" in (run / "stance.json").read_text()
    assert "truth" in (run / "report.html").read_text()
    assert main(["show", str(run)]) == 0
    assert "truth" in capsys.readouterr().out
    # the run's artefact is itself a dictionary decompbench reads (directions only)
    (art,) = (run / "artefacts").glob("*.json")
    assert main(["score", str(art), *TOY]) == 0
    assert "artefact" in capsys.readouterr().out
    # scoring the same dictionary into the same run again is refused
    assert main([*argv, "--name", "truth"]) == 2
    assert "already holds" in capsys.readouterr().err


def scored(path: Path, capsys: pytest.CaptureFixture[str], run: Path) -> dict[str, Any]:
    assert main(["score", str(path), *TOY, "--seed", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    metrics: dict[str, Any] = records(run)[-1]["metrics"]
    return metrics


def test_saelens_sparsify_and_plain_files_of_one_sae_score_alike(
    trained_topk: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One TopK SAE trained on export-acts output, written as a SAELens folder, a sparsify
    folder, a plain safetensors file and a decompbench dictionary, scores the same through
    `score`; the SAELens folder also as through `import` + scoring."""
    run = tmp_path / "run"
    saelens = export_saelens(trained_topk, tmp_path / "saelens")
    m_saelens = scored(saelens, capsys, run)
    imported = score_on_toy(import_saelens(saelens), "composed", {}, "hidden", 1, 4096)
    for key in SAME:
        assert m_saelens[key] == pytest.approx(imported[key], rel=1e-6, abs=1e-9), key
    _, t = saelens_tensors(trained_topk)
    sparsify = tmp_path / "sparsify"
    sparsify.mkdir()
    cfg = {"activation": "topk", "expansion_factor": 1, "normalize_decoder": True,
           "num_latents": 16, "k": trained_topk.params.k, "multi_topk": False,
           "skip_connection": False, "transcode": False, "d_in": D}  # fmt: skip
    (sparsify / "cfg.json").write_text(json.dumps(cfg))
    coder = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
             "W_dec": t["W_dec"], "b_dec": t["b_dec"]}  # fmt: skip
    save_file(coder, str(sparsify / "sae.safetensors"))
    m_sparsify = scored(sparsify, capsys, run)
    # a plain file with the decoder only: least-squares latents, same directions
    save_file({"W_dec": t["W_dec"], "b_dec": t["b_dec"]}, str(tmp_path / "plain.safetensors"))
    m_plain = scored(tmp_path / "plain.safetensors", capsys, run)
    save_dictionary(trained_topk, tmp_path / "ours", {})  # as train-real / import --out write
    m_ours = scored(tmp_path / "ours", capsys, run)
    for key in SAME:
        assert m_ours[key] == pytest.approx(m_saelens[key], rel=1e-5, abs=1e-7), key
    for key in SAME:
        assert m_sparsify[key] == pytest.approx(m_saelens[key], rel=1e-5, abs=1e-7), key
    for key in ("mcc", "mmcs", "recall"):  # direction scores: every latent is alive in both
        assert m_plain[key] == pytest.approx(m_saelens[key], rel=1e-6), key
    assert m_plain["fvu"] < 1e-3  # least squares on a full-rank decoder reconstructs
    assert [r["method"] for r in records(run)] == [
        "saelens:saelens", "sparsify:sparsify", "safetensors:plain.safetensors",
        "decompbench:ours"]  # fmt: skip


def test_plain_file_with_an_encoder_is_the_saelens_sae(trained_topk: Any, tmp_path: Path) -> None:
    """W_enc/b_enc/W_dec/b_dec of a ReLU SAE in a plain file compute SAELens' latents."""
    from decompbench.io.dictionaries import read_dictionary

    relu = build_method("sae-relu", fast_params("sae-relu"))
    X = torch.randn(400, D)
    relu.fit(ActivationSite("hidden", X), seed=0)
    _, t = saelens_tensors(relu)
    save_file(t, str(tmp_path / "relu.safetensors"))
    method, kind = read_dictionary(tmp_path / "relu.safetensors")
    assert kind == "safetensors"
    assert torch.allclose(method.encode(X), relu.encode(X), atol=1e-5)
    assert torch.allclose(method.decode(method.encode(X)), relu.decode(relu.encode(X)), atol=1e-5)


def write_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"W_dec": [[1.0] * D]}))
    return path


def bad_dictionary(case: str, tmp: Path) -> tuple[Path, str]:
    """A bad dictionary of kind ``case`` and the text its one-line error must hold."""
    if case == "d_in":
        save_file({"W_dec": torch.randn(8, D - 1)}, str(tmp / "w.safetensors"))
        return tmp / "w.safetensors", "d_in=15 does not match site 'hidden'"
    if case == "saelens_width":
        folder = tmp / "sl"
        cfg = {"architecture": "standard", "d_in": D, "d_sae": 32, "dtype": "float32",
               "metadata": {"sae_lens_version": "6.0.0"}}  # fmt: skip
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps(cfg))
        t = {"W_enc": torch.randn(D, 16), "b_enc": torch.zeros(16), "W_dec": torch.randn(16, D),
             "b_dec": torch.zeros(D)}  # fmt: skip
        save_file(t, str(folder / "sae_weights.safetensors"))
        return folder, "'W_enc' has shape [16, 16], expected [16, 32]"
    if case in ("malformed_cfg", "sparsify_width"):
        folder = tmp / "sp"
        folder.mkdir()
        cfg = {"k": 2, "num_latents": 32, "d_in": D}
        text = "{not json" if case == "malformed_cfg" else json.dumps(cfg)
        (folder / "cfg.json").write_text(text)
        t = {"encoder.weight": torch.randn(16, D), "encoder.bias": torch.zeros(16),
             "W_dec": torch.randn(16, D), "b_dec": torch.zeros(D)}  # fmt: skip
        save_file(t, str(folder / "sae.safetensors"))
        return folder, "cannot read config" if case == "malformed_cfg" else "cfg.json says 32"
    if case == "pickle_pt":
        return write_pickle(tmp / "sae.pt"), ".pt files are pickles"
    if case == "pickle_named_safetensors":
        return write_pickle(tmp / "sae.safetensors"), "not a safetensors file"
    if case == "pickle_folder":
        (tmp / "hf").mkdir()
        write_pickle(tmp / "hf" / "pytorch_model.bin")
        return tmp / "hf", ".bin files are pickles"
    assert case == "no_w_dec"
    save_file({"decoder": torch.randn(8, D)}, str(tmp / "x.safetensors"))
    return tmp / "x.safetensors", "no 'W_dec' tensor"


BAD = ["d_in", "saelens_width", "sparsify_width", "malformed_cfg", "pickle_pt",
       "pickle_named_safetensors", "pickle_folder", "no_w_dec"]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_dictionary_is_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected = bad_dictionary(case, tmp_path)
    run = tmp_path / "run"
    assert main(["score", str(path), *TOY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not run.exists()


def test_evaluate_gives_the_metrics_of_a_suite_run(tmp_path: Path) -> None:
    """decompbench.evaluate on a method fitted to the runner's training samples returns
    the record's metrics; bare true directions score mcc 1."""
    suite = {"seeds": [2], "n_train": 512, "n_eval": 256,
             "toys": [{"name": "composed"}], "methods": [{"name": "pca"}]}  # fmt: skip
    (rec,) = decompbench.run_suite(suite, tmp_path / "run", report=False)
    toy = build_toy("composed", {}, 2)
    data = site_data(toy, "hidden", 512, 256, 2)
    pca = build_method("pca", {})
    pca.fit(ActivationSite("hidden", data.train_ND), 2)
    metrics = decompbench.evaluate(pca, "composed", "hidden", seed=2, n_eval=256)
    assert metrics == rec.metrics
    G = toy.ground_truth("hidden").directions_KD
    truth = decompbench.evaluate(G, toy, "hidden", seed=2, n_eval=256)
    assert truth["mcc"] == pytest.approx(1.0, abs=1e-6)
    enc = decompbench.evaluate(G, toy, "hidden", seed=2, n_eval=256,
                               encoder=lambda x: torch.relu(x @ G.T))  # fmt: skip
    assert enc["mcc"] == pytest.approx(1.0, abs=1e-6)
