"""Shared fixtures: tiny sites and fast method parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from decompbench import registry
from decompbench.registry import all_methods
from decompbench.toys import trained

# Parameters that make every registered method fit in well under a second on tiny data.
FAST: dict[str, dict[str, Any]] = {
    "sae-relu": {"width": 8, "steps": 200, "batch_size": 64},
    "sae-topk": {"width": 8, "k": 2, "steps": 200, "batch_size": 64},
    "sae-batchtopk": {"width": 8, "k": 2, "steps": 200, "batch_size": 64},
    "sae-matryoshka": {"width": 8, "k": 2, "steps": 200, "batch_size": 64},
    "sae-jumprelu": {"width": 8, "steps": 200, "batch_size": 64},
    "ica": {"max_iter": 200},
    "nmf": {"signs": "split", "iters": 150, "encode_iters": 100},
    "direct-sum": {"dep_samples": 1024, "kmeans_restarts": 1},
    "spd": {"importance": 0.01, "steps": 300, "warmup_steps": 50, "batch_size": 64},
    "transcoder": {"width": 12, "steps": 300, "batch_size": 64},
    "transcoder-skip": {"width": 12, "steps": 300, "batch_size": 64},
    "sae-e2e": {"width": 8, "steps": 300, "batch_size": 64, "lr": 0.01},
    "sae-e2e-ds": {"width": 8, "steps": 300, "batch_size": 64, "lr": 0.01},
}


def fast_params(name: str) -> dict[str, Any]:
    """Small settings for ``name``; methods without an entry use their defaults."""
    return dict(FAST.get(name, {}))


@pytest.fixture(params=sorted(all_methods()))
def method_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(1)


@contextmanager
def registered(methods: dict[str, Any], toys: dict[str, Any]) -> Iterator[None]:
    """Test-only methods and toys in the registry (named by their keys) for the block."""
    registry.get_toy("composed")  # load the built-ins first
    for table, entries in ((registry.METHODS, methods), (registry.TOYS, toys)):
        for name, cls in entries.items():
            cls.name = name
            table[name] = cls
    try:
        yield
    finally:
        for table, entries in ((registry.METHODS, methods), (registry.TOYS, toys)):
            for name in entries:
                del table[name]


TRAINED_FAST = {"steps": 1000, "batch_size": 256}
COMPRESSED_TINY = {"n_features": 20, "d_resid": 200, "d_mlp": 10, "feature_prob": 0.05,
                   "steps": 400, "batch_size": 512}  # fmt: skip
# Small settings per registered toy (several entries per toy cover its variants).
SMALL: list[tuple[str, dict[str, Any]]] = [
    ("composed", {"values": [3, 3], "d_model": 8, "use": "factored"}),
    ("composed", {"values": [3, 3], "d_model": 8, "use": "composed"}),
    ("composed-poly", {"values": [3, 3], "d_model": 8, "use": "factored"}),
    ("composed-poly", {"values": [3, 3], "d_model": 8, "use": "composed"}),
    ("tms", TRAINED_FAST),
    ("tms", {**TRAINED_FAST, "identity": True}),
    ("composed-tms", TRAINED_FAST),
    ("compressed", COMPRESSED_TINY),
    ("hierarchy", {}),
    ("hierarchy-poly", {}),
    ("data-structure", {"use": "coordinates"}),
    ("data-structure", {"use": "curve"}),
    ("curve", {"n_units": 40}),
    ("square", {}),
    ("circuit", {}),
    ("superposed-circuits", {}),
    ("planted", {"n_features": 48, "d": 24}),
    ("planted", {"n_features": 48, "d": 24, "readout": "features"}),
]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh trained-toy cache for one test module: mark the module with
    ``pytestmark = pytest.mark.usefixtures("toy_cache")``."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(trained.CACHE_ENV, str(path))
        yield path
