"""Suite files: which toys, sites, methods and seeds to run. Validated before anything runs.

A suite is YAML::

    seeds: [0, 1]
    toys:
      - name: composed
        params: {values: [4, 4], d_model: 16, use: factored}
        sites: [hidden]        # optional; default all sites
    methods:
      - name: sae-topk
        params: {width: 16, k: 2}

Every toy x site x method x seed is one run, identified by a content hash (``run_id``)
of its settings with every parameter default filled in. Validation is strict: unknown
keys, wrong types (no ``"3"`` for 3, no ``true`` for 1), non-finite numbers, repeated
seeds/sites and two entries that describe the same run are rejected with one line that
names the file and the place.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from decompbench.bench.results import SUITE_COPY, make_run_id
from decompbench.config import StrictModel, validate
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.plugins import load_plugins
from decompbench.registry import get_method, get_toy
from decompbench.toys.base import build_toy

BUILTIN_SUITES = ("default", "verdict")
MIN_VERDICT_SEEDS = 3
RELATIVE = re.compile(r"^(?P<mult>[0-9]+(?:\.[0-9]+)?)d$")  # width: "4d" = 4 x site dim
MAX_SEED = 2**31 - 1
MAX_SAMPLES = 1_000_000
MAX_NODES = 100_000  # values in a suite once YAML aliases are expanded


class SpecModel(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def unique(values: list[Any], what: str) -> list[Any]:
    seen = [json.dumps(v, sort_keys=True) for v in values]
    for i, key in enumerate(seen):
        if key in seen[:i]:
            raise ValueError(f"{what} {values[i]!r} is listed twice")
    return values


class ToySpec(SpecModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    sites: list[str] | None = Field(default=None, min_length=1)
    # Names of the suite's methods to run on this toy (default: all of them).
    methods: list[str] | None = Field(default=None, min_length=1)

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else unique(v, "site")


class MethodSpec(SpecModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # Parameter -> list of values: one method entry per combination (merged into params).
    # A combination a site cannot take (e.g. k > width) is skipped at that site; a sweep
    # with no valid combination at a site it runs on is an error.
    sweep: dict[str, list[Any]] | None = None
    # A name for this entry (and its sweep): a toy's `methods:` list then picks it by this
    # id, not by the method's name.
    id: str | None = None
    _sweep: int | None = PrivateAttr(default=None)  # index of the entry it was expanded from


class Suite(SpecModel):
    # A verdict suite: its stance table is a finding, so it must run >= MIN_VERDICT_SEEDS seeds.
    verdict: bool = False
    seeds: list[int] = Field(default=[0], min_length=1)
    n_train: int = Field(default=16384, ge=16, le=MAX_SAMPLES)
    n_eval: int = Field(default=4096, ge=16, le=MAX_SAMPLES)
    toys: list[ToySpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    # Plugin modules (names or .py paths relative to the suite file) loaded before checking.
    plugins: list[str] = Field(default_factory=list)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s <= MAX_SEED:
                raise ValueError(f"seed {s} is outside 0..{MAX_SEED}")
        return unique(v, "seed")

    @model_validator(mode="after")
    def _verdict_seeds(self) -> Suite:
        if self.verdict and len(self.seeds) < MIN_VERDICT_SEEDS:
            raise ValueError(
                f"a verdict suite needs at least {MIN_VERDICT_SEEDS} seeds "
                f"(got {len(self.seeds)}): its stances carry intervals over seeds"
            )
        return self


def read_text(path: Path) -> str:
    """The text of a suite file; a directory or an unreadable file is a one-line error."""
    if path.is_dir():
        hint = path / SUITE_COPY
        raise UserError(
            f"{path}: is a directory, not a suite file"
            + (f" (to resume that run directory: decompbench run {hint} --out {path})"
               if hint.is_file() else "")
        )  # fmt: skip
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None


def read_yaml(path: Path, text: str | None = None) -> Any:
    """Parse a YAML file; every failure becomes a one-line ``UserError``."""
    try:
        return yaml.safe_load(read_text(path) if text is None else text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UserError(f"{path}: invalid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None


def located(lookup: Callable[[str], object], name: str, where: str) -> None:
    """Registry lookup whose error names the place in the suite file."""
    try:
        lookup(name)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def expanded_size(data: Any, where: str, limit: int = MAX_NODES) -> int:
    """Number of values in ``data`` with YAML aliases expanded, counted once per distinct
    object (so an alias bomb costs its size in the file, not its expansion); refuse a
    structure that expands beyond ``limit`` values or refers to itself."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list | tuple):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            raise UserError(f"{where}: a YAML alias refers to itself")
        open_ids.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise UserError(
                    f"{where}: too large: YAML aliases expand to more than {limit} values"
                )
        open_ids.discard(key)
        sizes[key] = total
        return total

    try:
        return size(data)
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None


