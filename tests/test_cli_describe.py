"""`decompbench describe`: sites, true features, data-only, groups, edges; bad params exit 2."""

from __future__ import annotations

import pytest

from decompbench.cli import main
from decompbench.describe import parse_params


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["describe", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_lists_sites_feature_counts_model_and_data_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["square", "--params", "n_neurons=4", "use=cube"], capsys)
    assert code == 0
    assert "site hidden: d=4, 4 true features (1 model, 3 data-only)" in out
    assert "W_out" in out and "data0, data1, data2" in out
    assert "use=cube" in out and "edges: none" in out


def test_describe_shows_factor_groups_from_yaml_lists(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["composed", "--params", "values=[3,2]", "d_model=8"], capsys)
    assert code == 0
    assert "5 true features (5 model, 0 data-only)" in out
    assert "g0={f0=0 f0=1 f0=2}" in out and "g1={f1=0 f1=1}" in out


def test_describe_prints_edges_grouped_by_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["circuit", "--params", "gates=[0&2, 4|9]"], capsys)
    assert code == 0
    assert "site l0: d=8, 12 true features (4 model, 8 data-only)" in out
    assert "edges: 4" in out
    assert "l1.0&2 <- l0.x0, l0.x2" in out and "l1.4|9 <- l0.x4, l0.x9" in out


def test_describe_groups_fanning_out_edges_by_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["superposed-circuits"], capsys)
    assert code == 0
    assert "site neurons: d=48, 96 true features (96 model, 0 data-only)" in out
    assert "edges: 96" in out and "resid.x0 -> neurons.f0.0, neurons.f0.1," in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["curve", "--params", "n_unit=20"], "unknown key 'n_unit'"),
        (["curve", "--params", "n_units=many"], "n_units"),
        (["curve", "--params", "n_units=4"], "too wide"),
        (["curve", "--params", "n_units"], "expected key=value"),
        (["curve", "--params", "n_units=20", "n_units=30"], "given twice"),
        (["curve", "--params", "n_units=[1,"], "cannot parse"),
        (["no-such-toy"], "unknown toy"),
    ],
)
def test_bad_params_exit_2_with_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and fragment in err, err


def test_parse_params_reads_yaml_scalars_and_lists() -> None:
    parsed = parse_params(["values=[4,4]", "use=composed", "p_absent=0.25", "flag=true"])
    assert parsed == {"values": [4, 4], "use": "composed", "p_absent": 0.25, "flag": True}
