"""Real-model metrics: no ground truth, so reconstruction, sparsity and what splicing the
reconstruction into the model does to its next-token predictions.

Pure functions of tensors first; ``real_scores`` runs the model (clean, spliced, and with
the hook point zero-ablated) on held-out token windows and combines them.

* ``fvu``, ``l0``, ``dead_frac`` as for toys (``decompbench.metrics``); ``dense_frac``: share
  of latents firing on more than ``dense_rate`` of the tokens.
* ``ce_clean`` / ``ce_spliced`` / ``ce_zero``: mean next-token cross-entropy (nats) of the
  original model, with the reconstruction spliced in at the hook, and with zeros there.
* ``ce_increase`` = ce_spliced - ce_clean; ``kl`` = mean over positions of
  KL(original || spliced) of the next-token distributions.
* ``loss_recovered`` = (ce_zero - ce_spliced) / (ce_zero - ce_clean): 1 when splicing costs
  nothing, 0 when it is as bad as deleting the activations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from decompbench import metrics as M
from decompbench.methods.base import Decomposition
from decompbench.metrics.reconstruction import active
from decompbench.real.sites import RealSite, constant, flatten_rows, unflatten_rows


def next_token_ce(logits_STV: Tensor, tokens_ST: Tensor) -> Tensor:
    """[S, T-1] cross-entropy of predicting token t+1 from position t."""
    logp = torch.log_softmax(logits_STV[:, :-1].double(), dim=-1)
    return -logp.gather(-1, tokens_ST[:, 1:, None]).squeeze(-1)


def next_token_kl(ref_STV: Tensor, new_STV: Tensor) -> Tensor:
    """[S, T] KL(ref || new) of the next-token distributions at each position."""
    logp = torch.log_softmax(ref_STV.double(), dim=-1)
    logq = torch.log_softmax(new_STV.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(ce_zero - ce_spliced) / (ce_zero - ce_clean); nan when zero-ablation costs nothing."""
    gap = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / gap if gap != 0 else float("nan")


def dense_frac(Z_NM: Tensor, dense_rate: float = 0.5) -> float:
    """Share of latents firing on more than ``dense_rate`` of the samples."""
    if Z_NM.shape[1] == 0:
        return 0.0
    return float((active(Z_NM).double().mean(dim=0) > dense_rate).double().mean())


def reconstruction_scores(X_ND: Tensor, Z_NM: Tensor, Xhat_ND: Tensor) -> dict[str, float]:
    return {
        "fvu": M.fvu(X_ND, Xhat_ND),
        "l0": M.l0(Z_NM),
        "dead_frac": M.dead_frac(Z_NM),
        "dense_frac": dense_frac(Z_NM),
    }


class _Sums:
    """Running token-weighted sums of the per-position losses."""

    def __init__(self) -> None:
        self.ce_clean = self.ce_spliced = self.ce_zero = self.kl = 0.0
        self.n_ce = self.n_kl = 0

    def add(self, tokens: Tensor, clean: Tensor, spliced: Tensor, zero: Tensor) -> None:
        self.ce_clean += float(next_token_ce(clean, tokens).sum())
        self.ce_spliced += float(next_token_ce(spliced, tokens).sum())
        self.ce_zero += float(next_token_ce(zero, tokens).sum())
        self.n_ce += tokens.shape[0] * (tokens.shape[1] - 1)
        self.kl += float(next_token_kl(clean, spliced).sum())
        self.n_kl += tokens.numel()

    def scores(self) -> dict[str, float]:
        clean, spliced, zero = (
            x / self.n_ce for x in (self.ce_clean, self.ce_spliced, self.ce_zero)
        )
        return {"ce_clean": clean, "ce_spliced": spliced, "ce_zero": zero,
                "ce_increase": spliced - clean, "kl": self.kl / self.n_kl,
                "loss_recovered": loss_recovered(clean, spliced, zero)}  # fmt: skip


@torch.no_grad()
def real_scores(
    site: RealSite, method: Decomposition, shards: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, float]:
    """Reconstruction, sparsity and spliced-loss scores of ``method`` on held-out shards.

    Each shard is (activations [S*T, d], tokens [S, T]); its activations are the clean
    hook values, so the model runs three times per shard: clean, spliced, zero-ablated.
    """
    X, Z, Xhat = [], [], []
    sums = _Sums()
    for acts_ND, tokens_ST in shards:
        z = method.encode(acts_ND)
        xhat_STD = unflatten_rows(method.decode(z), tokens_ST.shape[1])
        X.append(acts_ND)
        Z.append(z)
        Xhat.append(flatten_rows(xhat_STD))
        clean = site.logits(tokens_ST)
        spliced = site.logits(tokens_ST, constant(xhat_STD))
        zero = site.logits(tokens_ST, torch.zeros_like)
        sums.add(tokens_ST, clean, spliced, zero)
    out = reconstruction_scores(torch.cat(X), torch.cat(Z), torch.cat(Xhat))
    out.update(sums.scores())
    return out
