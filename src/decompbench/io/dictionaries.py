"""Dictionaries trained anywhere, read as fitted decompbench methods (never unpickled).

``read_dictionary(PATH)`` recognises:

* a **SAELens** folder (``cfg.json`` + ``sae_weights.safetensors``; ``real.saelens``);
* a **sparsify** checkpoint folder (``cfg.json`` + ``sae.safetensors``): tensors
  ``encoder.weight [width, d_in]``, ``encoder.bias [width]``, ``W_dec [width, d_in]``,
  ``b_dec [d_in]``; latents ``relu((x - b_dec) W_encᵀ + b_enc)`` of which the ``k`` largest
  are kept (``activation: topk``) or the largest of each of ``k`` contiguous groups
  (``groupmax``); reconstruction ``z W_dec + b_dec``. Transcoders and skip connections are
  refused;
* a **decompbench** dictionary folder (``dictionary.json``, from ``train-real`` or
  ``import --out``) or a run artefact (``DIR/artefacts/<run>.json`` or its
  ``.safetensors``: the learned directions only);
* a **plain safetensors** file with ``W_dec [width, d_in]`` and optionally ``W_enc [d_in,
  width]``, ``b_enc [width]``, ``b_dec [d_in]``, ``threshold [width]`` (SAELens' names and
  layouts): latents ``relu(pre)`` (``* (pre > threshold)`` with a threshold), ``pre = (x -
  b_dec) W_enc + b_enc``.

Without an encoder the latents are the least-squares (minimum-norm) coefficients of ``x -
b_dec`` on the rows of ``W_dec``. Directions are ``W_dec``'s rows, normalised. Pickles
(``.pt``, ``.pth``, ``.pkl``, ``.bin``, ``.ckpt`` or any file that is not safetensors) are
refused with one line: loading them can run code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.toys.base import ActivationSite

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy")
Activation = Literal["relu", "jumprelu", "topk", "groupmax", "lstsq", "custom"]


class NoParams(StrictModel):
    """A read dictionary has no settings: it is already fitted."""


@dataclass(frozen=True)
class Weights:
    """A dictionary's tensors (float32) and how its latents are computed."""

    W_dec_MD: Tensor
    b_dec_D: Tensor
    W_enc_DM: Tensor | None = None
    b_enc_M: Tensor | None = None
    threshold_M: Tensor | None = None
    k: int | None = None
    activation: Activation = "lstsq"
    encoder: Callable[[Tensor], Tensor] | None = None  # a caller's own, for "custom"


