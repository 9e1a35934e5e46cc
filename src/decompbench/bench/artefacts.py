"""Per-run artefacts: what the report needs to redraw a run without retraining it.

After a run is scored its artefacts are computed where it ran (``run_artefacts``) and
written by the runner (``write_run_artefacts``), under
``DIR/artefacts/``:

* ``<run_key>.safetensors``: ``directions_MD`` (the method's learned unit directions),
  ``true_directions_KD`` (every true feature at the site, model and data-only),
  ``alive_M`` (fires on at least one evaluation sample), ``firing_rate_M`` (share of
  evaluation samples on which the latent fires, same rule as the metrics),
  ``mean_abs_M`` (mean |activation| over evaluation samples), ``latent_sign_M`` and
  ``true_sign_K`` (+1 / -1 for one-sided activations, 0 for two-sided; the signs the
  sign-aware metrics use) and, when the scorer's
  downstream network is given, ``downstream_effect_M``: the mean over evaluation samples
  of ``||f(decode(z with latent m zeroed)) - f(decode(z))||_2``, i.e. how much the
  network's output moves when the latent is ablated in the spliced reconstruction;
* ``<run_key>.json``: metadata (toy, params, site, method, params, seed, directions kind,
  feature names, ``is_model`` flags, factor groups, shapes).

Only safetensors and JSON (never pickles): loading an artefact cannot run code. Both
files are written to a temporary name, fsync'ed and renamed; the JSON goes last, so a
JSON file on disk means its tensors are complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from decompbench.bench.results import write_bytes_atomic, write_text_atomic
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.metrics.reconstruction import active
from decompbench.metrics.recovery import signs_of
from decompbench.toys.base import GroundTruth

ARTEFACTS = "artefacts"
FORMAT = "decompbench-artefacts-v1"
EFFECT_SAMPLES = 1024  # evaluation samples used for the downstream effect
EFFECT_BATCH = 4096  # rows per downstream call

Downstream = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RunArtefacts:
    """One run's saved tensors and metadata (see the module docstring for the keys)."""

    key: str
    meta: dict[str, Any]
    directions_MD: Tensor
    true_directions_KD: Tensor
    alive_M: Tensor
    firing_rate_M: Tensor
    mean_abs_M: Tensor
    downstream_effect_M: Tensor | None
    latent_sign_M: Tensor | None = None
    true_sign_K: Tensor | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def is_model(self) -> list[bool]:
        return [bool(b) for b in self.meta["is_model"]]


def artefact_paths(out_dir: Path, run_key: str) -> tuple[Path, Path]:
    """(tensors, metadata) paths of ``run_key`` in ``out_dir``."""
    if not run_key or any(c in run_key for c in "/\\") or run_key.startswith("."):
        raise ValueError(f"bad run key {run_key!r}")
    base = out_dir / ARTEFACTS / run_key
    return base.with_name(f"{run_key}.safetensors"), base.with_name(f"{run_key}.json")


@torch.no_grad()
def downstream_effect(f: Downstream, decode: Callable[[Tensor], Tensor], Z_NM: Tensor) -> Tensor:
    """[m] mean over samples of the output change (L2) when latent m is zeroed.

    Zeroing a latent changes nothing on samples where it is exactly zero, so each latent
    is evaluated on the samples where it is non-zero only (total cost ~ N x L0 rows); the
    unablated output is computed once for all samples.
    """
    n, m = Z_NM.shape
    effect = torch.zeros(m, dtype=torch.float64)
    if n == 0:
        return effect.float()
    nonzero_NM = Z_NM != 0
    base_NO = torch.cat([f(decode(Z_NM[s : s + EFFECT_BATCH])) for s in range(0, n, EFFECT_BATCH)])
    for j in range(m):
        rows = nonzero_NM[:, j].nonzero().squeeze(1)
        for start in range(0, rows.numel(), EFFECT_BATCH):
            part = rows[start : start + EFFECT_BATCH]
            ablated = Z_NM[part].clone()
            ablated[:, j] = 0
            delta = f(decode(ablated)) - base_NO[part]
            effect[j] += delta.double().reshape(delta.shape[0], -1).norm(dim=1).sum()
    return (effect / max(n, 1)).float()


