"""An on-disk cache of one real site's activations: shards written once, streamed back in
shuffled batches without ever holding the whole cache in memory.

Layout of a store folder::

    manifest.json              what the cache is and which shards are finished
    shard-00000.safetensors    "acts" [rows, d] (the manifest's dtype), "tokens" [seqs, T]

The manifest records the model, the hook, the dataset (path and SHA-256 of its bytes, or of
the in-memory texts), the window length T, the storage dtype, the sequences per shard and
the shard list. A shard is written to a temporary file and renamed into place, and the
manifest is rewritten (also atomically) after every shard, so a build that is interrupted
resumes where it stopped: finished shards are kept, the token windows are re-derived from
the dataset (deterministic) and only the missing shards are computed. A manifest that
names another model, hook, dataset or setting is refused rather than mixed.

Rows follow the site's layout (``real/sites.py``): row ``s * T + t`` of a shard is its
sequence ``s``, position ``t``; the shard's tokens make the spliced-loss metrics possible.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from decompbench.errors import UserError
from decompbench.real.sites import RealSite, token_windows
from decompbench.seeding import generator

FORMAT = "decompbench-activations/1"
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HEADER_KEYS = ("model", "hook", "dataset", "seq_len", "dtype", "shard_seqs", "max_seqs")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of in-memory texts, the same as that of a file holding them one per line."""
    return hashlib.sha256("".join(t + "\n" for t in texts).encode()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    """safetensors file via a temporary name; readable like any new file (0666 & ~umask,
    where ``save_file`` alone leaves 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {what} {path}: {' '.join(str(err).split())}") from None


def _start_manifest(out_dir: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The existing manifest if it matches ``header``; a fresh one if there is none."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {"format": FORMAT, **header, "d": None, "shards": [], "complete": False}
    man = read_json(path, "activation manifest")
    for key in HEADER_KEYS:
        if man.get(key) != header[key]:
            raise UserError(
                f"activation store {out_dir} was built with another {key} "
                f"({man.get(key)!r}, now {header[key]!r}): use a new folder"
            )
    return dict(man)


def build_store(
    out_dir: Path,
    site: RealSite,
    texts: Iterable[str],
    dataset: dict[str, Any],
    seq_len: int,
    shard_seqs: int,
    max_seqs: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Cache the site's activations on ``texts`` in shards of ``shard_seqs`` sequences.

    ``dataset`` is ``{"path": ..., "sha256": ...}``. Resumes a half-built store. Returns
    the final manifest.
    """
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)} (got '{dtype}')")
    if shard_seqs < 1:
        raise UserError(f"shard_seqs must be at least 1 (got {shard_seqs})")
    site.check_seq_len(seq_len)
    header = {"model": site.model_name, "hook": str(site.hook), "dataset": dataset,
              "seq_len": seq_len, "dtype": dtype, "shard_seqs": shard_seqs,
              "max_seqs": max_seqs}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    man = _start_manifest(out_dir, header)
    if man["complete"]:
        return man
    done, seen = len(man["shards"]), 0
    for i, tokens in enumerate(token_windows(site.tokenizer, texts, seq_len, shard_seqs)):
        if max_seqs is not None:
            tokens = tokens[: max(0, max_seqs - seen)]
        seen += tokens.shape[0]
        if tokens.shape[0] == 0:
            break
        if i < done:
            continue
        acts = site.acts(tokens).to(DTYPES[dtype])
        name = f"shard-{i:05d}.safetensors"
        save_atomic({"acts": acts, "tokens": tokens}, out_dir / name)
        man["d"] = int(acts.shape[1])
        man["shards"].append(
            {"file": name, "seqs": int(tokens.shape[0]), "rows": int(acts.shape[0])}
        )
        write_json_atomic(out_dir / MANIFEST, man)
    if not man["shards"]:
        raise UserError(f"the data gives no window of {seq_len} tokens")
    man["complete"] = True
    write_json_atomic(out_dir / MANIFEST, man)
    return man


class ActivationStore:
    """Read side of a finished store; ``shards`` selects a subset (e.g. a held-out split)."""

    def __init__(self, root: Path, shards: Sequence[int] | None = None) -> None:
        self.root = root
        man = read_json(root / MANIFEST, "activation manifest")
        if man.get("format") != FORMAT:
            raise UserError(f"{root / MANIFEST} is not a decompbench activation manifest")
        if not man.get("complete"):
            raise UserError(f"activation store {root} is unfinished: build it again to resume")
        self.manifest: dict[str, Any] = man
        n = len(man["shards"])
        self.indices = list(range(n)) if shards is None else list(shards)
        self.peak_rows = 0  # most rows held at once by ``batches``

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def n_rows(self) -> int:
        return sum(int(self.manifest["shards"][i]["rows"]) for i in self.indices)

    def select(self, shards: Sequence[int]) -> ActivationStore:
        return ActivationStore(self.root, [self.indices[i] for i in shards])

    def load_shard(self, i: int) -> tuple[Tensor, Tensor]:
        """Shard ``i`` of this selection: activations [rows, d] float32, tokens [seqs, T]."""
        entry = self.manifest["shards"][self.indices[i]]
        path = self.root / entry["file"]
        try:
            data = load_file(str(path))
        except (OSError, SafetensorError) as err:
            raise UserError(f"cannot read shard {path}: {' '.join(str(err).split())}") from None
        acts, tokens = data.get("acts"), data.get("tokens")
        if acts is None or tokens is None or acts.shape != (entry["rows"], self.d):
            raise UserError(f"shard {path} does not match the manifest")
        return acts.float(), tokens

    def shards(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(len(self.indices)):
            yield self.load_shard(i)

    def head(self, n_rows: int) -> Tensor:
        """The first ``n_rows`` rows (fewer if the store is smaller); loads only what it needs."""
        parts, have = [], 0
        for acts, _ in self.shards():
            parts.append(acts[: n_rows - have])
            have += parts[-1].shape[0]
            if have >= n_rows:
                break
        return torch.cat(parts)

    def batches(self, batch_size: int, seed: int, buffer_shards: int = 2) -> Iterator[Tensor]:
        """Endless shuffled batches [batch_size, d]: each epoch visits the shards in a random
        order, ``buffer_shards`` at a time, shuffles their rows together and carries the
        rows left over (fewer than a batch) into the next group. Every row appears once per
        epoch; at most ``buffer_shards`` shards plus one batch are in memory."""
        if self.n_rows < batch_size:
            raise UserError(f"batch_size {batch_size} exceeds the {self.n_rows} cached rows")
        left = torch.zeros(0, self.d)
        epoch = 0
        while True:
            g = generator(seed, f"store/epoch/{epoch}")
            order = torch.randperm(len(self.indices), generator=g).tolist()
            for start in range(0, len(order), buffer_shards):
                group = [self.load_shard(i)[0] for i in order[start : start + buffer_shards]]
                buf = torch.cat([left, *group])
                self.peak_rows = max(self.peak_rows, buf.shape[0])
                buf = buf[torch.randperm(buf.shape[0], generator=g)]
                n_full = buf.shape[0] // batch_size * batch_size
                yield from buf[:n_full].split(batch_size)
                left = buf[n_full:]
            epoch += 1
