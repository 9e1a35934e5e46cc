"""Selection among fitted settings (issue 17): the rule shared by every downstream-aware
method that fits several settings keeps off the tolerance edge, reads only (error, L0)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from decompbench.bench.runner import site_data, site_view
from decompbench.methods import downstream
from decompbench.methods.base import build_method
from decompbench.methods.downstream import Candidate, choose_setting
from decompbench.registry import get_method
from decompbench.toys.base import build_toy
from tests.conftest import fast_params

# Every method that selects among settings itself, its list field and its tolerance field.
SELECTING = [
    ("spd", "importance", "recon_tol"),
    ("transcoder", "l1", "tol"),
    ("transcoder-skip", "l1", "tol"),
    ("sae-e2e", "l1", "tol"),
    ("sae-e2e-ds", "l1", "tol"),
]


def edge_case(tol: float) -> list[Candidate]:
    """Issue 17's spd case scaled to ``tol``: the sparser fit sits just under the tolerance
    (0.88 tol), the denser one well inside it (0.02 tol)."""
    return [Candidate(error=0.02 * tol, l0=3.0), Candidate(error=0.88 * tol, l0=2.0)]


def edge_rule(cands: list[Candidate], tol: float) -> int:
    """The previous rule: error <= tol, then the smallest L0."""
    ok = [i for i, c in enumerate(cands) if c.error <= tol]
    return min(ok, key=lambda i: cands[i].l0)


@pytest.mark.parametrize(("method", "field", "tol_field"), SELECTING)
def test_robust_choice_differs_from_the_edge_choice(
    method: str, field: str, tol_field: str
) -> None:
    tol = float(get_method(method).Params().model_dump()[tol_field])
    cands = edge_case(tol)
    assert edge_rule(cands, tol) == 1
    assert choose_setting(cands, tol) == 0


def test_the_sparsest_fit_well_inside_the_tolerance_is_kept() -> None:
    cands = [Candidate(0.0001, 5.0), Candidate(0.002, 3.0), Candidate(0.004, 2.0),
             Candidate(0.015, 1.0)]  # fmt: skip
    assert choose_setting(cands, tol=0.02) == 2  # 0.004 <= 0.005; 0.015 is at the edge


def test_l0_ties_go_to_the_lower_error_and_nothing_inside_gives_the_most_accurate() -> None:
    assert choose_setting([Candidate(0.004, 2.0), Candidate(0.001, 2.05)], tol=0.02) == 1
    assert choose_setting([Candidate(0.3, 1.0), Candidate(0.01, 4.0)], tol=0.02) == 1
    assert choose_setting([Candidate(0.3, 1.0), Candidate(0.1, 4.0)], tol=0.02) == 1


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        choose_setting([], tol=0.02)


@pytest.mark.parametrize(("method", "field", "tol_field"), SELECTING)
def test_each_method_selects_with_the_shared_rule(
    method: str, field: str, tol_field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    seen: list[list[Candidate]] = []

    def spy(cands: list[Candidate], tol: float, margin: float = 4.0) -> int:
        seen.append(cands)
        return 0

    monkeypatch.setattr(downstream, "choose_setting", spy)
    toy = build_toy("composed", {"values": [3, 3], "d_model": 8, "use": "composed"}, seed=0)
    data = site_data(toy, "hidden", 512, 64, seed=0)
    params: dict[str, Any] = {**fast_params(method), "steps": 60, "warmup_steps": 10}
    params = {k: v for k, v in params.items() if k != "warmup_steps" or method == "spd"}
    params[field] = [0.001, 0.01]
    m = build_method(method, params)
    m.fit(site_view(toy, data, m), seed=0)
    assert len(seen) == 1 and len(seen[0]) == 2
    assert m.chosen == 0  # type: ignore[attr-defined]
