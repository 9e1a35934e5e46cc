"""The command line: list, run, show, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from decompbench.cli import main

TINY = {
    "seeds": [0],
    "n_train": 512,
    "n_eval": 256,
    "toys": [
        {"name": "composed", "params": {"values": [2, 2], "d_model": 4, "use": u}}
        for u in ("factored", "composed")
    ],
    "methods": [
        {"name": "pca"},
        {"name": "sae-topk", "params": {"width": 4, "k": 1, "steps": 50, "batch_size": 32}},
    ],
}
RECORD_KEYS = {"toy", "toy_params", "site", "method", "method_params", "seed", "status",
               "error", "metrics", "wall_s", "run_id", "n_train", "n_eval"}  # fmt: skip
METRIC_KEYS = {"mmcs", "mcc", "mcc_strict", "mcc_act", "recall", "precision", "composition",
               "fvu", "l0", "dead_frac", "n_alive", "mcc_chance", "mcc_strict_chance",
               "mmcs_chance", "mcc_act_chance", "recall_chance"}  # fmt: skip


def write(tmp_path: Path, data: object, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_list_names_every_toy_and_method_with_access(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("composed", "pca", "sae-relu", "sae-topk"):
        assert name in out
    assert "activation-only" in out


def test_run_writes_one_record_per_run_and_a_suite_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 * 2  # 2 toys x 1 site x 2 methods x 1 seed
    for r in records:
        assert set(r) >= RECORD_KEYS and r["status"] == "ok"
        assert set(r["metrics"]) >= METRIC_KEYS
    assert yaml.safe_load((out / "suite.yaml").read_text()) == TINY
    printed = capsys.readouterr().out
    assert "twin MCC" in printed and "sae-topk" in printed
    assert main(["show", str(out)]) == 0
    assert "twin MCC" in capsys.readouterr().out


def test_seeds_flag_overrides_the_suite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", str(write(tmp_path, TINY)), "--out", str(out), "--quiet", "--seeds", "3,4"]
    assert main(args) == 0
    seeds = {json.loads(line)["seed"] for line in (out / "results.jsonl").read_text().splitlines()}
    assert seeds == {3, 4}


def test_rerun_resumes_keeps_other_settings_marked_prune_drops_them_force_starts_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    suite = str(write(tmp_path, TINY))
    assert main(["run", suite, "--out", str(out), "--quiet"]) == 0
    before = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert main(["run", suite, "--out", str(out), "--quiet"]) == 0  # resume: nothing to do
    assert "0 run now, 4 skipped" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text() == before
    # a changed suite runs its new runs; the old ones stay recorded and are marked
    other = str(write(tmp_path, {**TINY, "n_eval": 128}, "other.yaml"))
    assert main(["run", other, "--out", str(out), "--quiet"]) == 0
    assert "4 run now" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["n_eval"] for r in records) == [128] * 4 + [256] * 4
    assert main(["show", str(out), "--format", "json"]) == 0
    tables = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tables"]}
    assert len(tables["not_in_suite"]["rows"]) == 4
    assert sum(len(t["rows"]) for n, t in tables.items() if n == "scores") == 4
    # --prune drops them
    assert main(["run", other, "--out", str(out), "--quiet", "--prune"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["n_eval"] for r in records] == [128] * 4
    assert main(["run", suite, "--out", str(out), "--quiet", "--force"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["n_eval"] for r in records} == {256}


def bad_suites() -> list[tuple[str, object, str]]:
    toy0 = TINY["toys"][0]  # type: ignore[index]
    return [
        ("misspelled top key", {**TINY, "sedes": [0]}, "unknown key 'sedes'"),
        ("misspelled toy param", {**TINY, "toys": [{**toy0, "params": {"vaules": [2]}}]},
         "unknown key 'vaules'"),
        ("misspelled method key", {**TINY, "methods": [{"name": "pca", "parms": {}}]},
         "unknown key 'methods.0.parms'"),
        ("unknown toy", {**TINY, "toys": [{"name": "nope"}]}, "unknown toy 'nope'"),
        ("unknown method", {**TINY, "methods": [{"name": "sae-nope"}]}, "unknown method"),
        ("wrong type", {**TINY, "seeds": "zero"}, "seeds"),
        ("bad method value", {**TINY, "methods": [{"name": "sae-relu", "params": {"l1": -1}}]},
         "l1"),
        ("no threshold", {**TINY, "toys": [{"name": "composed", "params": {
            "use": "composed", "magnitude": [0.2, 1.0]}}]}, "no exact conjunction"),
        ("unknown site", {**TINY, "toys": [{**toy0, "sites": ["out"]}]}, "no site 'out'"),
        ("not a mapping", "- just\n- a list\n", "must be a mapping"),
        ("unparsable", "toys: [unclosed\n", "invalid YAML"),
        ("empty", "", "must be a mapping"),
    ]  # fmt: skip


@pytest.mark.parametrize(("case", "data", "fragment"), bad_suites(), ids=lambda x: str(x)[:20])
def test_bad_suite_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, data: object, fragment: str
) -> None:
    path = write(tmp_path, data, "bad.yaml")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    if not isinstance(data, str):
        assert "bad.yaml" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "missing.yaml"],
        ["run", "--seeds", "a,b"],
        ["show", "nowhere"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_command_lines_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_console_script_misspelled_key_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, {**TINY, "methods": [{"name": "pca", "params": {"widht": 3}}]})
    proc = subprocess.run(
        [sys.executable, "-m", "decompbench.cli", "run", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown key 'widht'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_toy_level_method_filter_limits_runs(tmp_path: Path) -> None:
    toys = [{**t, "methods": ["pca"]} for t in TINY["toys"]]  # type: ignore[attr-defined]
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, {**TINY, "toys": toys})), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    methods = {
        json.loads(line)["method"] for line in (out / "results.jsonl").read_text().splitlines()
    }
    assert methods == {"pca"}


def test_toy_level_method_filter_must_name_suite_methods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toys = [{**TINY["toys"][0], "methods": ["ica"]}]  # type: ignore[index]
    assert main(["run", str(write(tmp_path, {**TINY, "toys": toys})), "--quiet"]) == 2
    assert "'ica' is not among the suite's methods" in capsys.readouterr().err
