"""The stance verdict per (toy, site), from the runs' records, as typed rows.

For every method, each of its parameter settings is averaged over seeds, then one setting
is chosen twice: by the method's *own* rule (the sparsest setting whose FVU meets a
target; no ground truth) and by the *oracle* (best recovery). Settings of gradient-trained
runs that did not converge (``converged == 0`` on any seed) are left out of both choices;
the row lists them. Baselines (``random``, ``weights``: methods whose class sets
``baseline = True``) are chosen the same way but kept apart.

Across the methods of one access class the row names the method whose own-rule setting
scores best on the ground truth: the *setting* is self-selected, the *method* is an oracle
choice over the suite's methods, and the row says so (``setting_selection``,
``method_selection``). The verdict uses the best activation-only method and compares it
with the strongest null: the larger of its chance level and the best activation-only
baseline's score:

* stance (1)  if its recovery reaches ``recover`` and beats that null by ``margin``;
* stance (2a) else if most true features are sparse mixes of its latents (share with
  relatedness <= 3 reaches ``sparse_share`` and beats its null by ``margin``);
* stance (2b) otherwise.

Uncertainty: seeds are resampled with replacement (``n_boot`` times, a fixed generator) and
the whole decision is made again on each resample. ``score_ci`` is the 2.5-97.5 %
interval of each chosen setting's mean score over resamples, ``stability`` the share of
resamples that give the same stance. A stance from fewer than ``min_seeds`` seeds, or with
stability below ``stability``, is reported as ``unresolved`` (the point estimate stays in
``provisional``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from decompbench.bench.results import Record, write_text_atomic

TWIN_KEY = "use"
BOOT_KEYS = ("fvu", "l0", "n_alive", "rel_dir_share3", "rel_dir_share3_chance")
L0_TIE = 0.05  # own rule: L0 values within 5 % of the sparsest count as equally sparse
StanceName = Literal["1", "2a", "2b", "n/a"]


@dataclass(frozen=True)
class Thresholds:
    score: str = "mcc_strict"
    recover: float = 0.9
    margin: float = 0.1
    sparse_share: float = 0.5
    fvu_target: float = 0.1
    stability: float = 0.8  # below: unresolved
    min_seeds: int = 3  # fewer: unresolved
    n_boot: int = 1000


@dataclass(frozen=True)
class Setting:
    """One method with one parameter setting; metrics averaged over its seeds."""

    method: str
    params: dict[str, Any]
    access: str
    lines: tuple[int, ...]
    metrics: dict[str, float | None]
    seeds: tuple[int, ...] = ()
    per_seed: tuple[dict[str, float | None], ...] = ()
    baseline: bool = False
    # False when any seed's run did not converge; None when no run reports it.
    converged: bool | None = None

    def get(self, key: str) -> float | None:
        return self.metrics.get(key)

    def num(self, key: str, missing: float) -> float:
        value = self.metrics.get(key)
        return missing if value is None else value

    @property
    def label(self) -> str:
        return setting_label(self)


@dataclass(frozen=True)
class Pick:
    """A chosen setting as shown in a verdict row."""

    method: str
    params: dict[str, Any]
    score: float | None
    score_ci: tuple[float, float] | None
    chance: float | None
    setting_selection: Literal["own rule", "oracle"]
    method_selection: Literal["oracle", "only method"]
    converged: bool | None
    n_seeds: int
    results_lines: list[int]


@dataclass(frozen=True)
class Versus:
    """The best method of an access class against the best baseline of that class."""

    best: Pick | None
    oracle: Pick | None
    baseline: Pick | None
    beats_baseline: bool | None


@dataclass(frozen=True)
class StanceRow:
    """One verdict row: (toy, toy params, site), shared by the table, report and JSON."""

    toy: str
    toy_params: dict[str, Any]
    site: str
    stance: str  # "1", "2a", "2b", "n/a" or "unresolved"
    provisional: StanceName
    stability: float | None
    reason: str
    n_seeds: int
    activation_only: Versus
    downstream_aware: Versus
    relatedness: dict[str, float | None] | None
    excluded_unconverged: list[str]
    twin_scores: dict[str, Any] = field(default_factory=dict)
    twin_own_rule: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def average(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    keys = sorted({k for r in rows for k in r})
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [float(v) for r in rows if (v := r.get(k)) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def settings_of(
    records: list[tuple[int, Record]], baselines: frozenset[str] = frozenset()
) -> list[Setting]:
    """Group ok records of one (toy, site) by method and parameters; average over seeds."""
    groups: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    for line, r in records:
        if r.status == "ok":
            groups[json.dumps([r.method, r.method_params], sort_keys=True)].append((line, r))
    out = []
    for rs in groups.values():
        first = rs[0][1]
        per_seed = tuple({k: _num(v) for k, v in r.metrics.items()} for _, r in rs)
        out.append(
            Setting(first.method, first.method_params, first.access,
                    tuple(line for line, _ in rs), average(list(per_seed)),
                    tuple(r.seed for _, r in rs), per_seed, first.method in baselines,
                    all_converged(per_seed))
        )  # fmt: skip
    return out


def all_converged(per_seed: tuple[dict[str, float | None], ...]) -> bool | None:
    known = [f for m in per_seed if (f := m.get("converged")) is not None]
    return None if not known else all(f >= 0.5 for f in known)


def _num(v: float | int | None) -> float | None:
    return None if v is None else float(v)


def self_select(settings: list[Setting], th: Thresholds) -> Setting:
    """The method's own rule (no ground truth): among settings with FVU <= target, the
    sparsest (lowest L0); settings within ``L0_TIE`` of that L0 tie, and the tie goes to
    the fewest alive latents (the shorter description), then the lowest FVU. When no
    setting meets the target: the lowest FVU."""
    inf = float("inf")
    good = [s for s in settings if s.num("fvu", inf) <= th.fvu_target]
    if not good:
        return min(settings, key=lambda s: s.num("fvu", inf))
    sparsest = min(s.num("l0", inf) for s in good)
    near = [s for s in good if s.num("l0", inf) <= sparsest * (1 + L0_TIE)]
    return min(near, key=lambda s: (s.num("n_alive", inf), s.num("fvu", inf)))


def oracle_select(settings: list[Setting], th: Thresholds) -> Setting:
    return max(settings, key=lambda s: s.num(th.score, 0.0))


@dataclass(frozen=True)
class Choice:
    """The settings one decision picks for one access class (no intervals yet)."""

    best: Setting | None
    oracle: Setting | None
    baseline: Setting | None
    n_methods: int


def choose(settings: list[Setting], access: str, th: Thresholds) -> Choice:
    """Own-rule and oracle picks over the (converged) methods of one access class, and the
    best own-rule baseline of the class."""
    by_method: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        if s.access == access and s.converged is not False:
            by_method[s.method].append(s)
    methods = {m: v for m, v in by_method.items() if not v[0].baseline}
    bases = [self_select(v, th) for m, v in by_method.items() if v[0].baseline]
    baseline = oracle_select(bases, th) if bases else None
    if not methods:
        return Choice(None, None, baseline, 0)
    chosen = [self_select(v, th) for v in methods.values()]
    oracles = [oracle_select(v, th) for v in methods.values()]
    return Choice(oracle_select(chosen, th), oracle_select(oracles, th), baseline, len(methods))


def null_of(best: Setting, baseline: Setting | None, key: str) -> float:
    """The strongest null for ``key``: its chance level or the baseline's own score."""
    nulls = [best.get(f"{key}_chance") or 0.0]
    if baseline is not None:
        nulls.append(baseline.num(key, 0.0))
    return max(nulls)


