"""The real-model workflow end to end on a tiny GPT-2: train-real (cache, stream, train,
checkpoint, score), export to SAELens, import back with identical outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from decompbench.cli import main
from decompbench.real import train as real_train
from decompbench.real.commands import REAL_KEYS
from decompbench.real.dictionary import load_dictionary
from decompbench.real.store import ActivationStore
from tests.test_real_sites import TEXTS, tiny_gpt2

pytest.importorskip("transformers")

SAE = ["--method", "sae-topk", "--params", "width=64", "k=4", "steps=300", "batch_size=64"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gpt2(tmp_path_factory)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train-real", "--model", str(model), "--hook", "transformer.h.0", *SAE,
            "--data", str(data), "--out", str(out), "--seq-len", "16", "--shard-tokens", "512",
            "--max-tokens", "4096", "--quiet", *extra]  # fmt: skip


def test_train_real_then_export_then_import_round_trip(
    model: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(train_args(model, data_file, out)) == 0
    printed, err = capsys.readouterr()
    assert "warning: the held-out shard has only 512 tokens" in err  # a tiny eval shard
    for key in REAL_KEYS:
        assert key in printed
    record = json.loads((out / "metrics.json").read_text())
    m = record["metrics"]
    assert record["n_train_tokens"] == 7 * 512 and record["n_eval_tokens"] == 512
    assert 0 < m["fvu"] < 0.5 and 0 < m["l0"] <= 4
    assert m["ce_zero"] > m["ce_spliced"] >= m["ce_clean"] - 0.05 and m["kl"] > 0
    assert 0 < m["loss_recovered"] <= 1.05
    assert not (out / "checkpoint.json").exists()

    assert main(["export", str(out), "--format", "saelens"]) == 0
    assert (out / "saelens" / "cfg.json").exists()
    mask = os.umask(0o022)
    os.umask(mask)
    assert (out / "saelens" / "sae_weights.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert main(["import", str(out / "saelens"), "--out", str(tmp_path / "back")]) == 0
    capsys.readouterr()
    assert main(["import", str(out / "saelens"), "--out", str(tmp_path / "back")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["import", str(out / "saelens"), "--out", str(tmp_path / "back"), "--force"]) == 0
    trained, meta = load_dictionary(out)
    back, _ = load_dictionary(tmp_path / "back")
    held_out, _ = ActivationStore(out / "activations").select([7]).load_shard(0)
    assert meta["site"]["hook"] == "transformer.h.0"
    assert torch.equal(trained.encode(held_out), back.encode(held_out))
    assert torch.equal(trained.decode(trained.encode(held_out)), back.decode(back.encode(held_out)))


def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_dictionary(
    model: Path, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ["--store", str(tmp_path / "acts"), "--checkpoint-every", "100"]
    assert main(train_args(model, data_file, tmp_path / "whole", *store)) == 0

    real_step = real_train._step

    def crash_at_250(method, opt, batch, step, tracker, label):  # type: ignore[no-untyped-def]
        if step == 250:
            raise KeyboardInterrupt
        return real_step(method, opt, batch, step, tracker, label)

    monkeypatch.setattr(real_train, "_step", crash_at_250)
    assert main(train_args(model, data_file, tmp_path / "cut", *store)) == 130
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"] == 200
    monkeypatch.setattr(real_train, "_step", real_step)
    assert main(train_args(model, data_file, tmp_path / "cut", *store)) == 0
    a, _ = load_dictionary(tmp_path / "whole")
    b, _ = load_dictionary(tmp_path / "cut")
    for key, value in a.sae.state_dict().items():
        assert torch.equal(value, b.sae.state_dict()[key]), key


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"--hook": "transformer.h.9"}, "no module 'transformer.h.9'"),
        ({"--method": "nope"}, "unknown method 'nope'"),
        ({"--max-tokens": "512"}, "held out for evaluation"),
        ({"--seq-len": "100"}, "exceeds the model's 64 positions"),
    ],
)
def test_bad_train_real_input_is_one_line_exit_2(
    model: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: dict[str, str], match: str,
) -> None:  # fmt: skip
    args = train_args(model, data_file, tmp_path / "o")
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # no empty or half-built --out is left


@pytest.mark.parametrize("name", ["./missing", "/no/such/model", "models/a/b", "../x"])
def test_a_missing_local_model_folder_is_named_without_asking_the_hub(
    data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = train_args(Path(name), data_file, tmp_path / "o")
    args[args.index("--model") + 1] = name
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--model {name}: no such model folder" in err
    assert not (tmp_path / "o").exists()


def test_a_non_sae_method_is_fitted_in_memory_and_scored_without_a_dictionary(
    model: Path, data_file: Path, tmp_path: Path
) -> None:
    args = train_args(model, data_file, tmp_path / "pca", "--store", str(tmp_path / "acts"))
    i = args.index("--method")
    args[i : i + len(SAE)] = ["--method", "pca", "--params", "width=32"]
    assert main(args) == 0
    record = json.loads((tmp_path / "pca" / "metrics.json").read_text())
    assert record["dictionary_saved"] is False
    assert record["metrics"]["fvu"] < 1e-6 and record["metrics"]["loss_recovered"] > 0.999
    assert not (tmp_path / "pca" / "dictionary.json").exists()
