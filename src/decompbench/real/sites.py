"""Sites in real causal language models: the activations at a named module, and the rest
of the model from there on.

No ground truth exists here: a real site only feeds the methods (activation-only ones get
an ``ActivationSite``, downstream-aware ones a ``DownstreamSite``) and the real-model
metrics (``real/metrics.py``).

Hook points. ``NAME`` is a module of ``model.named_modules()``; ``NAME`` or
``NAME:output`` is that module's output (for GPT-2, ``transformer.h.3`` is the residual
stream after block 3 and ``transformer.h.3.mlp`` the MLP's output), ``NAME:input`` its
first positional input, read with a forward pre-hook (``transformer.h.3.mlp:input`` is the
MLP's input, i.e. ``ln_2``'s output). A module returning a tuple is read and replaced at
its first element.

Row layout. Texts are tokenised, joined with the EOS token between them and cut into
windows of T tokens (no padding, so no position is ever masked): a token batch is a
``[S, T]`` LongTensor. The activations at the hook are ``[S, T, d]``, flattened row-major
to ``[S * T, d]``: row ``s * T + t`` is sequence ``s``, position ``t`` (``flatten_rows`` /
``unflatten_rows``). The downstream of a real site (``RealDownstream``) is not a per-row
function (attention mixes positions), so it takes whole sequences: exactly the ``S * T``
rows of the token batch it is bound to, in that order.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from decompbench.errors import UserError
from decompbench.toys.base import ActivationSite, DownstreamSite

Port = Literal["output", "input"]
Replace = Callable[[Tensor], Tensor]  # [S, T, d] -> [S, T, d]


@dataclass(frozen=True)
class HookSpec:
    """A module name and which side of it: its output, or its first input."""

    module: str
    port: Port = "output"

    @staticmethod
    def parse(text: str) -> HookSpec:
        name, _, port = text.strip().partition(":")
        if port not in ("", "output", "input"):
            raise UserError(f"hook '{text}': the part after ':' must be 'input' or 'output'")
        if not name:
            raise UserError(
                "hook name is empty (e.g. transformer.h.3 or transformer.h.3.mlp:input)"
            )
        return HookSpec(name, "input" if port == "input" else "output")

    def __str__(self) -> str:
        return self.module if self.port == "output" else f"{self.module}:input"


def flatten_rows(acts_STD: Tensor) -> Tensor:
    """[S, T, d] -> [S * T, d], row s * T + t = (sequence s, position t)."""
    return acts_STD.reshape(-1, acts_STD.shape[-1])


def unflatten_rows(acts_ND: Tensor, seq_len: int) -> Tensor:
    """[S * T, d] -> [S, T, d]; the inverse of ``flatten_rows``."""
    if acts_ND.shape[0] % seq_len:
        raise UserError(f"{acts_ND.shape[0]} rows are not whole sequences of {seq_len} tokens")
    return acts_ND.reshape(-1, seq_len, acts_ND.shape[-1])


# --- loading --------------------------------------------------------------------------


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "real models need the 'transformers' package: pip install 'decompbench[real]'"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def check_model_path(name_or_path: str) -> None:
    """A name that cannot be a hub id (``/abs``, ``./rel``, ``a/b/c``) must be an
    existing folder: say so instead of asking the hub (which would reject it as a repo id)."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {name_or_path}: not a model folder (a file)")
        return
    if not HUB_ID.fullmatch(name_or_path) or ".." in name_or_path or "--" in name_or_path:
        raise UserError(f"--model {name_or_path}: no such model folder")


