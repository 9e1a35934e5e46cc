"""Property tests: malformed suites, CLI arguments and torn results files.

Every malformed input ends with exit code 2 and one line on stderr, never a traceback, and
nothing is written. The loader, fed arbitrary YAML-shaped data, either accepts it or raises
a one-line ``UserError``, nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decompbench.bench.results import Record, append_record, drop_torn_tail, scan_results
from decompbench.bench.suite import MAX_SEED, parse_suite
from decompbench.cli import main
from decompbench.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID: dict[str, Any] = {
    "seeds": [0],
    "n_train": 64,
    "n_eval": 32,
    "toys": [{"name": "composed", "params": {"values": [2, 2], "d_model": 4}}],
    "methods": [{"name": "pca"}, {"name": "sae-topk", "params": {"width": 4, "k": 1}}],
}
KEYS = ["seeds", "n_train", "n_eval", "toys", "methods", "name", "params", "sites", "values",
        "d_model", "use", "magnitude", "width", "k", "l1", "steps", "lr", "composed", "pca",
        "sae-topk", "hidden"]  # fmt: skip

# Small numbers only: a huge d_model would make the (valid) toy itself expensive to build.
scalars = (st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=True)
           | st.text(max_size=8) | st.sampled_from(KEYS))  # fmt: skip
yamlish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=25,
)


def one_line_exit_2(argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one line on stderr; return the line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    text = err.getvalue()
    assert code == 2, (argv, text)
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text and text.startswith("decompbench"), text
    return text


@FAST
@given(data=yamlish)
def test_loader_accepts_or_raises_one_line_user_error(data: Any) -> None:
    try:
        parse_suite(data, "h.yaml")
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith("h.yaml")


def with_poison(base: dict[str, Any], where: str, key: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    toy, method = out["toys"][0], out["methods"][1]
    target = {"top": out, "toy": toy, "toy_params": toy["params"], "method": method,
              "method_params": method["params"]}[where]  # fmt: skip
    target[key] = value
    return out


not_int = st.one_of(st.text(max_size=5), st.floats(), st.booleans(), st.none(),
                    st.lists(st.integers(), max_size=2))  # fmt: skip
# not a list of ints either (a list of ints, e.g. [0], is a valid `seeds`)
not_int_list = not_int.filter(lambda v: not (isinstance(v, list) and v))
POISONS = st.one_of(
    # unknown keys at every level
    st.tuples(st.sampled_from(["top", "toy", "method", "toy_params", "method_params"]),
              st.sampled_from(["sedes", "parms", "Width", "vaules", "x"]), scalars),
    # wrong types
    st.tuples(st.just("top"), st.just("seeds"), not_int_list | st.lists(not_int, min_size=1)),
    st.tuples(st.just("top"), st.sampled_from(["n_train", "n_eval"]), not_int),
    st.tuples(st.just("top"), st.sampled_from(["toys", "methods"]),
              st.just([]) | st.text(max_size=4) | st.integers()),
    st.tuples(st.sampled_from(["toy", "method"]), st.just("name"),
              st.integers() | st.text(max_size=8).filter(lambda s: s not in ("composed", "pca"))),
    st.tuples(st.sampled_from(["toy", "method"]), st.just("params"), st.lists(scalars)),
    st.tuples(st.just("toy"), st.just("sites"), st.just([]) | st.just(["hidden", "hidden"])
              | st.lists(st.text(max_size=3), min_size=1)),
    # out of range / inconsistent
    st.tuples(st.just("top"), st.just("seeds"),
              st.lists(st.integers(max_value=-1) | st.integers(min_value=MAX_SEED + 1), min_size=1)
              | st.just([1, 1])),
    st.tuples(st.just("top"), st.sampled_from(["n_train", "n_eval"]),
              st.integers(max_value=15) | st.integers(min_value=10**6 + 1)),
    st.tuples(st.just("method_params"), st.sampled_from(["width", "k", "steps", "batch_size"]),
              st.integers(max_value=0)),
    st.tuples(st.just("method_params"), st.just("k"), st.integers(5, 10**6)),  # k > width 4
    st.tuples(st.just("toy_params"), st.just("d_model"), st.integers(-5, 3)),  # < sum(values)
    st.tuples(st.just("toy_params"), st.just("magnitude"),
              st.tuples(st.floats(1.1, 5), st.floats(0, 1)).map(list)),
    # non-finite numbers
    st.tuples(st.sampled_from(["method_params", "toy_params"]), st.sampled_from(["lr", "p_absent"]),
              st.sampled_from([float("nan"), float("inf"), float("-inf")])),
)  # fmt: skip


@FAST
@given(poison=POISONS)
def test_cli_malformed_suite_exits_2_with_one_line_and_writes_nothing(poison: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "bad.yaml", Path(tmp) / "out"
        path.write_text(yaml.safe_dump(with_poison(VALID, *poison)))
        one_line_exit_2(["run", str(path), "--out", str(out), "--quiet"])
        assert not out.exists()


@FAST
@given(content=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_cli_arbitrary_file_content_exits_2(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "bad.yaml", Path(tmp) / "out"
        path.write_bytes(content)
        one_line_exit_2(["run", str(path), "--out", str(out), "--quiet"])
        assert not out.exists()


def valid_seeds(text: str) -> bool:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        return False
    return bool(seeds) and len(set(seeds)) == len(seeds) and all(0 <= s <= MAX_SEED for s in seeds)


bad_args = st.one_of(
    st.tuples(st.just("--seeds"), st.text(max_size=12).filter(lambda t: not valid_seeds(t))),
    st.tuples(st.text(min_size=1, max_size=12).map(lambda t: "--" + t)
              .filter(lambda t: t.split("=")[0] not in ("--seeds", "--out", "--quiet", "--force",
                                                         "--yes", "--help", "--h", "--he", "--hel",
                                                         "--q", "--qu", "--qui", "--quie", "--f",
                                                         "--fo", "--for", "--forc", "--y", "--ye",
                                                         "--s", "--se", "--see", "--seed", "--o",
                                                         "--ou"))),
    st.tuples(st.just("--seeds")),
)  # fmt: skip


@FAST
@given(extra=bad_args)
def test_cli_bad_arguments_exit_2_with_one_line(extra: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "ok.yaml", Path(tmp) / "out"
        path.write_text(yaml.safe_dump(VALID))
        one_line_exit_2(["run", str(path), "--out", str(out), "--quiet", *extra])
        assert not out.exists()


@FAST
@given(word=st.text(max_size=10).filter(lambda w: w not in ("list", "run", "show")
                                         and not w.startswith("-")))  # fmt: skip
def test_cli_unknown_command_or_missing_dir_exits_2(word: str) -> None:
    one_line_exit_2([word])
    name = word.replace("/", "_").replace("\0", "") or "x"
    with tempfile.TemporaryDirectory() as tmp:
        one_line_exit_2(["show", str(Path(tmp) / name)])


RECORD = Record(toy="t", toy_params={"a": [1, 2]}, site="s", method="m", method_params={},
                access="activation_only", directions="decoder", seed=0, status="ok",
                metrics={"mcc": 0.5, "l0": 2}, wall_s=0.1, run_id="0" * 16)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 4), cut=st.floats(0, 1))
def test_a_results_file_cut_at_any_byte_keeps_exactly_its_whole_lines(n: int, cut: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.jsonl"
        for i in range(n):
            append_record(path, RECORD.model_copy(update={"seed": i}))
        raw = path.read_bytes()
        k = int(cut * len(raw))
        path.write_bytes(raw[:k])
        stored = scan_results(path)
        assert [r.seed for r in stored.records] == list(range(raw[:k].count(b"\n")))
        drop_torn_tail(path, stored)
        append_record(path, RECORD.model_copy(update={"seed": 99}))
        assert [r.seed for r in scan_results(path).records] == [*range(len(stored.records)), 99]
