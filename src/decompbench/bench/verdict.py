"""The stance verdict per (toy, site), from the runs' records.

For every method, each of its parameter settings is averaged over seeds, then one
setting is chosen twice: by the method's *own* rule (the sparsest setting whose FVU
meets a target; no ground truth) and by the *oracle* (best recovery). The verdict uses
the best self-selected activation-only method:

* stance (1)  if its recovery reaches ``recover`` and beats chance by ``margin``;
* stance (2a) else if most true features are sparse mixes of its latents
  (share with relatedness <= 3 reaches ``sparse_share`` and beats chance by ``margin``);
* stance (2b) otherwise.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from decompbench.bench.results import Record, write_text_atomic

TWIN_KEY = "use"


@dataclass(frozen=True)
class Thresholds:
    score: str = "mcc_strict"
    recover: float = 0.9
    margin: float = 0.1
    sparse_share: float = 0.5
    fvu_target: float = 0.1


@dataclass(frozen=True)
class Setting:
    """One method with one parameter setting, its metrics averaged over seeds."""

    method: str
    params: dict[str, Any]
    access: str
    lines: tuple[int, ...]
    metrics: dict[str, float | None]

    def get(self, key: str) -> float | None:
        return self.metrics.get(key)

    def num(self, key: str, missing: float) -> float:
        value = self.metrics.get(key)
        return missing if value is None else value

    def summary(self, th: Thresholds, how: str) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "score": self.get(th.score),
            "chance": self.get(f"{th.score}_chance"),
            "selection": how,
            "results_lines": list(self.lines),
        }


def average(records: list[tuple[int, Record]]) -> dict[str, float | None]:
    keys = {k for _, r in records for k in r.metrics}
    out: dict[str, float | None] = {}
    for k in sorted(keys):
        vals = [float(v) for _, r in records if (v := r.metrics.get(k)) is not None]
        out[k] = statistics.fmean(vals) if vals else None
    return out


def settings_of(records: list[tuple[int, Record]]) -> list[Setting]:
    """Group ok records of one (toy, site) by method and parameters; average over seeds."""
    groups: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    for line, r in records:
        if r.status == "ok":
            groups[json.dumps([r.method, r.method_params], sort_keys=True)].append((line, r))
    return [
        Setting(rs[0][1].method, rs[0][1].method_params, rs[0][1].access,
                tuple(line for line, _ in rs), average(rs))
        for rs in groups.values()
    ]  # fmt: skip


def self_select(settings: list[Setting], th: Thresholds) -> Setting:
    """The method's own rule: sparsest setting with FVU <= target, else the lowest FVU."""
    inf = float("inf")
    good = [s for s in settings if s.num("fvu", inf) <= th.fvu_target]
    if good:
        return min(good, key=lambda s: s.num("l0", inf))
    return min(settings, key=lambda s: s.num("fvu", inf))


def oracle_select(settings: list[Setting], th: Thresholds) -> Setting:
    return max(settings, key=lambda s: s.num(th.score, 0.0))


def best_of(
    settings: list[Setting], access: str, th: Thresholds
) -> tuple[Setting | None, Setting | None]:
    """(best self-selected, best oracle-selected) over the methods of one access kind."""
    by_method: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        if s.access == access:
            by_method[s.method].append(s)
    if not by_method:
        return None, None
    chosen = [self_select(v, th) for v in by_method.values()]
    oracles = [oracle_select(v, th) for v in by_method.values()]
    return oracle_select(chosen, th), oracle_select(oracles, th)


def stance_of(best: Setting | None, th: Thresholds) -> str:
    if best is None:
        return "n/a"
    score, chance = best.get(th.score), best.get(f"{th.score}_chance") or 0.0
    if score is not None and score >= th.recover and score - chance >= th.margin:
        return "1"
    share, share_chance = best.get("rel_dir_share3"), best.get("rel_dir_share3_chance") or 0.0
    if share is not None and share >= th.sparse_share and share - share_chance >= th.margin:
        return "2a"
    return "2b"


def setting_label(s: Setting) -> str:
    params = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(s.params.items()))
    return f"{s.method} {params}".strip()


def twin_scores(twins: dict[str, list[Setting]], th: Thresholds) -> dict[str, Any]:
    """Per method setting present on every twin: its scores per twin and the lower one."""
    per_label: dict[str, dict[str, Setting]] = defaultdict(dict)
    for use, settings in twins.items():
        for s in settings:
            per_label[setting_label(s)][use] = s
    out: dict[str, Any] = {}
    for label, by_use in per_label.items():
        if len(by_use) < len(twins):
            continue
        entry: dict[str, Any] = {"per_twin": {}}
        for key in ("mcc", "mcc_strict"):
            vals = {u: s.get(key) for u, s in sorted(by_use.items())}
            known = [v for v in vals.values() if v is not None]
            entry[key] = min(known) if len(known) == len(vals) else None
            for u, v in vals.items():
                entry["per_twin"].setdefault(u, {})[key] = v
        out[label] = entry
    return out


def group_key(r: Record, drop: str | None = None) -> str:
    params = {k: v for k, v in r.toy_params.items() if k != drop}
    return json.dumps([r.toy, params, r.site], sort_keys=True)


def verdict(records: list[Record], th: Thresholds | None = None) -> list[dict[str, Any]]:
    """One stance record per (toy, toy params, site), traceable to results.jsonl lines."""
    th = th or Thresholds()
    numbered = list(enumerate(records, start=1))
    groups: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    twin_groups: dict[str, dict[str, list[Setting]]] = defaultdict(dict)
    for line, r in numbered:
        groups[group_key(r)].append((line, r))
    out: list[dict[str, Any]] = []
    for rows in groups.values():
        first = rows[0][1]
        settings = settings_of(rows)
        ao, ao_oracle = best_of(settings, "activation_only", th)
        da, da_oracle = best_of(settings, "downstream_aware", th)
        if TWIN_KEY in first.toy_params:
            twin_groups[group_key(first, TWIN_KEY)][str(first.toy_params[TWIN_KEY])] = settings
        out.append({
            "toy": first.toy, "toy_params": first.toy_params, "site": first.site,
            "stance": stance_of(ao, th),
            "best_activation_only": ao.summary(th, "self") if ao else None,
            "best_activation_only_oracle": ao_oracle.summary(th, "oracle") if ao_oracle else None,
            "best_downstream_aware": da.summary(th, "self") if da else None,
            "best_downstream_aware_oracle": da_oracle.summary(th, "oracle") if da_oracle else None,
            "relatedness": None if ao is None else {
                "share3": ao.get("rel_dir_share3"), "chance": ao.get("rel_dir_share3_chance"),
                "median": ao.get("rel_dir_median")},
            "twin_scores": {},
            "thresholds": asdict(th),
        })  # fmt: skip
    for rec in out:
        key = json.dumps([rec["toy"], {k: v for k, v in rec["toy_params"].items()
                                       if k != TWIN_KEY}, rec["site"]], sort_keys=True)  # fmt: skip
        twins = twin_groups.get(key, {})
        if len(twins) >= 2:
            rec["twin_scores"] = twin_scores(twins, th)
    return out


def write_stance(out_dir: Path, stances: list[dict[str, Any]]) -> Path:
    """Write the verdict's records to ``DIR/stance.json`` (atomically); return its path."""
    path = out_dir / "stance.json"
    write_text_atomic(path, json.dumps(stances, indent=2) + "\n")
    return path
