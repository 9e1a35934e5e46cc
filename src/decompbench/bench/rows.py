"""Verdict rows as plain-text cells: the one builder behind the terminal table, the HTML
report and the README's findings. Formatters (Rich, HTML, Markdown) only style these."""

from __future__ import annotations

from typing import Any

from decompbench.bench.verdict import Pick, StanceRow, Versus

STANCE_HEADERS = [
    "toy",
    "site",
    "stance",
    "stability",
    "best act-only (own rule) [95% CI] (chance)",
    "act-only baseline",
    "act-only (oracle)",
    "rel<=3 (chance)",
    "best downstream-aware (own rule)",
    "downstream baseline",
    "best twin strict (own rule)",
]

STANCE_MEANING = {
    "1": "activation-only is enough: a sensible activation-only method finds the model's features",
    "2a": "related by a sparse change of basis: the model's features are sparse mixes "
    "(<= 3 latents) of what an activation-only method finds",
    "2b": "misleading: activation-only methods neither find the model's features nor a "
    "sparse change of basis of them",
    "unresolved": "too few seeds, or the stance changes when seeds are resampled",
    "n/a": "no activation-only method ran",
}


def num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def pick_text(p: Pick | None, with_ci: bool = True) -> str:
    """``method k=v: score [lo-hi] (chance)``; ``!`` marks an unconverged setting."""
    if p is None:
        return "-"
    head = " ".join(x for x in (p.method, params_text(p.params)) if x)
    ci = f" [{num(p.score_ci[0])}-{num(p.score_ci[1])}]" if with_ci and p.score_ci else ""
    chance = f" ({num(p.chance)})" if p.chance is not None else ""
    flag = " !unconverged" if p.converged is False else ""
    return f"{head}: {num(p.score)}{ci}{chance}{flag}"


def versus_text(v: Versus) -> str:
    if v.best is None:
        return "-"
    text = pick_text(v.best)
    if v.beats_baseline is not None:
        text += " beats baseline" if v.beats_baseline else " does not beat baseline"
    return text


def best_twin_text(row: StanceRow) -> str:
    """The method whose own-rule picks score best on its worse twin."""
    scored = [(m, e["mcc_strict"]) for m, e in row.twin_own_rule.items() if e["mcc_strict"]]
    if not scored:
        return "-"
    method, value = max(scored, key=lambda kv: kv[1])
    return f"{method}: {num(value)}"


def stance_text(row: StanceRow) -> str:
    if row.stance == "unresolved":
        return f"unresolved ({row.provisional}?)"
    return row.stance


def stance_cells(row: StanceRow, toy_label: str) -> list[str]:
    """One verdict row as plain-text cells, in ``STANCE_HEADERS`` order."""
    rel = row.relatedness or {}
    return [
        toy_label,
        row.site,
        stance_text(row),
        num(row.stability),
        pick_text(row.activation_only.best),
        pick_text(row.activation_only.baseline, with_ci=False),
        pick_text(row.activation_only.oracle, with_ci=False),
        f"{num(rel.get('share3'))} ({num(rel.get('chance'))})",
        versus_text(row.downstream_aware),
        pick_text(row.downstream_aware.baseline, with_ci=False),
        best_twin_text(row),
    ]


def stance_legend(th: dict[str, Any]) -> str:
    """What the stance table's columns and labels mean, in one paragraph."""
    return (
        f"Score: {th.get('score')} (strict MCC; latents matched to data-only features are not "
        f"charged). Stance (1): the best activation-only method, its setting chosen by its "
        f"own rule (sparsest with FVU <= {th.get('fvu_target')}; no ground truth), reaches "
        f"{th.get('recover')} and beats the strongest null (its chance level or the best "
        f"activation-only baseline) by {th.get('margin')}; else (2a): at least "
        f"{th.get('sparse_share')} of the true features are sparse (<= 3 latents) mixes of "
        "its latents, beating the same null; else (2b). Which method is best is decided on "
        "the ground truth among the suite's methods (an oracle over methods, labelled "
        "method_selection in stance.json). [a-b]: 95% bootstrap interval over seeds; "
        "stability: share of seed resamples giving the same stance; a stance from fewer "
        f"than {th.get('min_seeds')} seeds or with stability below {th.get('stability')} "
        "is unresolved. Runs flagged !unconverged are left out of the verdict."
    )


def summary_sentence(row: StanceRow, toy_label: str) -> str:
    """One sentence per toy and site: the stance, what it rests on and what the twins show."""
    ao, da = row.activation_only, row.downstream_aware
    head = f"{toy_label} @ {row.site}: "
    if ao.best is None:
        return head + "no activation-only method ran."
    why = row.reason.removeprefix("unresolved: ")
    status = (
        f"stance ({row.stance})" if row.stance != "unresolved"
        else f"unresolved, provisionally ({row.provisional}); {why}"
    )  # fmt: skip
    base = (ao.baseline.score or 0.0) if ao.baseline is not None else 0.0
    null = max(ao.best.chance or 0.0, base)
    text = (
        f"{head}{status}: the best activation-only method ({ao.best.method}) scores strict "
        f"{num(ao.best.score)} against a null of {num(null)}"
    )
    if da.best is not None:
        verdict_da = {True: "beats", False: "does not beat", None: "has no"}[da.beats_baseline]
        text += f"; the best downstream-aware one ({da.best.method}) {num(da.best.score)}"
        text += f", and {verdict_da} the weights baseline"
    twins = best_twin_by_access(row)
    if twins:
        text += f". Twins (lower of the two, own rule): {twins}"
    return text + "."


def best_twin_by_access(row: StanceRow) -> str:
    """``act-only M 0.33, downstream-aware N 0.93`` from the own-rule twin scores."""
    best: dict[str, tuple[str, float]] = {}
    for method, entry in row.twin_own_rule.items():
        kind = "act-only" if entry["access"] == "activation_only" else "downstream-aware"
        score = entry.get("mcc_strict")
        if score is not None and (kind not in best or score > best[kind][1]):
            best[kind] = (method, score)
    return ", ".join(f"{k} {m} {num(v)}" for k, (m, v) in sorted(best.items()))