def check_finite(value: Any, where: str) -> None:
    """Reject NaN and infinities anywhere inside a parameter block."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_finite(v, f"{where}.{i}")


def normalised(kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated, with every default filled in, as plain JSON values."""
    cls = get_toy(name) if kind == "toy" else get_method(name)
    return validate(cls.Params, params, f"{kind} '{name}' params").model_dump(mode="json")


def resolve_toy(t: ToySpec, seed: int, where: str) -> ToySpec:
    """Validate a toy entry; build the toy once to check (or fill in) its sites."""
    located(get_toy, t.name, f"{where}.name")
    check_finite(t.params, f"{where}.params")
    validate(get_toy(t.name).Params, t.params, f"{where}.params ({t.name})")
    try:
        toy = build_toy(t.name, t.params, seed)
    except Exception as err:  # e.g. a trained toy missing its target: recorded by the runner
        if t.sites is not None:
            return t
        raise UserError(
            f"{where}: building toy '{t.name}' to list its sites failed "
            f"({type(err).__name__}: {err}); name its sites to record the failure instead"
        ) from None
    for s in t.sites or []:
        if s not in toy.sites:
            raise UserError(
                f"{where}.sites: toy '{t.name}' has no site '{s}' (sites: {', '.join(toy.sites)})"
            )
    return t.model_copy(update={"sites": t.sites or list(toy.sites)})


def comparable(m: MethodSpec) -> dict[str, Any]:
    """``m``'s params with defaults filled in where they can be (not for relative widths or
    swept combinations that are invalid everywhere: those compare as given)."""
    if is_relative(m.params):
        return m.params
    try:
        return normalised("method", m.name, m.params)
    except UserError:
        if m._sweep is None:
            raise
        return m.params


def check_no_repeats(suite: Suite, where: str) -> None:
    """Two entries that describe the same run would record it twice: reject them."""
    seen: dict[tuple[str, str], str] = {}
    for i, t in enumerate(suite.toys):
        key = json.dumps([t.name, normalised("toy", t.name, t.params)], sort_keys=True)
        for s in t.sites or []:
            if (key, s) in seen:
                raise UserError(f"{where}: toys[{i}] repeats {seen[key, s]} (same toy at '{s}')")
            seen[key, s] = f"toys[{i}]"
    methods: dict[str, int] = {}
    for i, m in enumerate(suite.methods):
        key = json.dumps([m.name, comparable(m)], sort_keys=True)
        if key in methods:
            raise UserError(
                f"{where}: methods[{i}] repeats methods[{methods[key]}] "
                "(same method and parameters, defaults included)"
            )
        methods[key] = i


def expand_sweeps(methods: list[MethodSpec], where: str) -> list[MethodSpec]:
    """One method entry per combination of each entry's ``sweep`` values."""
    out: list[MethodSpec] = []
    for i, m in enumerate(methods):
        if m.sweep is None:
            out.append(m)
            continue
        if not m.sweep or not all(m.sweep.values()):
            raise UserError(f"{where}: methods[{i}].sweep has an empty list: it selects nothing")
        for key in m.sweep:
            if key in m.params:
                raise UserError(f"{where}: methods[{i}] sets '{key}' in both params and sweep")
        keys = list(m.sweep)
        for combo in itertools.product(*(m.sweep[k] for k in keys)):
            params = {**m.params, **dict(zip(keys, combo, strict=True))}
            one = MethodSpec(name=m.name, params=params, id=m.id)
            one._sweep = i
            out.append(one)
    return out