class ReadDictionary(Decomposition):
    """A fitted dictionary read from disk or given as tensors; ``fit`` is refused."""

    name: ClassVar[str] = "dictionary"
    Params: ClassVar[type[StrictModel]] = NoParams
    summary: ClassVar[str] = "a dictionary trained elsewhere"

    def __init__(self, weights: Weights, label: str = "dictionary") -> None:
        super().__init__(NoParams())
        self.w, self.label = weights, label
        self.pinv_DM: Tensor | None = None

    def fit(self, site: ActivationSite, seed: int) -> None:
        raise UserError(f"{self.label}: a read dictionary is already fitted")

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        w = self.w
        x = acts_ND.float() - w.b_dec_D
        if w.activation == "custom":
            assert w.encoder is not None
            return w.encoder(acts_ND).float()
        if w.W_enc_DM is None or w.activation == "lstsq":
            if self.pinv_DM is None:
                self.pinv_DM = torch.linalg.pinv(w.W_dec_MD.double()).float()
            return x @ self.pinv_DM
        pre = x @ w.W_enc_DM + (0 if w.b_enc_M is None else w.b_enc_M)
        return activate(pre, w)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return latents_NM.float() @ self.w.W_dec_MD + self.w.b_dec_D

    def directions(self) -> Tensor:
        W = self.w.W_dec_MD
        return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def activate(pre_NM: Tensor, w: Weights) -> Tensor:
    z = torch.relu(pre_NM)
    if w.activation == "jumprelu" and w.threshold_M is not None:
        return z * (pre_NM > w.threshold_M)
    if w.activation == "topk" and w.k is not None:
        k = min(w.k, z.shape[1])
        top = z.topk(k, dim=1)
        return torch.zeros_like(z).scatter(1, top.indices, top.values)
    if w.activation == "groupmax" and w.k is not None:
        n, m = z.shape
        best = z.view(n, w.k, m // w.k).max(dim=2)
        offsets = torch.arange(0, m, m // w.k).unsqueeze(0)
        return torch.zeros_like(z).scatter(1, best.indices + offsets, best.values)
    return z


# --- checks ---------------------------------------------------------------------------------


def refuse_pickle(path: Path) -> None:
    """One line for a file that is not safetensors (a pickle, say): never loaded."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{path}: {path.suffix} files are pickles, which can run code when loaded; "
            "decompbench never unpickles: save the tensors with safetensors instead"
        )
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if len(head) < 9 or head[8:9] != b"{" or n < 2 or n > path.stat().st_size:
        raise UserError(
            f"{path}: not a safetensors file (pickles and other formats are never loaded)"
        )


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from decompbench.real.dictionary import read_tensors

    refuse_pickle(path)
    return read_tensors(path)


def float_tensor(t: dict[str, Tensor], key: str, shape: tuple[int, ...], where: str) -> Tensor:
    value = t[key]
    if tuple(value.shape) != shape:
        raise UserError(f"{where}: '{key}' has shape {list(value.shape)}, expected {list(shape)}")
    if not value.is_floating_point():
        raise UserError(f"{where}: '{key}' has dtype {value.dtype}, expected a float type")
    value = value.float()
    if not bool(torch.isfinite(value).all()):
        raise UserError(f"{where}: '{key}' has non-finite values")
    return value


# --- formats --------------------------------------------------------------------------------


def plain_weights(t: dict[str, Tensor], where: str) -> Weights:
    """A plain safetensors file: ``W_dec`` and optional SAELens-named encoder tensors."""
    known = {"W_dec", "W_enc", "b_enc", "b_dec", "threshold"}
    if "W_dec" not in t:
        raise UserError(f"{where}: no 'W_dec' tensor (found {sorted(t)})")
    if extra := sorted(set(t) - known):
        raise UserError(f"{where}: unexpected tensors {extra} (known: {sorted(known)})")
    if t["W_dec"].ndim != 2:
        raise UserError(f"{where}: 'W_dec' must be [width, d_in], got {list(t['W_dec'].shape)}")
    m, d = (int(s) for s in t["W_dec"].shape)
    W_dec = float_tensor(t, "W_dec", (m, d), where)
    b_dec = float_tensor(t, "b_dec", (d,), where) if "b_dec" in t else torch.zeros(d)
    if "W_enc" not in t:
        if set(t) - {"W_dec", "b_dec"}:
            raise UserError(f"{where}: 'b_enc' or 'threshold' without 'W_enc'")
        return Weights(W_dec, b_dec)
    W_enc = float_tensor(t, "W_enc", (d, m), where)
    b_enc = float_tensor(t, "b_enc", (m,), where) if "b_enc" in t else torch.zeros(m)
    if "threshold" in t:
        thr = float_tensor(t, "threshold", (m,), where)
        return Weights(W_dec, b_dec, W_enc, b_enc, thr, activation="jumprelu")
    return Weights(W_dec, b_dec, W_enc, b_enc, activation="relu")


def read_cfg(path: Path) -> dict[str, Any]:
    from decompbench.real.store import read_json

    cfg = read_json(path, "config")
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: not a JSON object")
    return cfg


def positive(cfg: dict[str, Any], key: str, where: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}: '{key}' must be a positive integer (got {value!r})")
    return value


def sparsify_weights(folder: Path) -> Weights:
    """A sparsify checkpoint folder (see the module docstring)."""
    where = str(folder / "cfg.json")
    cfg = read_cfg(folder / "cfg.json")
    d, k = positive(cfg, "d_in", where), positive(cfg, "k", where)
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise UserError(f"{where}: transcoders and skip connections are not supported")
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise UserError(f"{where}: activation {activation!r} not supported (topk, groupmax)")
    wpath = folder / "sae.safetensors"
    t = read_safetensors(wpath)
    need = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    if set(t) != need:
        raise UserError(f"{wpath}: expected tensors {sorted(need)}, found {sorted(t)}")
    m = int(t["W_dec"].shape[0]) if t["W_dec"].ndim == 2 else 0
    expected = cfg.get("num_latents") or d * positive(cfg, "expansion_factor", where)
    if m != expected:
        raise UserError(f"{wpath}: W_dec has {m} latents, cfg.json says {expected}")
    if activation == "groupmax" and m % k:
        raise UserError(f"{where}: groupmax needs k ({k}) to divide the width ({m})")
    W_enc = float_tensor(t, "encoder.weight", (m, d), str(wpath)).T.contiguous()
    return Weights(
        float_tensor(t, "W_dec", (m, d), str(wpath)), float_tensor(t, "b_dec", (d,), str(wpath)),
        W_enc, float_tensor(t, "encoder.bias", (m,), str(wpath)), k=min(k, m),
        activation=activation,
    )  # fmt: skip


def artefact_directions(json_path: Path) -> Weights:
    """The learned directions of a run artefact (``DIR/artefacts/<run>.json``)."""
    from decompbench.bench.artefacts import FORMAT, load_run_artefacts

    meta = read_cfg(json_path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{json_path}: not a {FORMAT} file")
    art = load_run_artefacts(json_path.parent.parent, json_path.stem)
    assert art is not None
    D = art.directions_MD.float()
    return Weights(D, torch.zeros(D.shape[1]))


Kind = Literal["saelens", "sparsify", "decompbench", "artefact", "safetensors"]


def read_dictionary(path: Path) -> tuple[Decomposition, Kind]:
    """The dictionary at ``path`` as a fitted method, and which format it was."""
    if path.is_dir():
        return read_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix == ".json":
        return ReadDictionary(artefact_directions(path), str(path)), "artefact"
    meta = path.with_suffix(".json")
    is_artefact = path.suffix == ".safetensors" and meta.is_file()
    if is_artefact and str(read_cfg(meta).get("format", "")).startswith("decompbench-artefacts"):
        return ReadDictionary(artefact_directions(meta), str(path)), "artefact"
    t = read_safetensors(path)
    return ReadDictionary(plain_weights(t, str(path)), str(path)), "safetensors"


def read_folder(folder: Path) -> tuple[Decomposition, Kind]:
    from decompbench.real.dictionary import META, load_dictionary
    from decompbench.real.saelens import CFG, WEIGHTS, import_saelens

    if (folder / META).is_file():
        return load_dictionary(folder)[0], "decompbench"
    if (folder / CFG).is_file() and (folder / WEIGHTS).is_file():
        return import_saelens(folder), "saelens"
    if (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file():
        return ReadDictionary(sparsify_weights(folder), str(folder)), "sparsify"
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(folder / pickles[0])
    raise UserError(
        f"{folder}: not a dictionary folder (expected cfg.json + sae_weights.safetensors "
        "(SAELens), cfg.json + sae.safetensors (sparsify) or dictionary.json (decompbench))"
    )