def stance_of(ao: Choice, th: Thresholds) -> StanceName:
    best = ao.best
    if best is None:
        return "n/a"
    score = best.get(th.score)
    if (
        score is not None
        and score >= th.recover
        and (score - null_of(best, ao.baseline, th.score) >= th.margin)
    ):
        return "1"
    share = best.get("rel_dir_share3")
    if (
        share is not None
        and share >= th.sparse_share
        and (share - null_of(best, ao.baseline, "rel_dir_share3") >= th.margin)
    ):
        return "2a"
    return "2b"


def beats(c: Choice, th: Thresholds) -> bool | None:
    if c.best is None or c.baseline is None:
        return None
    return c.best.num(th.score, 0.0) - null_of(c.best, c.baseline, th.score) >= th.margin


def setting_label(s: Setting) -> str:
    params = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(s.params.items()))
    return f"{s.method} {params}".strip()


def group_key(r: Record, drop: str | None = None) -> str:
    params = {k: v for k, v in r.toy_params.items() if k != drop}
    return json.dumps([r.toy, params, r.site], sort_keys=True)


@dataclass(frozen=True)
class Boot:
    """Resampled means: per setting, [n_boot, keys] (NaN where missing or not drawn)."""

    keys: tuple[str, ...]
    means: dict[str, np.ndarray]  # setting label -> [B, K]


