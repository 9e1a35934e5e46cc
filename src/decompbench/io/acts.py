"""``decompbench export-acts``: a toy site's activations as safetensors, to train elsewhere.

The samples are the runner's own (``bench.runner.site_data``: the toy built with the seed,
training and evaluation inputs drawn from seeds derived from it), so a dictionary trained
on ``train.safetensors`` saw exactly what a built-in method of a suite run with that seed,
``n_train`` and ``n_eval`` sees. ``OUT`` holds:

* ``train.safetensors``: ``activations [n_train, d]``;
* ``eval.safetensors``: ``activations [n_eval, d]`` and ``features [n_eval, k]`` (the true
  feature activations, rows of ``describe --json``'s features);
* ``manifest.json``: toy, params (as given and with defaults), seed, site, sizes, shapes,
  dtypes, feature names and flags, and the SHA-256 of both files.

Everything is computed first and written into a temporary sibling folder that is renamed
to ``OUT`` at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from decompbench.errors import UserError

FORMAT = "decompbench-acts/1"
TRAIN, EVAL, MANIFEST = "train.safetensors", "eval.safetensors", "manifest.json"


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: not empty; pass --force to replace it")


def shape_of(t: Any) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def acts_manifest(toy: Any, params: dict[str, Any], site: str, seed: int,
                  tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    from decompbench import __version__

    gt = toy.ground_truth(site)
    files: dict[str, Any] = {
        name: {"tensors": {k: shape_of(v) for k, v in t.items()}} for name, t in tensors.items()
    }
    return {
        "format": FORMAT, "decompbench_version": __version__, "toy": toy.name,
        "params": params, "params_full": toy.params.model_dump(mode="json"), "seed": seed,
        "site": site, "d": int(tensors[TRAIN]["activations"].shape[1]),
        "n_train": int(tensors[TRAIN]["activations"].shape[0]),
        "n_eval": int(tensors[EVAL]["activations"].shape[0]),
        "feature_names": list(gt.names), "is_model": list(gt.is_model),
        "groups": None if gt.groups is None else list(gt.groups),
        "sampling": "bench.runner.site_data: toy built with seed; train/eval inputs drawn "
        "with derive_seed(seed, 'data/train') / derive_seed(seed, 'data/eval')",
        "files": files,
    }  # fmt: skip


def write_folder(out: Path, tensors: dict[str, dict[str, Any]], manifest: dict[str, Any],
                 force: bool) -> None:  # fmt: skip
    """Write every file into a temporary sibling, then move it to ``out``."""
    from decompbench.real.store import file_sha256, save_atomic, write_json_atomic

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise UserError(f"{out}: cannot write: {err.strerror or err}") from None
    try:
        for name, t in tensors.items():
            save_atomic(t, tmp / name)
            manifest["files"][name]["sha256"] = file_sha256(tmp / name)
        write_json_atomic(tmp / MANIFEST, manifest)
        if out.exists() and force:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_acts(toy_name: str, params: dict[str, Any], site: str, seed: int, n_train: int,
                n_eval: int, out: Path, force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Sample the site as a suite run would and write ``out`` (see the module docstring)."""
    from decompbench.bench.runner import site_data
    from decompbench.toys.base import build_toy

    check_out(out, force)
    for what, n in (("--n-train", n_train), ("--n-eval", n_eval)):
        if n < 1:
            raise UserError(f"{what} must be positive (got {n})")
    toy = build_toy(toy_name, params, seed, f"toy '{toy_name}' params")
    toy.check_site(site)
    data = site_data(toy, site, n_train, n_eval, seed)
    tensors = {
        TRAIN: {"activations": data.train_ND.contiguous()},
        EVAL: {"activations": data.eval_ND.contiguous(),
               "features": data.eval_feats_NK.contiguous()},
    }  # fmt: skip
    manifest = acts_manifest(toy, params, site, seed, tensors)
    write_folder(out, tensors, manifest, force)
    return manifest
