"""decompbench's own on-disk dictionary: what ``train-real`` writes and ``export`` reads.

A dictionary folder holds::

    dictionary.safetensors   the SAE module's state dict (decompbench names, e.g. W_dec_MD)
    dictionary.json          {"format", "method", "params", "d", "width", "site": {...}}

Loading rebuilds the method from the registry with the stored (validated) parameters and
loads the tensors strictly, so a file from another method or width is refused in one line.
Only SAE methods (``SAEMethod`` subclasses) have a module to save; other methods are
scored but not written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file

from decompbench.config import StrictModel, validate
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.sae import SAEMethod
from decompbench.real.store import read_json, save_atomic, write_json_atomic
from decompbench.seeding import generator

FORMAT = "decompbench-dictionary/1"
WEIGHTS = "dictionary.safetensors"
META = "dictionary.json"


def require_sae(method: Decomposition) -> SAEMethod:
    if not isinstance(method, SAEMethod) or not hasattr(method, "sae"):
        raise UserError(
            f"method '{method.name}' has no SAE module to save (only fitted SAE methods do)"
        )
    return method


def save_dictionary(method: Decomposition, out_dir: Path, site: dict[str, Any]) -> None:
    """Write a fitted SAE method to ``out_dir`` (tensors first, then the JSON that names them)."""
    sae = require_sae(method)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in sae.sae.state_dict().items()}
    save_atomic(state, out_dir / WEIGHTS)
    meta = {"format": FORMAT, "method": sae.name, "params": sae.params.model_dump(mode="json"),
            "d": int(sae.sae.W_dec_MD.shape[1]), "width": int(sae.sae.W_dec_MD.shape[0]),
            "site": site}  # fmt: skip
    write_json_atomic(out_dir / META, meta)


def empty_sae(name: str, params: dict[str, Any], d: int, where: str) -> SAEMethod:
    """An SAE method of the registry with its module built (weights to be loaded)."""
    method = build_method(name, params, where)
    if not isinstance(method, SAEMethod):
        raise UserError(f"{where}: method '{name}' is not an SAE method")
    method.sae = method.configure(method.make_module(d, generator(0, "real/load")))
    method.sae.eval()
    return method


def load_state(method: SAEMethod, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, with one-line errors for missing/extra keys or wrong shapes."""
    own = method.sae.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise UserError(f"{where}: tensors missing {missing}, unexpected {extra}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise UserError(
                f"{where}: tensor '{key}' has shape {list(value.shape)}, "
                f"expected {list(own[key].shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{where}: tensor '{key}' has non-finite values")
    method.sae.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise UserError(f"cannot read {path}: {' '.join(str(err).split())}") from None


class DictionaryMeta(StrictModel):
    """The contents of ``dictionary.json``."""

    format: Literal["decompbench-dictionary/1"]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    d: int = Field(ge=1)
    width: int = Field(ge=1)
    site: dict[str, Any] = Field(default_factory=dict)


def load_dictionary(folder: Path) -> tuple[SAEMethod, dict[str, Any]]:
    """The fitted method stored in ``folder`` and its metadata."""
    where = str(folder / META)
    meta = validate(DictionaryMeta, read_json(folder / META, "dictionary metadata"), where)
    method = empty_sae(meta.method, meta.params, meta.d, where)
    load_state(method, read_tensors(folder / WEIGHTS), str(folder / WEIGHTS))
    return method, meta.model_dump()
