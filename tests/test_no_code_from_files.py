"""No code from files: nothing in src/ unpickles, evaluates, or loads YAML/torch unsafely.

Results are JSON, suites are ``yaml.safe_load``-ed, tensors go through safetensors or
``torch.load(..., weights_only=True)``. The check walks the syntax tree of every source
file, so comments and docstrings that mention these names do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "decompbench"
BANNED_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}


def keyword_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_loads(source: str) -> list[str]:
    """Each unsafe deserialisation in ``source`` as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"{node.lineno}: import {m}" for m in mods
                      if m and m.split(".")[0] in BANNED_MODULES]  # fmt: skip
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        bad = (
            (name.endswith("torch.load") and not keyword_true(node, "weights_only"))
            or (name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"))
            or (name.endswith(("np.load", "numpy.load")) and keyword_true(node, "allow_pickle"))
            or name in ("eval", "exec")
        )
        if bad:
            found.append(f"{node.lineno}: {name}(...)")
    return found


def test_no_source_file_loads_code_from_files() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    problems = [f"{p.relative_to(SRC)}:{hit}" for p in files for hit in unsafe_loads(p.read_text())]
    assert problems == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("import pickle\npickle.load(f)", True),
        ("from joblib import load", True),
        ("import torch\ntorch.load(p)", True),
        ("import torch\ntorch.load(p, weights_only=False)", True),
        ("import torch\ntorch.load(p, weights_only=True)", False),
        ("import yaml\nyaml.load(t, Loader=yaml.Loader)", True),
        ("import yaml\nyaml.safe_load(t)", False),
        ("import numpy as np\nnp.load(p, allow_pickle=True)", True),
        ("eval('1')", True),
        ('"""we never use pickle or torch.load"""', False),
    ],
)
def test_the_checker_flags_unsafe_loads(source: str, flagged: bool) -> None:
    assert bool(unsafe_loads(source)) is flagged
