"""SAELens interop: write a fitted decompbench SAE as a SAELens (>= 6) folder, and read such
a folder back as a decompbench method, so dictionaries move both ways.

A SAELens folder holds ``cfg.json`` and ``sae_weights.safetensors`` with ``W_enc [d_in,
d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU,
``threshold [d_sae]``. SAELens' forward (``saes/sae.py``, ``standard_sae.py``,
``topk_sae.py``, ``jumprelu_sae.py`` of sae-lens 6.x) is

    pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    z   = relu(pre)                          "standard"
        = relu(top_k(pre))                   "topk" (k in cfg.json)
        = relu(pre) * (pre > threshold)      "jumprelu"
    x_hat = z @ W_dec + b_dec

with ``normalize_activations: "none"``. decompbench's SAE computes the same with an input
scale s (``normalize``): pre = (x s - b_dec) W_enc + b_enc, x_hat = (z W_dec + b_dec) / s,
so export folds s into the weights (W_enc s, W_dec / s, b_dec / s), as SAELens' own
``fold_activation_norm_scaling_factor`` does; the latents are unchanged. BatchTopK and
Matryoshka SAEs infer with one global threshold, which SAELens writes as a JumpReLU, and so
does this module (SAELens has no inference-time "batchtopk").

Adding a method or an architecture is one entry in ``EXPORT`` or ``IMPORT``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.sae import SAEMethod, SparseAutoencoder
from decompbench.methods.sae_batchtopk import BatchTopKSAE
from decompbench.methods.sae_jumprelu import JumpReLUSAE
from decompbench.real.dictionary import empty_sae, load_state, read_tensors, require_sae
from decompbench.real.store import read_json, save_atomic, write_json_atomic

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the format version written; sae-lens >= 6 reads it
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}  # fmt: skip
INFERENCE_NOOP_NORMS = ("none", "expected_average_only_in")  # no change to SAE.encode


def _no_cfg(_m: SAEMethod) -> dict[str, Any]:
    return {}


def _topk_cfg(m: SAEMethod) -> dict[str, Any]:
    return {"k": int(m.params.k), "rescale_acts_by_decoder_norm": False}  # type: ignore[attr-defined]


def _global_threshold(sae: SparseAutoencoder) -> Tensor:
    assert isinstance(sae, BatchTopKSAE)  # Matryoshka SAEs subclass it
    return sae.threshold.clamp_min(0).expand(sae.W_dec_MD.shape[0]).clone()


def _own_threshold(sae: SparseAutoencoder) -> Tensor:
    assert isinstance(sae, JumpReLUSAE)
    return sae.threshold_M.detach().clone()


@dataclass(frozen=True)
class Export:
    """How one decompbench method is written: SAELens architecture, extra cfg keys, thresholds."""

    architecture: str
    cfg: Callable[[SAEMethod], dict[str, Any]] = _no_cfg
    threshold: Callable[[SparseAutoencoder], Tensor] | None = None


EXPORT: dict[str, Export] = {
    "sae-relu": Export("standard"),
    "sae-topk": Export("topk", cfg=_topk_cfg),
    "sae-jumprelu": Export("jumprelu", threshold=_own_threshold),
    "sae-batchtopk": Export("jumprelu", threshold=_global_threshold),
    "sae-matryoshka": Export("jumprelu", threshold=_global_threshold),
}


def _no_params(_cfg: dict[str, Any]) -> dict[str, Any]:
    return {}


def _topk_params(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise UserError("topk SAEs with rescale_acts_by_decoder_norm are not supported")
    if not isinstance(cfg.get("k"), int):
        raise UserError("a topk cfg.json needs an integer 'k'")
    return {"k": cfg["k"]}


def _set_log_threshold(sae: SparseAutoencoder, threshold_M: Tensor) -> None:
    # relu(pre) * (pre > t) == pre * (pre > max(t, 0)); log 0 = -inf is a plain ReLU.
    assert isinstance(sae, JumpReLUSAE)
    sae.log_threshold_M.data.copy_(threshold_M.float().clamp_min(0).log())


@dataclass(frozen=True)
class Import:
    """How one SAELens architecture is read: decompbench method, its params, thresholds."""

    method: str
    params: Callable[[dict[str, Any]], dict[str, Any]] = _no_params
    set_threshold: Callable[[SparseAutoencoder, Tensor], None] | None = None
    extra_keys: tuple[str, ...] = field(default=())


IMPORT: dict[str, Import] = {
    "standard": Import("sae-relu"),
    "topk": Import("sae-topk", params=_topk_params),
    "jumprelu": Import("sae-jumprelu", set_threshold=_set_log_threshold, extra_keys=("threshold",)),
}


# --- export ---------------------------------------------------------------------------


@torch.no_grad()
def saelens_tensors(method: Decomposition) -> tuple[Export, dict[str, Tensor]]:
    """SAELens' tensors for a fitted SAE method, with the input scale folded in."""
    m = require_sae(method)
    if m.name not in EXPORT:
        raise UserError(f"no SAELens mapping for method '{m.name}' (have: {', '.join(EXPORT)})")
    spec, sae = EXPORT[m.name], m.sae
    s = float(sae.in_scale)
    tensors = {
        "W_enc": sae.W_enc_DM.detach() * s,  # [d_in, d_sae]
        "b_enc": sae.b_enc_M.detach().clone(),  # [d_sae]
        "W_dec": sae.W_dec_MD.detach() / s,  # [d_sae, d_in]
        "b_dec": sae.b_dec_D.detach() / s,  # [d_in]
    }
    if spec.threshold is not None:
        tensors["threshold"] = spec.threshold(sae)
    return spec, {k: v.float().contiguous() for k, v in tensors.items()}


