"""Issue 19, a newcomer's first hour: tables that never cut a cell, unwritable run
directories, YAML alias bombs, strict types, and `run DIR`. Every bad input ends with one
line on stderr and exit code 2, before anything is trained or written."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from decompbench.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Parameters that vary between runs make long labels (the cells that used to be cut).
SUITE: dict[str, Any] = {
    "seeds": [0],
    "n_train": 256,
    "n_eval": 128,
    "toys": [
        {"name": "composed", "params": {"values": [2, 2], "d_model": 4, "use": u}}
        for u in ("factored", "composed")
    ],
    "methods": [
        {"name": "pca"},
        *({"name": "sae-relu", "params": {"width": 4, "steps": 20, "batch_size": 32, "l1": l1}}
          for l1 in (0.001, 0.0031622776601683794, 0.1)),
    ],
}  # fmt: skip


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "decompbench.cli", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("newcomer")
    (tmp / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    out = tmp / "out"
    assert main(["run", str(tmp / "suite.yaml"), "--out", str(out), "--quiet"]) == 0
    return out


def test_show_piped_at_80_columns_cuts_no_cell(run_dir: Path) -> None:
    res = cli("show", str(run_dir), env={**ENV, "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("…") == 0
    assert "l1=0.0031622776601683794" in res.stdout  # the full label, on one line


def test_show_on_a_narrow_terminal_wraps_instead_of_cutting(run_dir: Path) -> None:
    from rich.console import Console

    from decompbench.bench.results import read_records
    from decompbench.bench.table import print_tables

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    print_tables(read_records(run_dir), None, console=console)
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_show_format_md_is_a_github_table(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(run_dir), "--format", "md"]) == 0
    text = capsys.readouterr().out
    blocks = [b for b in text.split("### ") if b.strip()]
    assert len(blocks) >= 2  # scores, twins (and the stance)
    for block in blocks:
        body = block.split("\n\n")[1]  # heading, blank line, the table (a caption after)
        rows = body.splitlines()
        assert rows[0].startswith("| toy |") and set(rows[1]) <= set("|- ")
        width = rows[0].count(" | ")
        assert all(r.startswith("| ") and r.endswith(" |") for r in rows)
        assert all(r.replace("\\|", "").count(" | ") == width for r in rows)
    assert "l1=0.0031622776601683794" in text and "…" not in text


def test_show_format_csv_and_json_hold_every_row(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["show", str(run_dir), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    scores = [r for r in rows if r and r[0] == "scores"]
    assert len(scores) == 2 * 4  # 2 toys x 4 methods
    assert main(["show", str(run_dir), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    table = next(t for t in doc["tables"] if t["name"] == "scores")
    assert len(table["rows"]) == 8 and table["columns"][:3] == ["toy", "site", "method"]


# --- unwritable run directories -----------------------------------------------------------


def unprivileged() -> list[str]:
    """A prefix that runs a command subject to file permissions (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return prefix


def read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_as_user(*args: str) -> Any:
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "decompbench.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def copy_of_run(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ro"
    shutil.copytree(run_dir, out)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    return out


def assert_one_line_exit_2(res: Any, fragment: str) -> None:
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert fragment in res.stderr


@pytest.mark.parametrize("extra", [[], ["--force"]], ids=["resume", "force"])
def test_a_read_only_finished_run_is_refused_and_left_alone(
    copy_of_run: Path, extra: list[str]
) -> None:
    read_only(copy_of_run)
    before = snapshot(copy_of_run)
    suite = str(copy_of_run.parent / "suite.yaml")
    res = run_as_user("run", suite, "--out", str(copy_of_run), "--quiet", *extra)
    assert_one_line_exit_2(res, "cannot write")
    assert snapshot(copy_of_run) == before


def test_a_read_only_results_file_is_refused_before_training(copy_of_run: Path) -> None:
    results = copy_of_run / "results.jsonl"
    results.chmod(0o444)
    before = snapshot(copy_of_run)
    grown = {**SUITE, "seeds": [0, 1]}  # new runs to do
    (copy_of_run.parent / "grown.yaml").write_text(yaml.safe_dump(grown))
    res = run_as_user("run", str(copy_of_run.parent / "grown.yaml"), "--out", str(copy_of_run))
    assert_one_line_exit_2(res, "results.jsonl")
    assert "decompbench: [" not in res.stderr  # no run was started (no progress line)
    assert snapshot(copy_of_run) == before


# --- suite files -----------------------------------------------------------------------


def bomb(indent: int, depth: int = 24) -> str:
    """YAML mapping lines whose aliases expand to 2**depth values in a few hundred bytes."""
    lines = ["a0: &a0 [1, 1]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, depth)]
    return "".join(" " * indent + line + "\n" for line in lines)


# The bomb inside a params block (the case that hung: params are free-form until the
# method's model validates them) and at top level.
BOMBED = {
    "method": "toys: [{name: composed}]\nmethods:\n  - name: pca\n    params:\n" + bomb(6),
    "toy": "toys:\n  - name: composed\n    params:\n" + bomb(6) + "methods: [{name: pca}]\n",
    "top": bomb(0) + "toys: [{name: composed}]\nmethods: [{name: pca}]\n",
}


class Hang(Exception):
    """Raised by SIGALRM when an in-process CLI call exceeds its time bound."""


@contextlib.contextmanager
def time_bound(seconds: int) -> Iterator[None]:
    """Fail (rather than hang) a block that runs longer than ``seconds``."""

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def in_process(argv: list[str], bound: int = 60) -> tuple[int, str]:
    """``main(argv)`` with stderr captured, bounded in time."""
    err = io.StringIO()
    with (
        time_bound(bound),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(argv)
    return code, err.getvalue()


def test_an_alias_bomb_in_method_params_is_refused_within_a_time_bound(tmp_path: Path) -> None:
    """The case that used to hang (> 170 s): a subprocess, bounded by its timeout."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBED["method"])
    res = cli("run", str(path), "--out", str(tmp_path / "o"), "--quiet", timeout=60)
    assert_one_line_exit_2(res, "bomb.yaml: too large: YAML aliases expand to more than")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", sorted(BOMBED))
def test_a_yaml_alias_bomb_anywhere_is_refused(tmp_path: Path, where: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBED[where])
    code, err = in_process(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and err.count("\n") == 1, err
    assert "bomb.yaml: too large: YAML aliases expand" in err
    assert not (tmp_path / "o").exists()


def test_a_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("toys: [{name: composed}]\nmethods: [{name: pca, params: &p {x: *p}}]\n")
    code, err = in_process(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and err.count("\n") == 1 and "refers to itself" in err, err


STRICT_CASES = [
    ("method", "sae-topk", "width", "16"),
    ("method", "sae-topk", "width", True),
    ("method", "sae-topk", "width", 16.0),
    ("method", "sae-relu", "l1", "0.1"),
    ("method", "sae-relu", "l1", True),
    ("method", "sae-relu", "normalize", 1),
    ("method", "pca", "width", "4"),
    ("toy", "composed", "d_model", "16"),
    ("toy", "composed", "d_model", 16.0),
    ("toy", "composed", "values", [4, "4"]),
    ("toy", "composed", "p_absent", "0"),
    ("toy", "composed", "magnitude", [1, "2"]),
    ("toy", "tms", "n_features", True),
    ("toy", "planted", "d", 8.0),
]


@pytest.mark.parametrize(("kind", "name", "key", "value"), STRICT_CASES)
def test_wrong_types_are_rejected_naming_the_key_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, name: str, key: str, value: Any
) -> None:
    toy: dict[str, Any] = {"name": "composed"}
    method: dict[str, Any] = {"name": "pca"}
    entry = toy if kind == "toy" else method
    entry.update(name=name, params={key: value})
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump({"toys": [toy], "methods": [method]}))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "typed.yaml" in err and key in err, err
    assert not (tmp_path / "o").exists()


def test_ints_are_accepted_for_floats_and_lists_for_pairs() -> None:
    from decompbench.methods.base import build_method
    from decompbench.toys.composed import ComposedParams

    m = build_method("sae-relu", {"l1": 1, "lr": 1})
    assert m.params.l1 == 1.0 and isinstance(m.params.l1, float)  # type: ignore[attr-defined]
    p = ComposedParams.model_validate({"magnitude": [1, 2], "values": [2, 2], "d_model": 4})
    assert p.magnitude == (1.0, 2.0)


@pytest.mark.parametrize("values", [[1], [4, 1], [0, 4]])
def test_composed_factors_need_two_values(tmp_path: Path, values: list[int]) -> None:
    from decompbench.config import validate
    from decompbench.errors import UserError
    from decompbench.toys.composed import ComposedParams

    with pytest.raises(UserError, match="at least 2 values"):
        validate(ComposedParams, {"values": values, "d_model": 16}, "x.yaml")


def test_run_given_a_directory_says_so(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory, not a suite file" in err
    assert f"decompbench run {run_dir / 'suite.yaml'} --out {run_dir}" in err


# --- parameters from the CLI -------------------------------------------------------------


def registry_params() -> list[tuple[str, str, type[Any]]]:
    from decompbench.registry import all_methods, all_toys

    return [("method", n, c.Params) for n, c in all_methods().items()] + [
        ("toy", n, c.Params) for n, c in all_toys().items()
    ]


def test_every_params_field_of_every_method_and_toy_has_a_description() -> None:
    missing = [
        f"{kind} {name}: {field}"
        for kind, name, model in registry_params()
        for field, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, missing


@pytest.mark.parametrize(("kind", "name", "model"), registry_params(), ids=lambda x: str(x))
def test_params_lists_every_field_with_type_default_bounds_and_description(
    capsys: pytest.CaptureFixture, kind: str, name: str, model: type[Any]
) -> None:
    assert main(["params", name]) == 0
    text = capsys.readouterr().out
    assert f"{kind} {name}" in text and "…" not in text
    lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip()}
    for field, info in model.model_fields.items():
        assert field in lines, field
        assert (info.description or "") in lines[field]


def test_params_shows_bounds_and_describe_of_a_method_prints_its_params(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["params", "sae-topk"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["k"])
    assert line.split()[1:4] == ["int", "4", ">="] and "active latents per sample" in line
    assert main(["describe", "sae-topk"]) == 0
    assert "active latents per sample" in capsys.readouterr().out
    assert main(["params", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method or toy 'nope'" in err


def test_help_lists_every_subcommand() -> None:
    from decompbench.cli import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    words = " " + " ".join((parser.description or "").replace("|", " ").replace("`", " ").split())
    for name in subparsers.choices:  # type: ignore[union-attr]
        assert name in help_text and f" {name} " in words + " ", name


def test_progress_lines_tell_twins_and_sweeps_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SUITE, "methods": SUITE["methods"][:3]}))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "] ok " in x]
    labels = [x.split("] ok ", 1)[1].split(" (", 1)[0] for x in lines]
    assert len(labels) == len(set(labels)) == 6, labels
    assert "composed[use=factored]@hidden pca seed 0" in labels
    assert "composed[use=composed]@hidden sae-relu[l1=0.001] seed 0" in labels


@pytest.mark.parametrize("method", ["lib", "grad-pca"])
def test_the_builtin_suite_does_not_plan_the_runs_that_cannot_work(method: str) -> None:
    """`make demo` used to end with 2 failed runs: lib and grad-pca at circuit's l0, where
    the output does not respond to the site. They fail by construction, so the built-in
    suite does not plan them (and the demo exits 0)."""
    from decompbench.bench.runner import site_data, site_view
    from decompbench.bench.suite import load_suite, plan_runs
    from decompbench.errors import UserError
    from decompbench.methods.base import build_method
    from decompbench.toys.base import build_toy

    plan = plan_runs(load_suite(None)[0])
    at = {(r.toy.name, r.site, r.method.name) for r in plan}
    assert ("circuit", "l0", method) not in at and ("circuit", "l1", method) in at
    toy = build_toy("circuit", {}, 0)
    data = site_data(toy, "l0", 512, 64, 0)
    m = build_method(method, {})
    with pytest.raises(UserError, match="does not respond to site 'l0'"):
        m.fit(site_view(toy, data, m), 0)