def load_model(name_or_path: str) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer from a local folder (or a hub id), frozen, in eval mode."""
    check_model_path(name_or_path)
    tf = require_transformers()
    local = Path(name_or_path).exists()
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=local)
        tokenizer = tf.AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model '{name_or_path}': {first}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def resolve_hook(model: nn.Module, spec: HookSpec) -> nn.Module:
    """The module named by ``spec``, or a one-line error listing close matches."""
    modules = dict(model.named_modules())
    if spec.module in modules and spec.module:
        return modules[spec.module]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(spec.module, names, n=5, cutoff=0.6)
    hint = ", ".join(close) if close else ", ".join(names[:5]) + ", ..."
    raise UserError(f"model has no module '{spec.module}' (close matches: {hint})")


# --- tokens ---------------------------------------------------------------------------


def read_texts(path: Path) -> Iterator[str]:
    """The non-empty lines of a UTF-8 text file, one text each, read lazily."""
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read data file {path}: {err}") from None


def token_windows(
    tokenizer: Any, texts: Iterable[str], seq_len: int, batch_seqs: int
) -> Iterator[Tensor]:
    """[batch_seqs, seq_len] token batches: texts joined by EOS, cut into windows.

    The last, partial batch is yielded with fewer sequences; a partial window is dropped.
    """
    if seq_len < 2:
        raise UserError(f"seq_len must be at least 2 (got {seq_len})")
    eos = tokenizer.eos_token_id
    buf: list[int] = []
    rows: list[list[int]] = []
    for text in texts:
        buf.extend(tokenizer(text)["input_ids"])
        if eos is not None:
            buf.append(int(eos))
        while len(buf) >= seq_len:
            rows.append(buf[:seq_len])
            buf = buf[seq_len:]
            if len(rows) == batch_seqs:
                yield torch.tensor(rows, dtype=torch.long)
                rows = []
    if rows:
        yield torch.tensor(rows, dtype=torch.long)


# --- hooks ----------------------------------------------------------------------------


def _first(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else value[0]


def _with_first(value: Any, new: Tensor) -> Any:
    return new if isinstance(value, Tensor) else (new, *value[1:])


class _Stop(Exception):
    """Raised from a capture hook to skip the rest of the forward pass."""


@contextmanager
def at_hook(module: nn.Module, port: Port, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Call ``fn`` on the hook point's value [S, T, d]; a returned tensor replaces it."""

    def on_output(_m: nn.Module, _inp: Any, out: Any) -> Any:
        new = fn(_first(out))
        return None if new is None else _with_first(out, new)

    def on_input(_m: nn.Module, args: Any) -> Any:
        new = fn(args[0])
        return None if new is None else (new, *args[1:])

    if port == "output":
        handle = module.register_forward_hook(on_output)
    else:
        handle = module.register_forward_pre_hook(on_input)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class RealSite:
    """A loaded model, its tokenizer and one hook point in it."""

    model_name: str
    model: nn.Module
    tokenizer: Any
    hook: HookSpec

    @property
    def module(self) -> nn.Module:
        return resolve_hook(self.model, self.hook)

    @property
    def max_seq_len(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        n = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else None

    def check_seq_len(self, seq_len: int) -> None:
        limit = self.max_seq_len
        if limit is not None and seq_len > limit:
            raise UserError(f"seq_len {seq_len} exceeds the model's {limit} positions")

    @torch.no_grad()
    def acts(self, tokens_ST: Tensor, batch_seqs: int = 16) -> Tensor:
        """Activations [S * T, d] (float32) at the hook; the model stops right after it."""
        out: list[Tensor] = []

        def grab(value: Tensor) -> None:
            out.append(value.detach().float().reshape(-1, value.shape[-1]))
            raise _Stop

        with at_hook(self.module, self.hook.port, grab):
            for chunk in tokens_ST.split(batch_seqs):
                try:
                    self.model(input_ids=chunk)
                except _Stop:
                    continue
                raise UserError(f"hook '{self.hook}' was never reached in a forward pass")
        return torch.cat(out) if out else torch.zeros(0, 0)

    def logits(self, tokens_ST: Tensor, replace: Replace | None = None) -> Tensor:
        """Logits [S, T, vocab] with the hook point's value replaced by ``replace(value)``."""
        if replace is None:
            return _logits(self.model, tokens_ST)

        def swap(value: Tensor) -> Tensor:
            new = replace(value)
            assert new.shape == value.shape, (
                f"replacement {tuple(new.shape)} != {tuple(value.shape)}"
            )
            return new.to(value.dtype)

        with at_hook(self.module, self.hook.port, swap):
            return _logits(self.model, tokens_ST)

    def activation_site(self, tokens_ST: Tensor) -> ActivationSite:
        return ActivationSite(str(self.hook), self.acts(tokens_ST))

    def downstream_site(self, tokens_ST: Tensor) -> DownstreamSite:
        down = RealDownstream(self, tokens_ST)
        return DownstreamSite(
            str(self.hook), self.acts(tokens_ST), downstream=down, output_kind="categorical"
        )


def constant(value_STD: Tensor) -> Replace:
    """A ``Replace`` that puts ``value_STD`` at the hook point, whatever was there."""

    def replace(_old: Tensor) -> Tensor:
        return value_STD

    return replace


def _logits(model: nn.Module, tokens_ST: Tensor) -> Tensor:
    return model(input_ids=tokens_ST).logits


def open_site(model: str, hook: str) -> RealSite:
    """Load ``model`` (path or hub id) and check ``hook`` names one of its modules."""
    spec = HookSpec.parse(hook)
    net, tok = load_model(model)
    resolve_hook(net, spec)
    return RealSite(model, net, tok, spec)


class RealDownstream(nn.Module):
    """The rest of the model from the hook on, for the sequences ``tokens_ST``.

    ``forward(acts_BD)`` takes exactly ``S * T`` rows (row ``s * T + t`` = sequence ``s``,
    position ``t``), puts them in place of the hook point's value and returns the logits
    [S * T, vocab]. Gradients flow to ``acts_BD``. The model is shared, not copied (its
    weights are frozen); for a hook inside a block (e.g. an MLP output) the tokens also
    supply what the rest of the block adds (the residual stream around it).
    """

    def __init__(self, site: RealSite, tokens_ST: Tensor, batch_seqs: int = 16) -> None:
        super().__init__()
        self.model = site.model  # registered, so its weights are reachable as submodules
        self.site = site
        self.tokens_ST = tokens_ST
        self.batch_seqs = batch_seqs

    def forward(self, acts_BD: Tensor) -> Tensor:
        S, T = self.tokens_ST.shape
        if acts_BD.shape[0] != S * T:
            raise UserError(
                f"a real site's downstream takes whole sequences: {S * T} rows "
                f"({S} sequences of {T} tokens), got {acts_BD.shape[0]}"
            )
        acts_STD = unflatten_rows(acts_BD, T)
        outs = []
        for i in range(0, S, self.batch_seqs):
            part = acts_STD[i : i + self.batch_seqs]
            logits = self.site.logits(self.tokens_ST[i : i + self.batch_seqs], constant(part))
            outs.append(flatten_rows(logits))
        return torch.cat(outs)