def bootstrap(settings: list[Setting], th: Thresholds) -> Boot:
    """Means of the keys the decision reads, over seeds resampled with replacement."""
    keys = (th.score, f"{th.score}_chance", *BOOT_KEYS)
    seeds = sorted({sd for s in settings for sd in s.seeds})
    rng = np.random.default_rng(0)
    draws_BN = rng.integers(0, len(seeds), size=(th.n_boot, len(seeds)))
    counts_BS = np.stack([np.bincount(row, minlength=len(seeds)) for row in draws_BN])
    index = {sd: i for i, sd in enumerate(seeds)}
    means: dict[str, np.ndarray] = {}
    for s in settings:
        vals_NK = np.array(
            [[np.nan if (v := m.get(k)) is None else v for k in keys] for m in s.per_seed]
        )
        present_NK = ~np.isnan(vals_NK)
        w_BN = counts_BS[:, [index[sd] for sd in s.seeds]].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[s.label] = (w_BN @ np.nan_to_num(vals_NK)) / (w_BN @ present_NK)
    return Boot(keys, means)


def resample(settings: list[Setting], boot: Boot, b: int) -> list[Setting]:
    """The settings with their metrics replaced by resample ``b`` (undrawn ones dropped)."""
    out = []
    for s in settings:
        row = boot.means[s.label][b]
        if np.isnan(row).all():
            continue
        metrics = {
            k: (None if math.isnan(v) else float(v)) for k, v in zip(boot.keys, row, strict=True)
        }
        out.append(replace(s, metrics=metrics))
    return out


def interval(boot: Boot, s: Setting | None, key: str) -> tuple[float, float] | None:
    if s is None or s.label not in boot.means:
        return None
    col = boot.means[s.label][:, boot.keys.index(key)]
    col = col[~np.isnan(col)]
    if col.size == 0:
        return None
    return (float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5)))


def stability(settings: list[Setting], boot: Boot, stance: StanceName, th: Thresholds) -> float:
    same = sum(
        stance_of(choose(resample(settings, boot, b), "activation_only", th), th) == stance
        for b in range(th.n_boot)
    )
    return same / th.n_boot


def as_pick(s: Setting | None, c: Choice, boot: Boot, th: Thresholds, oracle: bool) -> Pick | None:
    if s is None:
        return None
    method_sel: Literal["oracle", "only method"] = "only method" if c.n_methods <= 1 else "oracle"
    return Pick(
        s.method, s.params, s.get(th.score), interval(boot, s, th.score),
        s.get(f"{th.score}_chance"), "oracle" if oracle else "own rule",
        "only method" if s.baseline else method_sel, s.converged, len(s.seeds), list(s.lines),
    )  # fmt: skip


def versus(c: Choice, boot: Boot, th: Thresholds) -> Versus:
    return Versus(
        as_pick(c.best, c, boot, th, oracle=False),
        as_pick(c.oracle, c, boot, th, oracle=True),
        as_pick(c.baseline, c, boot, th, oracle=False),
        beats(c, th),
    )


def resolve(provisional: StanceName, n_seeds: int, stab: float | None, th: Thresholds) -> str:
    """Why a stance is (not) a verdict: seeds and stability."""
    if provisional == "n/a":
        return "no activation-only method ran"
    if n_seeds < th.min_seeds:
        return f"unresolved: {n_seeds} seed(s), a verdict needs >= {th.min_seeds}"
    if stab is not None and stab < th.stability:
        return f"unresolved: stability {stab:.2f} < {th.stability}"
    return ""


