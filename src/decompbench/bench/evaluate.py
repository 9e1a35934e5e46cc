"""Score one fitted decomposition against a site's ground truth, beside chance levels."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from decompbench import metrics as M
from decompbench.methods.base import Decomposition
from decompbench.metrics import causal, relatedness
from decompbench.metrics.recovery import abs_cos, hungarian
from decompbench.seeding import generator
from decompbench.toys.base import GroundTruth

N_CHANCE_DRAWS = 8

DirScore = Callable[[Tensor, Tensor], float]


def direction_scores(gt: GroundTruth, G_KD: Tensor, D_MD: Tensor) -> dict[str, float | None]:
    """Every direction-based recovery score of ``D_MD`` against the model features."""
    groups = None
    if gt.groups is not None:
        groups = [g for g, used in zip(gt.groups, gt.is_model, strict=True) if used]
    rel_med, rel_share = relatedness.summarise(relatedness.direction_relatedness(G_KD, D_MD))
    rev_med, rev_share = relatedness.summarise(relatedness.direction_relatedness(D_MD, G_KD))
    return {
        "rel_dir_median": rel_med,
        "rel_dir_share3": rel_share,
        "rel_rev_median": rev_med,
        "rel_rev_share3": rev_share,
        "mmcs": M.mmcs(G_KD, D_MD),
        "mcc": M.mcc(G_KD, D_MD),
        "mcc_strict": M.mcc_strict(G_KD, D_MD),
        "recall": M.recall(G_KD, D_MD),
        "precision": M.precision(G_KD, D_MD),
        "composition": None if groups is None else M.composition(G_KD, groups, D_MD),
    }


def chance_scores(
    gt: GroundTruth, G_KD: Tensor, A_NK: Tensor, X_ND: Tensor, m: int, seed: int
) -> dict[str, float | None]:
    """Mean scores of random dictionaries of ``m`` directions in the data's span.

    They depend on the method only through ``m``, so every run on the same site, seed
    and ``m`` gets the same numbers: they are computed once per process and kept, keyed
    by the contents (not the identity) of every input.
    """
    key = (digest(G_KD, A_NK, X_ND), repr(gt.groups), repr(gt.is_model), m, seed)
    if key not in CHANCE_KEPT:
        CHANCE_KEPT[key] = chance_scores_afresh(gt, G_KD, A_NK, X_ND, m, seed)
        while len(CHANCE_KEPT) > 64:
            CHANCE_KEPT.pop(next(iter(CHANCE_KEPT)))
    return dict(CHANCE_KEPT[key])


CHANCE_KEPT: dict[tuple[object, ...], dict[str, float | None]] = {}


def digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def chance_scores_afresh(
    gt: GroundTruth, G_KD: Tensor, A_NK: Tensor, X_ND: Tensor, m: int, seed: int
) -> dict[str, float | None]:
    basis_RD = M.span_basis(X_ND)
    g = generator(seed, "chance")
    draws: list[dict[str, float | None]] = []
    for _ in range(N_CHANCE_DRAWS):
        D_MD = M.random_dictionary(m, basis_RD, g)
        scores = direction_scores(gt, G_KD, D_MD)
        scores["mcc_act"] = M.mcc_act(A_NK, X_ND.double() @ D_MD.T)
        draws.append(scores)
    out: dict[str, float | None] = {}
    for key in draws[0]:
        vals = [v for d in draws if (v := d[key]) is not None]
        out[f"{key}_chance"] = sum(vals) / len(vals) if vals else None
    return out


def downstream_scores(
    f: nn.Module,
    method: Decomposition,
    X_ND: Tensor,
    G_KD: Tensor,
    A_NK: Tensor,
    alive_M: Tensor,
    Z_NM: Tensor,
    Xhat_ND: Tensor,
) -> dict[str, float | int | None]:
    """Faithfulness of the spliced reconstruction and causal agreement of matched latents.

    True features are matched one-to-one (Hungarian on |cos|) to alive latents only.
    ``Z_NM`` and ``Xhat_ND`` are ``method.encode(X_ND)`` and its decoding.
    """
    ids = torch.arange(alive_M.shape[0])[alive_M].tolist()
    D_alive = method.directions()[alive_M]
    match = [(k, ids[m]) for k, m in hungarian(abs_cos(G_KD, D_alive))]
    enc, dec, f_ = reusing(method, f, X_ND, Z_NM, Xhat_ND)
    agree, rel_err = causal.causal_agreement(f_, X_ND, G_KD, A_NK, match, enc, dec)
    return {
        "out_fvu": causal.output_fvu(f_, X_ND, Xhat_ND),
        "causal_agreement": agree,
        "causal_rel_err": rel_err,
    }


Fn = Callable[[Tensor], Tensor]


def reusing(
    method: Decomposition, f: nn.Module, X_ND: Tensor, Z_NM: Tensor, Xhat_ND: Tensor
) -> tuple[Fn, Fn, Fn]:
    """encode, decode and f that return the stored result when called on the very tensor
    it was computed from (identity, not equality): the causal metric asks for f(X),
    encode(X) and f(decode(encode(X))) once per matched feature, always the same tensors.
    Same numbers as calling afresh (all three are deterministic), computed once."""
    fX_NO, fXhat_NO = f(X_ND), f(Xhat_ND)

    def enc(x: Tensor) -> Tensor:
        return Z_NM if x is X_ND else method.encode(x)

    def dec(z: Tensor) -> Tensor:
        return Xhat_ND if z is Z_NM else method.decode(z)

    def f_(x: Tensor) -> Tensor:
        return fX_NO if x is X_ND else fXhat_NO if x is Xhat_ND else f(x)

    return enc, dec, f_


@torch.no_grad()
def score(
    method: Decomposition,
    gt: GroundTruth,
    feats_NK: Tensor,
    X_ND: Tensor,
    seed: int,
    downstream: nn.Module | None = None,
) -> dict[str, float | int | None]:
    """The flat metric dict of one run (recovery on alive latents, reconstruction, chance).

    With the site's ``downstream`` network (the scorer's, never the method's), also the
    spliced-output faithfulness and the causal agreement of matched latents.
    """
    Z_NM = method.encode(X_ND)
    Xhat_ND = method.decode(Z_NM)
    D_MD = method.directions()
    assert D_MD.shape == (Z_NM.shape[1], X_ND.shape[1]), f"directions {tuple(D_MD.shape)}"
    alive = M.alive_mask(Z_NM)
    model = gt.model_mask
    G_KD, A_NK = gt.directions_KD[model], feats_NK[:, model]
    D_alive = D_MD[alive]
    out: dict[str, float | int | None] = {}
    out.update(direction_scores(gt, G_KD, D_alive))
    out["mcc_act"] = M.mcc_act(A_NK, Z_NM[:, alive])
    rel_act = relatedness.activation_relatedness(A_NK, Z_NM[:, alive])
    out["rel_act_median"], out["rel_act_share3"] = relatedness.summarise(rel_act)
    extra = getattr(method, "extra_metrics", None)  # e.g. direct-sum's detected split
    if callable(extra):
        out.update({f"method_{k}": v for k, v in extra().items()})
    if downstream is not None:
        out.update(downstream_scores(downstream, method, X_ND, G_KD, A_NK, alive, Z_NM, Xhat_ND))
    out.update(
        fvu=M.fvu(X_ND, Xhat_ND),
        l0=M.l0(Z_NM),
        dead_frac=M.dead_frac(Z_NM),
        n_alive=int(alive.sum()),
        width=int(Z_NM.shape[1]),
        n_true=int(G_KD.shape[0]),
    )
    out.update(chance_scores(gt, G_KD, A_NK, X_ND, max(int(alive.sum()), 1), seed))
    out.update(method.convergence())
    return out