def run_tensors(
    method: Decomposition,
    gt: GroundTruth,
    X_eval_ND: Tensor,
    feats_NK: Tensor,
    downstream: Downstream | None,
) -> dict[str, Tensor]:
    """The tensors of one fitted run, on its evaluation samples."""
    Z_NM = method.encode(X_eval_ND)
    fires_NM = active(Z_NM)
    D_MD = method.directions()
    assert D_MD.shape == (Z_NM.shape[1], X_eval_ND.shape[1]), f"directions {tuple(D_MD.shape)}"
    tensors = {
        "directions_MD": D_MD.float(),
        "true_directions_KD": gt.directions_KD.float(),
        "alive_M": fires_NM.any(dim=0),
        "firing_rate_M": fires_NM.float().mean(dim=0),
        "mean_abs_M": Z_NM.abs().float().mean(dim=0),
        "latent_sign_M": signs_of(Z_NM),
        "true_sign_K": signs_of(feats_NK),
    }
    if downstream is not None:
        Z_sub = Z_NM[:EFFECT_SAMPLES]
        tensors["downstream_effect_M"] = downstream_effect(downstream, method.decode, Z_sub)
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def output_norm(downstream: Downstream, X_ND: Tensor) -> float:
    """Mean L2 norm of the network's output on ``X_ND`` (a scale for the effects)."""
    y = downstream(X_ND[:EFFECT_SAMPLES]).double()
    return float(y.reshape(y.shape[0], -1).norm(dim=1).mean())


@dataclass(frozen=True)
class ArtefactData:
    """One run's artefacts in memory: computed where the run ran (maybe another process or
    machine), written by the runner; plain tensors and JSON values, so it pickles."""

    tensors: dict[str, Tensor]
    info: dict[str, Any]


@torch.no_grad()
def run_artefacts(
    run_key: str,
    method: Decomposition,
    gt: GroundTruth,
    X_eval_ND: Tensor,
    feats_NK: Tensor,
    downstream: Downstream | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ArtefactData:
    """The tensors and metadata ``write_run_artefacts`` stores.

    ``meta`` holds the run's identity (e.g. the runner's ``base_fields``: toy,
    toy_params, site, method, method_params, seed, ...); the ground truth's names, flags
    and groups and the method's access and directions kind are added here.
    ``downstream`` is the scorer's network from the site to the output (never the
    method's); without it no downstream effect is stored.
    """
    assert feats_NK.shape == (X_eval_ND.shape[0], gt.directions_KD.shape[0]), "feats_NK shape"
    artefact_paths(Path(), run_key)  # reject a bad key before any work
    tensors = run_tensors(method, gt, X_eval_ND, feats_NK, downstream)
    info: dict[str, Any] = dict(meta or {})
    info.update(
        format=FORMAT,
        run_key=run_key,
        method=info.get("method", method.name),
        access=method.access,
        directions=method.directions_kind,
        feature_names=list(gt.names),
        is_model=list(gt.is_model),
        groups=None if gt.groups is None else list(gt.groups),
        feature_firing_rate=(feats_NK != 0).float().mean(dim=0).tolist(),
        n_eval=int(X_eval_ND.shape[0]),
        downstream_output_norm=None if downstream is None else output_norm(downstream, X_eval_ND),
        tensors={k: list(v.shape) for k, v in tensors.items()},
    )
    return ArtefactData(tensors, info)


def write_run_artefacts(out_dir: Path, data: ArtefactData) -> Path:
    """Write ``DIR/artefacts/<run_key>.safetensors`` then ``.json``; return the JSON path."""
    tensor_path, json_path = artefact_paths(out_dir, str(data.info["run_key"]))
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(tensor_path, save_tensors(data.tensors))
    write_text_atomic(json_path, json.dumps(data.info, indent=1, allow_nan=False) + "\n")
    return json_path


def load_run_artefacts(out_dir: Path, run_key: str) -> RunArtefacts | None:
    """The artefacts of ``run_key``, or ``None`` when they were never saved.

    A present but unreadable or inconsistent pair raises ``UserError`` (one line).
    """
    tensor_path, json_path = artefact_paths(out_dir, run_key)
    if not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        t = load_tensors(tensor_path.read_bytes())
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(
            f"{json_path}: unreadable artefacts ({type(err).__name__}: {err})"
        ) from None
    need = ("directions_MD", "true_directions_KD", "alive_M", "firing_rate_M", "mean_abs_M")
    missing = [k for k in need if k not in t]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or missing:
        raise UserError(f"{json_path}: not a {FORMAT} artefact (missing {missing or 'format'})")
    m, k = t["directions_MD"].shape[0], t["true_directions_KD"].shape[0]
    if len(meta.get("feature_names", [])) != k or t["firing_rate_M"].shape != (m,):
        raise UserError(f"{json_path}: artefact shapes disagree with its metadata")
    return RunArtefacts(
        run_key,
        meta,
        t["directions_MD"],
        t["true_directions_KD"],
        t["alive_M"].bool(),
        t["firing_rate_M"],
        t["mean_abs_M"],
        t.get("downstream_effect_M"),
        t.get("latent_sign_M"),
        t.get("true_sign_K"),
    )
