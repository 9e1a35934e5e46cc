"""A tiny random GPT-2 with a character-level tokenizer, built locally and saved with
``save_pretrained``: the test and demo model of the real-model workflow (nothing is
downloaded). Its weights are drawn from ``seed`` and, with ``texts`` and ``train_steps``,
briefly trained (Adam, next-token loss) so that its activations matter to its output (a
random model predicts worse than a zero-ablated one, which makes "loss recovered"
meaningless). It exercises the loading, hooking, caching and splicing code paths; it is not
a model with features worth finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decompbench.real.sites import require_transformers, token_windows
from decompbench.seeding import derive_seed, generator

CHARS = [chr(i) for i in range(32, 127)]
SPECIAL = ["<eos>", "<unk>"]


def char_tokenizer() -> Any:
    """A fast tokenizer mapping each printable ASCII character to one id (0: EOS, 1: unknown)."""
    tf = require_transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return tf.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")


def fit_lm(model: Any, tokens_ST: Tensor, steps: int, seed: int, lr: float = 1e-2) -> None:
    """A few Adam steps of next-token training on random batches of 16 windows."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = generator(seed, "real/tiny-gpt2/batches")
    model.train()
    for _ in range(steps):
        batch = tokens_ST[torch.randint(tokens_ST.shape[0], (16,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def make_tiny_gpt2(
    path: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 32, n_head: int = 2,
    n_positions: int = 64, texts: Sequence[str] = (), train_steps: int = 0,
) -> Path:  # fmt: skip
    """Build, seed, optionally train, and save the model and tokenizer to ``path``."""
    tf = require_transformers()
    tok = char_tokenizer()
    cfg = tf.GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        vocab_size=len(tok), bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM",
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "real/tiny-gpt2"))
        model = tf.GPT2LMHeadModel(cfg)
    if train_steps and texts:
        windows = list(token_windows(tok, texts, min(32, n_positions), 1 << 30))
        if windows:
            fit_lm(model, windows[0], train_steps, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