def relative_width(params: dict[str, Any], d: int, where: str) -> dict[str, Any]:
    """``params`` with a relative ``width`` ("4d", "0.5d": times the site's dimension d,
    rounded half up) replaced by the number of latents."""
    w = params.get("width")
    if not isinstance(w, str) or (match := RELATIVE.match(w)) is None:
        return params
    width = math.floor(Fraction(match["mult"]) * d + Fraction(1, 2))
    if width < 1:
        raise UserError(f"{where}: width '{w}' gives {width} latents at a site of d = {d}")
    return {**params, "width": width}


def is_relative(params: dict[str, Any]) -> bool:
    return isinstance(params.get("width"), str)


@lru_cache(maxsize=256)
def site_dim(toy_key: str, site: str, seed: int) -> int:
    """The dimension of ``site`` of the toy ``json.dumps([name, params])``."""
    name, params = json.loads(toy_key)
    toy = build_toy(name, params, seed)
    return int(toy.acts(site, toy.sample(2, 0).inputs).shape[1])


def resolved_params(t: ToySpec, site: str, m: MethodSpec, seed: int, where: str) -> dict[str, Any]:
    """``m``'s parameters at ``site`` of toy ``t`` (relative widths made absolute)."""
    if not is_relative(m.params):
        return m.params
    d = site_dim(json.dumps([t.name, t.params], sort_keys=True), site, seed)
    return relative_width(m.params, d, f"{where} at {t.name}@{site}")


def runs_on(t: ToySpec, m: MethodSpec) -> bool:
    """A toy's ``methods`` list picks entries by name, or by id for entries that have one."""
    return t.methods is None or (m.id or m.name) in t.methods


def valid_at(t: ToySpec, site: str, m: MethodSpec, seed: int, where: str) -> bool:
    """Whether ``m`` can run at ``site``: a swept combination that cannot is skipped there
    (False); any other invalid entry raises the one-line error."""
    try:
        build_method(m.name, resolved_params(t, site, m, seed, where), where)
    except UserError:
        if m._sweep is None:
            raise
        return False
    return True


def check_methods(suite: Suite, where: str) -> None:
    """Validate every method entry at every site it runs on; every sweep must leave at
    least one valid combination at each of its sites."""
    chosen: dict[tuple[int, int, str], bool] = {}
    for i, m in enumerate(suite.methods):
        here = f"{where}: methods[{i}].params ({m.name})"
        if not is_relative(m.params) and m._sweep is None:
            build_method(m.name, m.params, here)
            continue
        for j, t in enumerate(suite.toys):
            for site in (t.sites or []) if runs_on(t, m) else []:
                ok = valid_at(t, site, m, suite.seeds[0], here)
                if m._sweep is not None:
                    key = (m._sweep, j, site)
                    chosen[key] = chosen.get(key, False) or ok
    for (i, j, site), ok in chosen.items():
        if not ok:
            raise UserError(
                f"{where}: methods[{i}].sweep selects nothing at toys[{j}] site '{site}' "
                "(no combination is valid there)"
            )


