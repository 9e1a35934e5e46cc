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

Every toy x site x method x seed is one run.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from decompbench.config import StrictModel, validate
from decompbench.errors import UserError
from decompbench.methods.base import build_method
from decompbench.registry import get_method, get_toy
from decompbench.toys.base import build_toy

DEFAULT_SUITE = "default.yaml"


class ToySpec(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    sites: list[str] | None = None


class MethodSpec(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Suite(StrictModel):
    seeds: list[int] = Field(default=[0], min_length=1)
    n_train: int = Field(default=16384, ge=16)
    n_eval: int = Field(default=4096, ge=16)
    toys: list[ToySpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; every failure becomes a one-line ``UserError``."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UserError(f"{path}: invalid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None


def located(lookup: Callable[[str], object], name: str, where: str) -> None:
    """Registry lookup whose error names the place in the suite file."""
    try:
        lookup(name)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def parse_suite(data: Any, where: str) -> Suite:
    """Validate the suite and every toy/method parameter block; resolve default sites."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a suite must be a mapping with 'toys' and 'methods'")
    suite = validate(Suite, data, where)
    toys = []
    for i, t in enumerate(suite.toys):
        located(get_toy, t.name, f"{where}: toys[{i}].name")
        toy = build_toy(t.name, t.params, suite.seeds[0], f"{where}: toys[{i}].params ({t.name})")
        for s in t.sites or []:
            if s not in toy.sites:
                raise UserError(
                    f"{where}: toys[{i}].sites: toy '{t.name}' has no site '{s}' "
                    f"(sites: {', '.join(toy.sites)})"
                )
        toys.append(t.model_copy(update={"sites": t.sites or list(toy.sites)}))
    for i, m in enumerate(suite.methods):
        located(get_method, m.name, f"{where}: methods[{i}].name")
        build_method(m.name, m.params, f"{where}: methods[{i}].params ({m.name})")
    return suite.model_copy(update={"toys": toys})


def load_suite(path: Path | None) -> tuple[Suite, str]:
    """The suite at ``path`` (or the built-in default) and its YAML text."""
    if path is None:
        text = resources.files("decompbench.bench").joinpath(DEFAULT_SUITE).read_text()
        return parse_suite(yaml.safe_load(text), f"<built-in {DEFAULT_SUITE}>"), text
    data = read_yaml(path)
    return parse_suite(data, str(path)), path.read_text()


def with_seeds(suite: Suite, seeds: list[int]) -> Suite:
    """A copy of ``suite`` with its seeds replaced (configs are never mutated)."""
    return suite.model_copy(update={"seeds": seeds})
