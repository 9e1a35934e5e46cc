"""Fuzzing suite files (issue 19): wrong types, YAML aliases (up to alias bombs) and
unwritable run directories. Every case ends with exit code 0, 1 or 2, never a traceback or
a hang; exit 2 prints exactly one line and writes nothing.

The type and alias cases call ``main`` in-process (the report, tested elsewhere, is
stubbed to keep each example fast); the permission cases run the CLI in a subprocess
subject to file permissions, bounded by a timeout. The ``slow`` variants run more examples.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decompbench.cli import main
from tests.test_newcomer import ENV, read_only, snapshot, time_bound, unprivileged

BASE: dict[str, Any] = {
    "seeds": [0],
    "n_train": 64,
    "n_eval": 32,
    "toys": [{"name": "composed", "params": {"values": [2, 2], "d_model": 4}}],
    "methods": [{"name": "pca", "params": {"width": 2}}],
}
PLACES = ["top", "toy", "toy_params", "method", "method_params"]
KEYS = ["seeds", "n_train", "n_eval", "name", "params", "sites", "values", "d_model", "use",
        "magnitude", "p_absent", "width", "rel_tol", "methods", "x"]  # fmt: skip
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["16", "4", "1e-3", "true", "pca", "composed", "hidden", "factored", ""]),
    st.lists(st.integers(-1, 5) | st.sampled_from(["2", 2.0, True]), max_size=3),
    st.dictionaries(st.sampled_from(KEYS), st.integers(0, 4), max_size=2),
)  # fmt: skip


def alias_bomb(depth: int) -> list[Any]:
    """Nested lists sharing one object per level: ``yaml.safe_dump`` writes them with
    anchors and aliases, 2**depth leaves in a file of ``depth`` lines."""
    node: list[Any] = [1, 1]
    for _ in range(depth):
        node = [node, node]
    return node


values = junk | st.integers(1, 30).map(alias_bomb)
mutation = st.tuples(st.sampled_from(PLACES), st.sampled_from(KEYS), values)


def mutated(changes: list[tuple[str, str, Any]], share: bool) -> dict[str, Any]:
    suite = copy.deepcopy(BASE)
    toy, method = suite["toys"][0], suite["methods"][0]
    for place, key, value in changes:
        target = {"top": suite, "toy": toy, "toy_params": toy["params"], "method": method,
                  "method_params": method["params"]}[place]  # fmt: skip
        if isinstance(target, dict):
            target[key] = value
    if share and isinstance(suite["methods"], list):  # one params object twice: an alias
        suite["methods"].append({"name": "pca", "params": method["params"]})
    return suite


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``, bounded in time (a hang fails the example instead of the run)."""
    err = io.StringIO()
    with (
        time_bound(60),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def check_outcome(code: int, err: str, out: Path) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("decompbench"), err
        assert not out.exists()
    else:
        assert err == "", err  # --quiet: nothing on stderr
        assert (out / "results.jsonl").is_file()


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from decompbench.bench import report

    monkeypatch.setattr(report, "write_report", lambda out, jobs=1: out / report.REPORT)


def fuzz_types_and_aliases(changes: list[tuple[str, str, Any]], share: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "fuzz.yaml", Path(tmp) / "out"
        path.write_text(yaml.safe_dump(mutated(changes, share)))
        code, err = run_in_process(["run", str(path), "--out", str(out), "--quiet", "--jobs", "1"])
        check_outcome(code, err, out)


SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=40, **SETTINGS)  # type: ignore[arg-type]
@given(changes=st.lists(mutation, min_size=1, max_size=3), share=st.booleans())
def test_fuzzed_suites_exit_0_1_or_2_with_one_line(
    no_report: None, changes: list[tuple[str, str, Any]], share: bool
) -> None:
    fuzz_types_and_aliases(changes, share)


@pytest.mark.slow
@settings(max_examples=400, **SETTINGS)  # type: ignore[arg-type]
@given(changes=st.lists(mutation, min_size=1, max_size=5), share=st.booleans())
def test_fuzzed_suites_many(
    no_report: None, changes: list[tuple[str, str, Any]], share: bool
) -> None:
    fuzz_types_and_aliases(changes, share)


# --- permissions (a subprocess subject to file permissions, bounded in time) --------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzzperm")
    (tmp / "suite.yaml").write_text(yaml.safe_dump(BASE))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(tmp / "suite.yaml"), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out"


TARGETS = ["", "results.jsonl", "suite.yaml", "plan.json", "artefacts", ".decompbench.lock"]


def fuzz_permissions(finished: Path, targets: list[str], flags: list[str], grow: bool) -> None:
    prefix = unprivileged()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        shutil.copytree(finished, out)
        suite = Path(tmp) / "suite.yaml"
        suite.write_text(yaml.safe_dump({**BASE, "seeds": [0, 1] if grow else [0]}))
        for t in targets:
            p = out / t if t else out
            if p.is_dir():
                read_only(p)
            elif p.exists():
                p.chmod(0o444)
        Path(tmp).chmod(0o777)
        before = snapshot(out)
        res = subprocess.run(
            [*prefix, sys.executable, "-m", "decompbench.cli", "run", str(suite), "--out",
             str(out), "--quiet", "--jobs", "1", *flags],
            env=ENV, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert res.returncode in (0, 1, 2) and "Traceback" not in res.stderr, res.stderr
        if res.returncode == 2:
            assert res.stderr.count("\n") == 1, res.stderr
            assert snapshot(out) == before  # refused before anything was written
        for p in [out, *out.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


flag_sets = st.lists(st.sampled_from(["--force", "--keep-failed", "--prune"]), unique=True)


@settings(max_examples=2, **SETTINGS)  # type: ignore[arg-type]
@given(targets=st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2, unique=True),
       flags=flag_sets, grow=st.booleans())  # fmt: skip
def test_fuzzed_permissions_exit_0_1_or_2_with_one_line(
    finished: Path, targets: list[str], flags: list[str], grow: bool
) -> None:
    fuzz_permissions(finished, targets, flags, grow)


@pytest.mark.slow
@settings(max_examples=30, **SETTINGS)  # type: ignore[arg-type]
@given(targets=st.lists(st.sampled_from(TARGETS), max_size=3, unique=True), flags=flag_sets,
       grow=st.booleans())  # fmt: skip
def test_fuzzed_permissions_many(
    finished: Path, targets: list[str], flags: list[str], grow: bool
) -> None:
    fuzz_permissions(finished, targets, flags, grow)