def parse_suite(data: Any, where: str, base: Path | None = None) -> Suite:
    """Validate the suite and every toy/method parameter block; resolve default sites,
    expand sweeps. The suite's ``plugins`` are loaded first (file paths relative to
    ``base``)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a suite must be a mapping with 'toys' and 'methods'")
    expanded_size(data, where)  # before anything walks the structure
    suite = validate(Suite, data, where)
    load_plugins(suite.plugins, base)
    toys = [resolve_toy(t, suite.seeds[0], f"{where}: toys[{i}]") for i, t in enumerate(suite.toys)]
    for i, m in enumerate(suite.methods):
        located(get_method, m.name, f"{where}: methods[{i}].name")
        check_finite(m.params, f"{where}: methods[{i}].params")
        check_finite(m.sweep, f"{where}: methods[{i}].sweep")
    names = {m.name for m in suite.methods} | {m.id for m in suite.methods if m.id}
    for i, t in enumerate(suite.toys):
        for name in set(t.methods or []) - names:
            raise UserError(
                f"{where}: toys[{i}].methods: '{name}' is not among the suite's methods or ids"
            )
    methods = expand_sweeps(suite.methods, where)
    suite = suite.model_copy(update={"toys": toys, "methods": methods})
    check_methods(suite, where)
    check_no_repeats(suite, where)
    return suite


def load_suite(path: Path | None, builtin: str = "default") -> tuple[Suite, str]:
    """The suite at ``path`` (or the built-in one named ``builtin``) and its YAML text."""
    if path is None:
        if builtin not in BUILTIN_SUITES:
            raise UserError(
                f"unknown built-in suite '{builtin}' (known: {', '.join(BUILTIN_SUITES)})"
            )
        name = f"{builtin}.yaml"
        text = resources.files("decompbench.bench").joinpath(name).read_text()
        return parse_suite(yaml.safe_load(text), f"<built-in {name}>"), text
    text = read_text(path)
    return parse_suite(read_yaml(path, text), str(path), path.parent), text


def with_seeds(suite: Suite, seeds: list[int]) -> Suite:
    """A copy of ``suite`` with its seeds replaced and re-validated (configs never mutate)."""
    checked = validate(Suite, {**suite.model_dump(), "seeds": seeds}, "--seeds")
    return suite.model_copy(update={"seeds": checked.seeds})  # keeps the expanded sweeps


@dataclass(frozen=True)
class PlannedRun:
    """One toy x site x method x seed of a suite, with its content hash."""

    run_id: str
    seed: int
    toy: ToySpec
    site: str
    method: MethodSpec
    toy_tag: str = ""  # the toy's parameters that differ between the suite's entries of it
    method_tag: str = ""  # likewise for the method (e.g. [l1=0.1] in a sweep)

    @property
    def label(self) -> str:
        """``composed[use=factored]@hidden sae-relu[l1=0.1] seed 0``: twins and sweeps are
        told apart."""
        return (
            f"{self.toy.name}{self.toy_tag}@{self.site} {self.method.name}{self.method_tag} "
            f"seed {self.seed}"
        )


def tags(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per entry, ``[k=v,...]`` of the parameters whose values differ between the entries
    of the same name (``""`` when none do)."""
    out = []
    for name, params in entries:
        same = [p for n, p in entries if n == name]
        keys = sorted(k for k in params if any(json.dumps(p.get(k)) != json.dumps(params[k])
                                               for p in same))  # fmt: skip
        parts = [f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                 for k in keys for v in [params[k]]]  # fmt: skip
        out.append(f"[{','.join(parts)}]" if parts else "")
    return out


def site_methods(
    suite: Suite, t: ToySpec, site: str, method_tags: list[str]
) -> list[tuple[MethodSpec, dict[str, Any], str]]:
    """The method entries that run at ``site`` of ``t``: (entry with its width resolved,
    its params with defaults filled in, its progress tag). Swept combinations the site
    cannot take are skipped."""
    out = []
    for m, mtag in zip(suite.methods, method_tags, strict=True):
        if not runs_on(t, m) or not valid_at(t, site, m, suite.seeds[0], m.name):
            continue
        given = resolved_params(t, site, m, suite.seeds[0], m.name)
        spec = MethodSpec(name=m.name, params=given) if given is not m.params else m
        out.append((spec, normalised("method", m.name, given), mtag))
    return out


def plan_runs(suite: Suite) -> list[PlannedRun]:
    """Every run of the suite, in execution order: seed, toy, site, method."""
    toys = [normalised("toy", t.name, t.params) for t in suite.toys]
    toy_tags = tags([(t.name, p) for t, p in zip(suite.toys, toys, strict=True)])
    method_tags = tags([(m.name, m.params) for m in suite.methods])  # as given (sweeps expanded)
    per_site = {
        (i, site): site_methods(suite, t, site, method_tags)
        for i, t in enumerate(suite.toys)
        for site in t.sites or []
    }  # the same at every seed: worked out once
    plan = []
    for seed in suite.seeds:
        for i, (t, tparams, ttag) in enumerate(zip(suite.toys, toys, toy_tags, strict=True)):
            for site in t.sites or []:
                for m, mparams, mtag in per_site[i, site]:
                    identity = dict(
                        toy=t.name, toy_params=tparams, site=site, method=m.name,
                        method_params=mparams, seed=seed, n_train=suite.n_train,
                        n_eval=suite.n_eval,
                    )  # fmt: skip
                    plan.append(PlannedRun(make_run_id(identity), seed, t, site, m, ttag, mtag))
    return plan
