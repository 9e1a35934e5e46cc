"""`decompbench circuit`: tiny end-to-end runs write graph JSON + PNG; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decompbench.circuits.graph import LatentGraph
from decompbench.circuits.pipeline import CircuitSettings, run_circuit
from decompbench.cli import main

TINY_SETTINGS = ["n_train=256", "n_eval=128"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_circuit_command_writes_graph_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("width: 8\nk: 2\nsteps: 30\n")
    out = tmp_path / "out"
    argv = ["circuit", "circuit", "--method", "sae-topk", "--integrate", "filter,merge",
            "--params", str(params), "batch_size=32", "--set", *TINY_SETTINGS,
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "l0" in printed and "l1" in printed
    data = json.loads((out / "graph.json").read_text())
    assert data["meta"]["method_params"] == {"width": 8, "k": 2, "steps": 30, "batch_size": 32}
    assert data["meta"]["integrate"] == ["filter", "merge"]
    assert 0.0 <= data["score"]["edge_f1"] <= 1.0
    graph = LatentGraph.from_dict(data)
    assert graph.sites == ("l0", "l1") and graph.nodes["l0"]
    assert (out / "graph.png").read_bytes().startswith(PNG_MAGIC)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    "argv",
    [
        ["circuit", "circuit", "--method", "no-such-method"],
        ["circuit", "circuit", "--method", "pca", "--integrate", "filter,typo"],
        ["circuit", "tms", "--method", "pca"],  # one site: no circuit
        ["circuit", "circuit", "--method", "pca", "--integrate", "joint"],
        ["circuit", "circuit", "--method", "pca", "--params", "widht=3"],
        ["circuit", "circuit", "--method", "pca", "--set", "prune_tol=-1"],
        ["circuit", "circuit", "--method", "pca", "--params", "missing.yaml"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path / "o"), "--set", *TINY_SETTINGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decompbench: error:") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_downstream_aware_method_runs_through_the_pipeline() -> None:
    cfg = CircuitSettings(n_train=256, n_eval=128)
    params = {"width": 8, "steps": 30, "batch_size": 32}
    run = run_circuit("circuit", {}, "transcoder", params, ("merge",), 0, cfg)
    assert run.graph.meta["method"] == "transcoder"
    assert [s.site for s in run.score.sites] == ["l0", "l1"]