def row_of(rows: list[tuple[int, Record]], settings: list[Setting], th: Thresholds) -> StanceRow:
    """The verdict of one (toy, toy params, site) from its records and their settings."""
    first = rows[0][1]
    ao = choose(settings, "activation_only", th)
    da = choose(settings, "downstream_aware", th)
    boot = bootstrap(settings, th)
    provisional = stance_of(ao, th)
    n_seeds = len({r.seed for _, r in rows if r.status == "ok"})
    stab = None if provisional == "n/a" else stability(settings, boot, provisional, th)
    reason = resolve(provisional, n_seeds, stab, th)
    best = ao.best
    return StanceRow(
        toy=first.toy, toy_params=first.toy_params, site=first.site,
        stance="unresolved" if reason.startswith("unresolved") else provisional,
        provisional=provisional, stability=stab, reason=reason, n_seeds=n_seeds,
        activation_only=versus(ao, boot, th), downstream_aware=versus(da, boot, th),
        relatedness=None if best is None else {
            "share3": best.get("rel_dir_share3"), "chance": best.get("rel_dir_share3_chance"),
            "median": best.get("rel_dir_median")},
        excluded_unconverged=sorted(s.label for s in settings if s.converged is False),
        thresholds=asdict(th),
    )  # fmt: skip


def twin_scores(twins: dict[str, list[Setting]]) -> dict[str, Any]:
    """Per method setting present on every twin: its scores per twin and the lower one."""
    per_label: dict[str, dict[str, Setting]] = defaultdict(dict)
    for use, settings in twins.items():
        for s in settings:
            per_label[s.label][use] = s
    return {
        label: lower_of(by_use) for label, by_use in per_label.items() if len(by_use) == len(twins)
    }


def lower_of(by_use: dict[str, Setting]) -> dict[str, Any]:
    """Scores per twin and, per score, the lower of the twins (``None`` if one is missing)."""
    entry: dict[str, Any] = {"per_twin": {}}
    for key in ("mcc", "mcc_strict"):
        vals = {u: s.get(key) for u, s in sorted(by_use.items())}
        known = [v for v in vals.values() if v is not None]
        entry[key] = min(known) if len(known) == len(vals) else None
        for u, v in vals.items():
            entry["per_twin"].setdefault(u, {})[key] = v
    for u, s in sorted(by_use.items()):
        entry["per_twin"][u]["params"] = s.params
    return entry


def twin_own_rule(twins: dict[str, list[Setting]], th: Thresholds) -> dict[str, Any]:
    """Per method: on each twin its own-rule setting (as a user of that twin would pick),
    the lower score of the two and the method's access; unconverged settings are left
    out."""
    by_method: dict[str, dict[str, list[Setting]]] = defaultdict(lambda: defaultdict(list))
    for use, settings in twins.items():
        for s in settings:
            if s.converged is not False:
                by_method[s.method][use].append(s)
    out: dict[str, Any] = {}
    for method, per_use in sorted(by_method.items()):
        if len(per_use) == len(twins):
            picks = {u: self_select(v, th) for u, v in per_use.items()}
            access = next(iter(picks.values())).access
            out[method] = {**lower_of(picks), "access": access}
    return out


def known_baselines() -> frozenset[str]:
    """Names of registered methods whose class declares itself a baseline."""
    from decompbench.registry import all_methods

    return frozenset(n for n, cls in all_methods().items() if cls.baseline)


def verdict(
    records: list[Record], th: Thresholds | None = None, baselines: frozenset[str] | None = None
) -> list[StanceRow]:
    """One stance row per (toy, toy params, site), traceable to results.jsonl lines."""
    th = th or Thresholds()
    base = known_baselines() if baselines is None else baselines
    groups: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    for line, r in enumerate(records, start=1):
        groups[group_key(r)].append((line, r))
    settings = {key: settings_of(rows, base) for key, rows in groups.items()}
    out = [row_of(rows, settings[key], th) for key, rows in groups.items()]
    twin_groups: dict[str, dict[str, list[Setting]]] = defaultdict(dict)
    for key, rows in groups.items():
        first = rows[0][1]
        if TWIN_KEY in first.toy_params:
            use = str(first.toy_params[TWIN_KEY])
            twin_groups[group_key(first, TWIN_KEY)][use] = settings[key]
    for i, rows in enumerate(groups.values()):
        twins = twin_groups.get(group_key(rows[0][1], TWIN_KEY), {})
        if len(twins) >= 2 and TWIN_KEY in rows[0][1].toy_params:
            out[i] = replace(
                out[i], twin_scores=twin_scores(twins), twin_own_rule=twin_own_rule(twins, th)
            )
    return out


def write_stance(out_dir: Path, stances: list[StanceRow]) -> Path:
    """Write the verdict's rows to ``DIR/stance.json`` (atomically); return its path."""
    path = out_dir / "stance.json"
    text = json.dumps([s.to_json() for s in stances], indent=2, allow_nan=False)
    write_text_atomic(path, text + "\n")
    return path