def export_saelens(
    method: Decomposition, out_dir: Path, site: dict[str, Any] | None = None
) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` for ``method`` into ``out_dir``."""
    spec, tensors = saelens_tensors(method)
    m = require_sae(method)
    d_sae, d_in = tensors["W_dec"].shape
    site = site or {}
    cfg = {"architecture": spec.architecture, "d_in": int(d_in), "d_sae": int(d_sae),
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", **spec.cfg(m),
           "metadata": {"sae_lens_version": SAELENS_VERSION,
                        "model_name": site.get("model"), "hook_name": site.get("hook"),
                        "context_size": site.get("seq_len"),
                        "decompbench": {"method": m.name,
                                        "params": m.params.model_dump(mode="json"),
                                        "input_scale": float(m.sae.in_scale)}}}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(tensors, out_dir / WEIGHTS)
    write_json_atomic(out_dir / CFG, cfg)
    return out_dir


# --- import ---------------------------------------------------------------------------


def _version(text: object) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(text))[:3]
    return tuple(int(p) for p in parts) if parts else (0,)


def check_cfg(cfg: Any, where: str) -> Import:
    """Validate a SAELens cfg.json (one-line errors) and return its ``Import`` entry."""
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: not a JSON object")
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if version is None or _version(version) < (6,):
        raise UserError(
            f"{where}: needs a SAELens >= 6 config (metadata.sae_lens_version {version!r})"
        )
    arch = cfg.get("architecture")
    if arch not in IMPORT:
        raise UserError(
            f"{where}: architecture {arch!r} not supported (supported: {', '.join(IMPORT)})"
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise UserError(f"{where}: '{key}' must be a positive integer (got {cfg.get(key)!r})")
    if cfg.get("d_out", cfg["d_in"]) != cfg["d_in"]:
        raise UserError(f"{where}: d_out != d_in (transcoders) is not supported")
    if cfg.get("normalize_activations", "none") not in INFERENCE_NOOP_NORMS:
        raise UserError(
            f"{where}: normalize_activations {cfg['normalize_activations']!r} not supported"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise UserError(
            f"{where}: reshape_activations {cfg['reshape_activations']!r} not supported"
        )
    if str(cfg.get("dtype", "float32")).removeprefix("torch.") not in DTYPES:
        raise UserError(f"{where}: unknown dtype {cfg.get('dtype')!r} (known: {', '.join(DTYPES)})")
    return IMPORT[arch]


def check_tensors(t: dict[str, Tensor], spec: Import, d_in: int, d_sae: int, where: str) -> None:
    scale = t.get("scaling_factor")
    if scale is not None and bool((scale == 1).all()):
        del t["scaling_factor"]  # SAELens drops an all-ones scaling factor as well
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    shapes.update({k: (d_sae,) for k in spec.extra_keys})
    missing, extra = sorted(set(shapes) - set(t)), sorted(set(t) - set(shapes))
    if missing or extra:
        raise UserError(f"{where}: tensors missing {missing}, unexpected {extra}")
    for key, shape in shapes.items():
        if tuple(t[key].shape) != shape:
            raise UserError(
                f"{where}: '{key}' has shape {list(t[key].shape)}, expected {list(shape)}"
            )
        if not t[key].is_floating_point():
            raise UserError(f"{where}: '{key}' has dtype {t[key].dtype}, expected a float type")


def import_saelens(folder: Path) -> SAEMethod:
    """A fitted decompbench method computing the same latents and reconstruction as the
    SAELens SAE in ``folder`` (weights cast to float32)."""
    cfg = read_json(folder / CFG, "SAELens config")
    spec = check_cfg(cfg, str(folder / CFG))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    where = str(folder / WEIGHTS)
    t = read_tensors(folder / WEIGHTS)
    check_tensors(t, spec, d_in, d_sae, where)
    dtype = DTYPES[str(cfg.get("dtype", "float32")).removeprefix("torch.")]
    t = {k: v.to(dtype).float() for k, v in t.items()}  # SAELens computes in cfg's dtype
    b_enc = t["b_enc"]
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + t["b_dec"] @ t["W_enc"]  # decompbench always centres by b_dec
    method = empty_sae(spec.method, {"width": d_sae, **spec.params(cfg)}, d_in, str(folder / CFG))
    state = dict(method.sae.state_dict())
    state.update(W_enc_DM=t["W_enc"], b_enc_M=b_enc, W_dec_MD=t["W_dec"], b_dec_D=t["b_dec"],
                 in_scale=torch.ones(()))  # fmt: skip
    load_state(method, state, where)
    if spec.set_threshold is not None:
        spec.set_threshold(method.sae, t["threshold"])
    return method
