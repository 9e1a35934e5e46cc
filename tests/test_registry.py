"""The registry: every entry is complete, and the default suite validates."""

from __future__ import annotations

from decompbench.bench.suite import load_suite
from decompbench.registry import all_methods, all_toys


def test_every_method_declares_access_params_and_summary() -> None:
    for name, cls in all_methods().items():
        assert cls.name == name
        assert cls.access in ("activation_only", "downstream_aware")
        assert cls.summary and cls.Params.model_config.get("extra") == "forbid"


def test_every_toy_declares_params_and_summary() -> None:
    for name, cls in all_toys().items():
        assert cls.name == name
        assert cls.summary and cls.Params.model_config.get("extra") == "forbid"


def test_default_suite_validates_and_holds_both_twins() -> None:
    suite, _ = load_suite(None)
    uses = {t.params.get("use") for t in suite.toys if t.name == "composed"}
    assert uses == {"factored", "composed"}
