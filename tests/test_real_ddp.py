"""Data-parallel training under torchrun (2 processes, gloo) gives the single-process run:
the same loss at every step and the same final parameters, up to float rounding."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from decompbench.cli import main as cli_main
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.methods.sae import SAEMethod
from decompbench.real import train as real_train
from decompbench.real.ddp import DDPReplica, Ranks, main, ranks_from_env, store_from_tensor
from decompbench.real.dictionary import load_dictionary
from decompbench.real.store import ActivationStore
from decompbench.real.train import train_streaming

TOL = 1e-5  # float rounding: sums over rows in another order (measured ~1e-7 relative)
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV_OK = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29500"}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    """768 rows in 6 shards: 48 planted unit directions in 16 dims, ~3 active per row."""
    g = torch.Generator().manual_seed(0)
    dirs_FD = torch.randn(48, 16, generator=g)
    dirs_FD /= dirs_FD.norm(dim=1, keepdim=True)
    codes_NF = torch.rand(768, 48, generator=g) * (torch.rand(768, 48, generator=g) < 0.06)
    acts_ND = codes_NF @ dirs_FD + 0.01 * torch.randn(768, 16, generator=g)
    return store_from_tensor(tmp_path_factory.mktemp("store"), acts_ND, seq_len=8, shard_seqs=16)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    launcher = (
        [str(TORCHRUN)] if TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "--nproc_per_node", str(nproc), "--standalone", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # many dead latents: the aux-k loss needs the globally averaged firing rates
    "topk-aux": ("sae-topk", {"width": 96, "k": 2, "dead_after_steps": 2, "aux_k": 8}),
    # k * batch largest of the *global* batch, and a global inference threshold
    "batchtopk": ("sae-batchtopk", {"width": 64, "k": 2, "dead_after_steps": 3}),
    "jumprelu": ("sae-jumprelu", {"width": 32, "init_b_dec": "geometric_median"}),
    # resumed from a single-process checkpoint (written by the test before the launch)
    "resume": ("sae-topk", {"width": 48, "k": 3}),
}


def case_params(case: str) -> tuple[str, dict[str, Any]]:
    method, extra = CASES[case]
    return method, {"steps": 40, "batch_size": 64, **extra}


def ddp_worker(store_root: str, out_root: str) -> int:
    """Under torchrun: every case through ``decompbench.real.ddp.main``, one after another
    in one process group (one launch instead of one per case keeps the test short)."""
    torch.distributed.init_process_group("gloo")
    for case in CASES:
        method, params = case_params(case)
        kv = [f"{k}={v}" for k, v in params.items()]
        args = ["--store", store_root, "--method", method, "--params", *kv,
                "--out", f"{out_root}/{case}", "--checkpoint-every", "15", "--quiet"]  # fmt: skip
        if main(args) != 0:
            return 1
    torch.distributed.barrier()  # rank 0 may still be writing: tear down together
    gc.collect()  # no DDP reducer left for the interpreter's shutdown (DDPReplica.detach)
    torch.distributed.destroy_process_group()
    return 0


def single(store: ActivationStore, out: Path, case: str) -> SAEMethod:
    method, params = case_params(case)
    m = build_method(method, params, "test")
    assert isinstance(m, SAEMethod)
    train_streaming(m, store, 0, out, checkpoint_every=15)
    return m


@pytest.fixture(scope="module")
def runs(store: ActivationStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DDP runs of every case (2 processes, one torchrun launch)."""
    out = tmp_path_factory.mktemp("ddp")
    real_step = real_train._step

    def crash_at_20(*args: Any) -> float:
        if args[3] == 20:
            raise KeyboardInterrupt
        return real_step(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(real_train, "_step", crash_at_20)
        with pytest.raises(KeyboardInterrupt):
            single(store, out / "resume", "resume")
    assert json.loads((out / "resume" / "checkpoint.json").read_text())["step"] == 15
    res = torchrun(__file__, str(store.root), str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_give_the_single_process_losses_and_parameters(
    store: ActivationStore, runs: Path, tmp_path: Path, case: str
) -> None:
    ref = single(store, tmp_path, case)
    if case == "topk-aux":
        assert max(ref.log.n_dead) > 0  # the aux-k loss is exercised
    out = runs / case
    log = json.loads((out / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["backend"] == "gloo"
    losses = torch.tensor(log["losses"])
    assert losses.shape[0] == ref.params.steps
    assert torch.allclose(losses, torch.tensor(ref.log.losses), rtol=TOL, atol=TOL)
    if case != "resume":  # dead counts are not checkpointed: a resumed log has the tail only
        assert log["n_dead"] == ref.log.n_dead
    got, _ = load_dictionary(out)
    for key, value in ref.sae.state_dict().items():
        assert (got.sae.state_dict()[key] - value).abs().max() < TOL, key
    assert sorted(p.name for p in out.iterdir()) == [
        "dictionary.json", "dictionary.safetensors", "train_log.json",
    ]  # fmt: skip


def test_train_real_ddp_under_torchrun_matches_train_real(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The whole workflow: rank 0 caches the tiny GPT-2's activations, both ranks train,
    rank 0 scores; the same losses and metrics as one process on that store."""
    pytest.importorskip("transformers")
    from tests.test_real_sites import TEXTS, tiny_gpt2

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    args = ["train-real", "--model", str(tiny_gpt2(tmp_path_factory)), "--hook",
            "transformer.h.0", "--method", "sae-topk", "--params", "width=64", "k=4",
            "steps=60", "batch_size=64", "--data", str(data), "--seq-len", "16",
            "--shard-tokens", "512", "--max-tokens", "4096", "--quiet"]  # fmt: skip
    res = torchrun("-m", "decompbench.cli", *args, "--out", str(tmp_path / "ddp"), "--ddp")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("loss_recovered") == 1  # only rank 0 prints
    store = ["--store", str(tmp_path / "ddp" / "activations")]
    assert cli_main([*args, "--out", str(tmp_path / "one"), *store]) == 0
    a, b = (json.loads((tmp_path / o / "train_log.json").read_text()) for o in ("ddp", "one"))
    assert (a["world_size"], b["world_size"]) == (2, 1)
    assert torch.allclose(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=TOL, atol=TOL)
    ma, mb = (json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("ddp", "one"))
    for key, value in mb["metrics"].items():
        assert ma["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def one_line_error(capsys: pytest.CaptureFixture[str], match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err


def test_without_torchrun_environment_is_one_line_exit_2(
    store: ActivationStore, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    args = ["--store", str(store.root), "--method", "sae-topk", "--out", str(tmp_path)]
    assert main(args, env={}) == 2
    one_line_error(capsys, "missing RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT")
    assert main(args, env={**ENV_OK, "MASTER_PORT": ""}) == 2
    one_line_error(capsys, "missing MASTER_PORT")
    for key in ENV_OK:
        monkeypatch.delenv(key, raising=False)
    real = ["train-real", "--model", "m", "--hook", "h", "--method", "sae-topk", "--data", "d",
            "--out", str(tmp_path)]  # fmt: skip
    assert cli_main([*real, "--ddp"]) == 2
    one_line_error(capsys, "torchrun --nproc_per_node N")
    assert cli_main([*real, "--device", "cpu"]) == 2
    one_line_error(capsys, "--device is for --ddp")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"RANK": "2"}, "RANK 2 and WORLD_SIZE 1 do not fit"),
        ({"WORLD_SIZE": "two"}, "must be integers"),
    ],
)
def test_an_inconsistent_environment_is_refused(change: dict[str, str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        ranks_from_env({**ENV_OK, **change})


def test_methods_that_cannot_be_split_over_processes_are_refused(
    store: ActivationStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--store", str(store.root), "--out", str(tmp_path), "--method"]
    assert main([*args, "pca"], env=ENV_OK) == 2
    one_line_error(capsys, "not trained from the activation store")
    assert main([*args, "sae-topk", "--hold-out", "6"], env=ENV_OK) == 2
    one_line_error(capsys, "--hold-out must be from 0 to 5")
    cpu = Ranks(rank=1, world=2, local_rank=1, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(UserError, match="batch_size 63 is not divisible by the 2 processes"):
        DDPReplica(cpu, 63)
    replica = DDPReplica(cpu, 64)
    rows = replica.rows(torch.arange(64.0)[:, None])
    assert rows[:, 0].tolist() == list(range(32, 64))  # rank 1 takes the second half


if __name__ == "__main__":
    sys.exit(ddp_worker(sys.argv[1], sys.argv[2]))
