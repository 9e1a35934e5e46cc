"""Batched training of many same-shape sparse autoencoders as one computation.

Toy-model research is sweeps: dozens of tiny dictionaries (d 16, width 32) over seeds and
sparsity coefficients. Trained one after another, every step of every model is a few
microsecond-sized matmuls drowned in Python and autograd overhead. Here G models are
stacked along a leading axis (``W_enc_GDM``, ``W_dec_GMD``, ...) and trained with batched
matmuls, one autograd graph and one Adam for all of them (``fit_many``).

Why each model ends where it would have ended trained alone by ``SAEMethod.fit``:

* every model is built by its own method object (``make_module`` from
  ``generator(seed, "method/<name>/init")``, ``configure``, ``prepare`` on its own data),
  so the initialisation, input scale and decoder-bias init are the sequential ones;
* the loss of the stack is the sum of the per-model losses (``SparseAutoencoder.loss``
  written over a leading model axis), so each model's gradient is its own; Adam and the
  unit-norm decoder rows are elementwise / per row;
* each model's minibatch rows come from its own ``generator(seed, "train/batches")``
  stream, drawn as ``methods/train.py`` draws them;
* the learning-rate schedule, sparsity warm-up and the dead-latent tracker (which feeds
  the TopK auxiliary-k loss) are those of ``methods/train.py``, kept per model.

In practice the final parameters and the logged losses match to the last bit: the stacked
weights keep the sequential memory layout and ``BatchedMM``'s backward makes the BLAS calls
``torch.mm``'s backward makes, so each slice rounds as the sequential matmul does; TopK's
selection is exact, ties included (``top_mask``). Tiny matrices (B·d·m below a few
hundred) take another ``bmm`` kernel and may differ in the last bits; the tests allow
float tolerance.

Speed (``benchmarks/batched_tiny.py``, 64 models, d 16, width 32, batch 256, one thread):
a sequential model-step is ~0.7 ms of Python and autograd overhead; a batched step is a
few dozen memory-bound passes over [G, B, m] tensors, ~85 us per model for ReLU (8-10x
faster) and ~140 us for TopK (5.5x), which pays for its selection (``top_mask``) and,
once latents die, for the auxiliary loss.

What may differ between the models of one batch: the seed, the training data (same
``d``), ``l1`` (``sae-relu``) and ``k`` (``sae-topk``). Everything else must be equal.
Other methods, and parameters this file does not mirror set away from their defaults,
are refused with a ``UserError``: train those alone.

Suite hook: ``group_key`` / ``plan_groups`` / ``fit_group`` let a runner train the planned
runs that differ only in seed, data or sparsity coefficient as one batched job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from decompbench.errors import TrainingFailed, UserError
from decompbench.methods import sae as sae_module
from decompbench.methods.base import Decomposition, build_method
from decompbench.methods.sae import SAEMethod, SparseAutoencoder
from decompbench.methods.sae_relu import ReLUSAE, SAERelu
from decompbench.methods.sae_topk import SAETopK, TopKSAE
from decompbench.methods.train import (
    FIRE_RATE_DECAY,
    TrainLog,
    TrainParams,
    lr_factor,
    sparsity_factor,
)
from decompbench.progress import reporter
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

CHUNK_STEPS = 64  # minibatch rows are drawn this many steps ahead (same random stream)


@dataclass(frozen=True)
class Kind:
    """A batchable SAE variant: its method class, module class and per-model parameter."""

    method: type[SAEMethod]
    module: type[SparseAutoencoder]
    per_model: str


KINDS: dict[str, Kind] = {
    "sae-relu": Kind(SAERelu, ReLUSAE, "l1"),
    "sae-topk": Kind(SAETopK, TopKSAE, "k"),
}

# Parameters whose effect this file reproduces. Any other field (e.g. one added to the
# sequential path later) must stay at its default, else the batch is refused.
MIRRORED = frozenset(
    {"steps", "lr", "batch_size", "warmup_frac", "decay_frac", "sparsity_warmup_frac",
     "dead_after_steps", "dense_rate", "width", "normalize", "init_b_dec", "l1", "k",
     "aux_k", "aux_coef"}
)  # fmt: skip


# --- validation -------------------------------------------------------------------------


def check_mirrored(method: Decomposition) -> Kind:
    """The method's ``Kind``; ``UserError`` when the batched path cannot mirror it exactly."""
    kind = KINDS.get(method.name)
    if kind is None or type(method) is not kind.method:
        raise UserError(f"batched training supports {', '.join(KINDS)} only, not '{method.name}'")
    fields = type(method.params).model_fields
    for name, info in fields.items():
        if name not in MIRRORED and getattr(method.params, name) != info.default:
            raise UserError(
                f"batched training does not mirror '{method.name}' parameter '{name}' "
                "away from its default; train this run alone"
            )
    fast_from = getattr(sae_module, "FAST_MIN_ELEMENTS", None)  # sae.py's fused step
    entries = method.params.batch_size * method.params.width
    if fast_from is not None and entries >= fast_from:
        raise UserError(
            f"batched training mirrors the generic SAE step; '{method.name}' with batch_size "
            f"x width = {entries} >= {fast_from} takes the fused step alone: train it alone"
        )
    return kind


def shared_settings(method: Decomposition, kind: Kind) -> dict[str, Any]:
    """The parameters every model of one batch must share (all but the per-model one)."""
    params: dict[str, Any] = method.params.model_dump(mode="json")
    params.pop(kind.per_model, None)
    return {"method": method.name, **params}


def check_batch(
    methods: Sequence[Decomposition], sites: Sequence[ActivationSite], seeds: Sequence[int]
) -> Kind:
    """One kind, shared settings, equal ``d``; one-line ``UserError`` otherwise."""
    if not methods:
        raise UserError("batched training needs at least one model")
    if not len(methods) == len(sites) == len(seeds):
        raise UserError(
            f"batched training got {len(methods)} methods, {len(sites)} sites and "
            f"{len(seeds)} seeds; give one of each per model"
        )
    kind = check_mirrored(methods[0])
    first = shared_settings(methods[0], kind)
    for i, m in enumerate(methods[1:], start=1):
        if check_mirrored(m) is not kind:
            raise UserError(f"batched models differ in method: '{methods[0].name}' and '{m.name}'")
        other = shared_settings(m, kind)
        for key in first:
            if other[key] != first[key]:
                raise UserError(
                    f"batched models differ in '{key}' ({first[key]} vs {other[key]} at "
                    f"model {i}); only seed, data and '{kind.per_model}' may differ"
                )
    for i, s in enumerate(sites):
        if s.acts_ND.ndim != 2 or s.d != sites[0].d:
            raise UserError(
                f"batched models need [n, d] data of one d: model 0 has d = {sites[0].d}, "
                f"model {i} has shape {tuple(s.acts_ND.shape)}"
            )
        if s.acts_ND.shape[0] == 0:
            raise UserError(f"batched model {i}: site '{s.name}' has no training rows")
    return kind


# --- the stacked model ------------------------------------------------------------------


def stack_like(mats: Sequence[Tensor]) -> Tensor:
    """Stack 2-D tensors keeping their memory layout: a column-major matrix (the
    sequential ``W_enc_DM`` is ``W_dec_MD.T.clone()``) stays column-major, so each batched
    matmul and its backward take the same BLAS path, and round the same, as the
    sequential ones."""
    if mats[0].is_contiguous() or not mats[0].T.is_contiguous():
        return torch.stack([m.contiguous() for m in mats])
    return torch.stack([m.T for m in mats]).transpose(1, 2)


def mm_col_major(t: Tensor) -> bool:
    """``torch.mm``'s backward test for a column-major 2-D operand (FunctionsManual.cpp)."""
    return t.stride(0) == 1 and t.stride(1) == t.shape[0]


class BatchedMM(torch.autograd.Function):
    """``bmm(a_GBK, w_GKN)`` whose backward makes, slice by slice, the BLAS calls that
    ``torch.mm``'s backward makes for the sequential operands.

    ``mm`` computes the gradient of a column-major operand transposed (e.g. (grad^T a)^T
    for the sequential ``W_enc_DM = W_dec_MD.T.clone()``), ``bmm`` never does: the same
    sums in another BLAS call, hence other rounding. ``a_col``/``w_col`` say whether the
    sequential operands are column-major, so the batched models stay bit-identical.
    """

    @staticmethod
    def forward(ctx: Any, a_GBK: Tensor, w_GKN: Tensor, a_col: bool, w_col: bool) -> Tensor:
        ctx.save_for_backward(a_GBK, w_GKN)
        ctx.cols = (a_col, w_col)
        return torch.bmm(a_GBK, w_GKN)

    @staticmethod
    def backward(ctx: Any, grad_GBN: Tensor) -> tuple[Tensor | None, ...]:
        a_GBK, w_GKN = ctx.saved_tensors
        a_col, w_col = ctx.cols
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_a = (torch.bmm(w_GKN, grad_GBN.transpose(1, 2)).transpose(1, 2) if a_col
                      else torch.bmm(grad_GBN, w_GKN.transpose(1, 2)))  # fmt: skip
        if ctx.needs_input_grad[1]:
            grad_w = (torch.bmm(grad_GBN.transpose(1, 2), a_GBK).transpose(1, 2) if w_col
                      else torch.bmm(a_GBK.transpose(1, 2), grad_GBN))  # fmt: skip
        return grad_a, grad_w, None, None


class SAEStack(nn.Module):
    """G sparse autoencoders of one shape, each tensor stacked along a leading model axis."""

    in_scale_G11: Tensor

    def __init__(self, saes: Sequence[SparseAutoencoder]) -> None:
        super().__init__()
        self.W_enc_GDM = nn.Parameter(stack_like([s.W_enc_DM.detach() for s in saes]))
        self.W_dec_GMD = nn.Parameter(stack_like([s.W_dec_MD.detach() for s in saes]))
        self.b_enc_GM = nn.Parameter(torch.stack([s.b_enc_M.detach() for s in saes]))
        self.b_dec_GD = nn.Parameter(torch.stack([s.b_dec_D.detach() for s in saes]))
        self.enc_col = mm_col_major(saes[0].W_enc_DM)
        self.dec_col = mm_col_major(saes[0].W_dec_MD)
        self.register_buffer("in_scale_G11", torch.stack([s.in_scale for s in saes])[:, None, None])
        self.unit_scale = bool((self.in_scale_G11 == 1).all())

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm decoder rows, as ``SparseAutoencoder.after_step``."""
        self.W_dec_GMD.div_(self.W_dec_GMD.norm(dim=2, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def copy_into(self, g: int, sae: SparseAutoencoder) -> None:
        sae.W_enc_DM.copy_(self.W_enc_GDM[g])
        sae.W_dec_MD.copy_(self.W_dec_GMD[g])
        sae.b_enc_M.copy_(self.b_enc_GM[g])
        sae.b_dec_D.copy_(self.b_dec_GD[g])


@dataclass(frozen=True)
class LossSpec:
    """What the per-model loss needs besides the parameters (fixed for one batch)."""

    l1_G: Tensor | None  # float32 [G] (sae-relu) or None
    k_G: Tensor | None  # long [G] (sae-topk) or None
    aux_k: int
    aux_coef: float


@torch.no_grad()
def kth_largest(r_GBM: Tensor, k: int) -> list[Tensor]:
    """The 1st..k-th largest distinct values of each row of ``r_GBM`` >= 0, [G, B, 1] each.

    CPU ``topk`` on rows of a few dozen entries costs ~0.35 us a row, more than the rest
    of a tiny model's step. A row max, then dropping it by ``sign`` arithmetic in two
    reused buffers (bool comparisons do not vectorise here), is several times cheaper.
    Once a row runs out of positive values the thresholds stay 0.
    """
    w_GBM, d_GBM = r_GBM.clone(), torch.empty_like(r_GBM)
    ts = []
    for i in range(k):
        t_GB1 = w_GBM.amax(dim=2, keepdim=True)
        ts.append(t_GB1)
        if i + 1 < k:  # drop each row's max: w *= sign(t - w), where t - w >= 0
            w_GBM.mul_(torch.sub(t_GB1, w_GBM, out=d_GBM).sign_())
    return ts


@torch.no_grad()
def top_mask(r_GBM: Tensor, k_G: Tensor, src_GBM: Tensor, live_GM: Tensor | None = None) -> Tensor:
    """1.0 on the latents that the sequential ``topk(k_g)`` selects and that matter, else 0.

    The sequential ``topk`` runs on ``src_GBM`` (with the latents outside ``live_GM`` set
    to -inf); ``r_GBM`` = relu of that (0 outside ``live_GM``) holds the values kept.
    Rows with fewer than k positive values keep all of them (the extra picks of ``topk``
    are zeros). Rows where positive values tie (float ties do occur in training) may keep
    more than k; only those rows are redone with ``torch.topk``, so the choice among tied
    latents is exactly the sequential one.
    """
    k_max = int(k_G.max())
    ts = kth_largest(r_GBM, k_max)
    thr_GB1 = ts[-1]  # the k-th largest value; per model when k differs
    if int(k_G.min()) < k_max:
        thr_GB1 = torch.stack(ts)[k_G - 1, torch.arange(len(k_G))]
    mask_GBM = (thr_GB1 - r_GBM).relu_().sign_().neg_().add_(1)  # 1 where r >= thr
    g_idx, b_idx = tied_rows(r_GBM, mask_GBM, k_G)
    for k in k_G[g_idx].unique().tolist():
        gi, bi = g_idx[k_G[g_idx] == k], b_idx[k_G[g_idx] == k]
        src_RM = src_GBM[gi, bi]
        if live_GM is not None:
            src_RM = torch.where(live_GM[gi], src_RM, float("-inf"))
        idx_RK = src_RM.topk(k, dim=1).indices
        mask_GBM[gi, bi] = torch.zeros(len(gi), r_GBM.shape[2]).scatter_(1, idx_RK, 1.0)
    return mask_GBM


def tied_rows(r_GBM: Tensor, mask_GBM: Tensor, k_G: Tensor) -> tuple[Tensor, Tensor]:
    """(model, sample) indices of the rows that keep more than k positive values (ties).

    Rows keeping more than k entries are candidates (ties, or zeros kept when a row has
    fewer than k positive values); their positives are counted on the few candidate rows,
    or on the whole tensor when most rows are candidates.
    """
    cand_GB = mask_GBM.sum(dim=2) > k_G[:, None]
    n_cand = int(cand_GB.sum())
    if n_cand == 0:
        return cand_GB.nonzero(as_tuple=True)  # type: ignore[return-value]
    if n_cand * 8 > cand_GB.numel():
        pos_GB = r_GBM.sign().mul_(mask_GBM).sum(dim=2)
        return (pos_GB > k_G[:, None]).nonzero(as_tuple=True)  # type: ignore[return-value]
    g_idx, b_idx = cand_GB.nonzero(as_tuple=True)
    pos_R = (r_GBM[g_idx, b_idx].sign() * mask_GBM[g_idx, b_idx]).sum(dim=1)
    tied_R = pos_R > k_G[g_idx]
    return g_idx[tied_R], b_idx[tied_R]


def topk_latents(pre_GBM: Tensor, k_G: Tensor) -> Tensor:
    """``TopKSAE.activation`` per model: the k_g largest ReLU pre-activations of each
    sample, the rest 0 (k may differ per model)."""
    r_GBM = torch.relu(pre_GBM)
    return r_GBM * top_mask(r_GBM.detach(), k_G, r_GBM.detach())


def auxk_loss_G(err_GBD: Tensor, pre_GBM: Tensor, dead_GM: Tensor, st: SAEStack, k: int) -> Tensor:
    """``sae.auxk_loss`` per model; models without dead latents get 0.

    The sequential loss keeps the top min(k, n_dead) dead pre-activations and applies a
    ReLU; keeping the top k ReLU'd dead pre-activations (live latents set to 0) gives the
    same latents, since the extra picks are 0 either way; with at most k dead latents in
    every model that is all of them, and no selection is needed.
    """
    z_GBM = torch.relu(pre_GBM) * dead_GM[:, None, :].to(pre_GBM.dtype)
    if int(dead_GM.sum(dim=1).max()) > k:  # else every model keeps all its dead latents
        k_G = torch.full((len(dead_GM),), min(k, pre_GBM.shape[2]))
        z_GBM = z_GBM * top_mask(z_GBM.detach(), k_G, pre_GBM.detach(), dead_GM)
    z_col = pre_GBM.shape[1] == pre_GBM.shape[2] == 1
    dec_GBD = BatchedMM.apply(z_GBM, st.W_dec_GMD, z_col, st.dec_col)
    aux_G = (dec_GBD - err_GBD.detach()).pow(2).sum(dim=2).mean(dim=1)
    return torch.where(dead_GM.any(dim=1), aux_G, torch.zeros_like(aux_G))


def stack_loss(
    st: SAEStack, x_GBD: Tensor, spec: LossSpec, scale: float, dead_GM: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-model losses [G] (``SparseAutoencoder.loss`` of each model) and latents [G,B,M]."""
    xs_GBD = x_GBD if st.unit_scale else x_GBD * st.in_scale_G11  # x * 1 is x
    B, D, M = x_GBD.shape[1], x_GBD.shape[2], st.W_enc_GDM.shape[2]
    x_col, z_col = B == D == 1, B == M == 1  # contiguous [B, D] / [B, M]: column-major?
    pre_GBM = BatchedMM.apply(xs_GBD - st.b_dec_GD[:, None, :], st.W_enc_GDM, x_col, st.enc_col)
    pre_GBM = pre_GBM + st.b_enc_GM[:, None, :]
    z_GBM = torch.relu(pre_GBM) if spec.k_G is None else topk_latents(pre_GBM, spec.k_G)
    dec_GBD = BatchedMM.apply(z_GBM, st.W_dec_GMD, z_col, st.dec_col)
    err_GBD = xs_GBD - (dec_GBD + st.b_dec_GD[:, None, :])
    loss_G = err_GBD.pow(2).sum(dim=2).mean(dim=1)
    if spec.l1_G is not None:  # |z| = z for ReLU latents; where z = 0 the ReLU's backward
        # zeroes the gradient that |z| would have zeroed, so the result is the same
        loss_G = loss_G + scale * (spec.l1_G * z_GBM.sum(dim=2).mean(dim=1))
    use_aux = spec.aux_coef != 0 and spec.aux_k != 0 and dead_GM is not None
    if use_aux and dead_GM is not None and bool(dead_GM.any()):
        aux_G = auxk_loss_G(err_GBD, pre_GBM, dead_GM, st, spec.aux_k)
        loss_G = loss_G + spec.aux_coef * aux_G
    return loss_G, z_GBM


# --- per-model bookkeeping --------------------------------------------------------------


def fire_rate(z_GBM: Tensor) -> Tensor:
    """Share of each model's minibatch on which each latent fired, double [G, M]; equal to
    ``(z != 0).double().mean(dim=0)`` per model for latents z >= 0 (exact counts / B)."""
    return torch.sign(z_GBM).sum(dim=1).double() / z_GBM.shape[1]


class StackTracker:
    """``train.LatentTracker`` for G models at once: [G, M] tensors."""

    def __init__(self, dead_after: int, dense_rate: float) -> None:
        self.dead_after, self.dense_rate = dead_after, dense_rate
        self.since_fired_GM: Tensor | None = None
        self.rate_GM: Tensor | None = None

    def update(self, rate_GM: Tensor) -> None:
        if self.since_fired_GM is None or self.rate_GM is None:
            self.since_fired_GM = torch.zeros(rate_GM.shape, dtype=torch.long)
            self.rate_GM = rate_GM.clone()
        self.since_fired_GM = torch.where(rate_GM > 0, 0, self.since_fired_GM + 1)
        self.rate_GM = FIRE_RATE_DECAY * self.rate_GM + (1 - FIRE_RATE_DECAY) * rate_GM

    def dead_GM(self) -> Tensor | None:
        return None if self.since_fired_GM is None else self.since_fired_GM > self.dead_after

    def counts(self) -> tuple[Tensor, Tensor]:
        """Dead and dense latents per model, [G] each (after the first update)."""
        assert self.since_fired_GM is not None and self.rate_GM is not None
        dead = (self.since_fired_GM > self.dead_after).sum(dim=1)
        return dead, (self.rate_GM > self.dense_rate).sum(dim=1)


class Batches:
    """Each model's minibatch rows as ``train()`` draws them: ``randint(n, (B,))`` per step
    from ``generator(seed, "train/batches")``, here drawn ``CHUNK_STEPS`` steps at a time
    (the same stream), once per distinct (seed, n), offset into the concatenated data."""

    def __init__(self, seeds: Sequence[int], ns: Sequence[int], offsets: Tensor, batch: int):
        keys = list(dict.fromkeys(zip(seeds, ns, strict=True)))
        self.streams = [(generator(s, "train/batches"), n) for s, n in keys]
        self.which_G = torch.tensor([keys.index(k) for k in zip(seeds, ns, strict=True)])
        self.offsets_G1 = offsets[:, None]
        self.batch = batch
        self.rows_CGB = torch.empty(0, len(seeds), batch, dtype=torch.long)
        self.pos = 0

    def next_rows(self, steps_left: int) -> Tensor:
        """Rows [G, B] into the concatenated data for the next step."""
        if self.pos == self.rows_CGB.shape[0]:
            c = min(CHUNK_STEPS, steps_left)
            drawn_SCB = torch.stack(
                [torch.randint(n, (c * self.batch,), generator=g).view(c, self.batch)
                 for g, n in self.streams]
            )  # fmt: skip
            self.rows_CGB = (drawn_SCB[self.which_G] + self.offsets_G1[:, :, None]).transpose(0, 1)
            self.pos = 0
        self.pos += 1
        return self.rows_CGB[self.pos - 1]


def stacked_data(sites: Sequence[ActivationSite]) -> tuple[Tensor, Tensor, list[int]]:
    """The distinct training tensors concatenated, each model's row offset and row count."""
    distinct: dict[int, tuple[int, Tensor]] = {}
    start = 0
    for s in sites:
        if id(s.acts_ND) not in distinct:
            distinct[id(s.acts_ND)] = (start, s.acts_ND)
            start += s.acts_ND.shape[0]
    tensors = [t for _, t in distinct.values()]
    data_ND = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    offsets = torch.tensor([distinct[id(s.acts_ND)][0] for s in sites])
    return data_ND, offsets, [s.acts_ND.shape[0] for s in sites]


# --- training ---------------------------------------------------------------------------


def build_members(
    methods: Sequence[Decomposition], sites: Sequence[ActivationSite], seeds: Sequence[int]
) -> list[SparseAutoencoder]:
    """Each model exactly as ``SAEMethod.fit`` builds and ``train`` prepares it."""
    saes = []
    for m, site, seed in zip(methods, sites, seeds, strict=True):
        assert isinstance(m, SAEMethod)
        sae = m.configure(m.make_module(site.d, generator(seed, f"method/{m.name}/init")))
        sae.train()
        sae.prepare(site.acts_ND)
        saes.append(sae)
    return saes


def loss_spec(methods: Sequence[Decomposition], kind: Kind, d: int) -> LossSpec:
    p = methods[0].params
    if kind.module is TopKSAE:
        k_G = torch.tensor([int(m.params.k) for m in methods])  # type: ignore[attr-defined]
        aux_k = p.aux_k if p.aux_k is not None else max(1, d // 2)  # type: ignore[attr-defined]
        return LossSpec(None, k_G, aux_k, float(p.aux_coef))  # type: ignore[attr-defined]
    l1 = torch.tensor([float(m.params.l1) for m in methods], dtype=torch.float32)  # type: ignore[attr-defined]
    return LossSpec(l1, None, 0, 0.0)


@dataclass
class StackLog:
    """Per-step losses [steps, G] and dead/dense counts every 1 % of training."""

    losses_SG: Tensor
    n_dead: list[Tensor]
    n_dense: list[Tensor]

    def member(self, g: int, tracker: StackTracker) -> TrainLog:
        assert tracker.since_fired_GM is not None and tracker.rate_GM is not None
        return TrainLog(
            losses=self.losses_SG[:, g].tolist(),
            n_dead=[int(c[g]) for c in self.n_dead],
            n_dense=[int(c[g]) for c in self.n_dense],
            steps_since_fired_M=tracker.since_fired_GM[g].clone(),
            fire_rate_M=tracker.rate_GM[g].clone(),
        )


def failures(loss_G: Tensor, alive_G: Tensor, labels: Sequence[str], step: int) -> dict[int, str]:
    """Models whose loss just became non-finite, with ``train``'s error message."""
    bad = (~torch.isfinite(loss_G) & alive_G).nonzero().flatten().tolist()
    return {g: f"{labels[g]}: loss became {float(loss_G[g])} at step {step}" for g in bad}


def train_stack(
    st: SAEStack, data: tuple[Tensor, Tensor, list[int]], seeds: Sequence[int],
    cfg: TrainParams, spec: LossSpec, labels: Sequence[str],
) -> tuple[StackLog, StackTracker, dict[int, str]]:  # fmt: skip
    """``methods/train.py``'s loop over the stack; returns logs, tracker and failures."""
    data_ND, offsets, ns = data
    opt = torch.optim.Adam(st.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
    )
    batches = Batches(seeds, ns, offsets, cfg.batch_size)
    tracker = StackTracker(cfg.dead_after_steps, cfg.dense_rate)
    log = StackLog(torch.empty(cfg.steps, len(seeds)), [], [])
    alive_G, failed = torch.ones(len(seeds), dtype=torch.bool), {}
    rep, every = reporter(), max(1, cfg.steps // 100)
    if rep is not None:
        rep.start(f"{len(seeds)} x {labels[0]} (batched)", cfg.steps)
    for step in range(cfg.steps):
        scale = sparsity_factor(step, cfg.steps, cfg.sparsity_warmup_frac)
        rows_GB = batches.next_rows(cfg.steps - step)
        x_GBD = data_ND.index_select(0, rows_GB.flatten()).view(*rows_GB.shape, -1)
        loss_G, z_GBM = stack_loss(st, x_GBD, spec, scale, tracker.dead_GM())
        log.losses_SG[step] = loss_G.detach()
        if not bool(torch.isfinite(log.losses_SG[step]).all()):
            failed.update(failures(log.losses_SG[step], alive_G, labels, step))
            alive_G[list(failed)] = False
            loss_G = torch.where(alive_G, loss_G, torch.zeros_like(loss_G))
        opt.zero_grad(set_to_none=True)
        loss_G.sum().backward()
        opt.step()
        sched.step()
        st.after_step()
        tracker.update(fire_rate(z_GBM.detach()))
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            dead, dense = tracker.counts()
            log.n_dead.append(dead)
            log.n_dense.append(dense)
            if rep is not None and (step + 1) % every == 0:
                rep.advance(every, f"mean loss {float(log.losses_SG[step].mean()):.4g}")
    if rep is not None:
        rep.finish()
    return log, tracker, failed


def fit_many(
    methods: Sequence[Decomposition],
    sites: ActivationSite | Sequence[ActivationSite],
    seeds: Sequence[int],
) -> list[Decomposition | TrainingFailed]:
    """Fit every ``methods[i]`` on ``sites[i]`` with ``seeds[i]`` as one batched job.

    Each fitted method is an ordinary ``SAEMethod`` (``.sae``, ``.log``) equal to what
    ``methods[i].fit(sites[i], seeds[i])`` gives; a model whose loss became non-finite
    comes back as the ``TrainingFailed`` its sequential ``fit`` would have raised (the
    other models are unaffected). ``sites`` may be one site shared by every model.
    """
    site_list = [sites] * len(methods) if isinstance(sites, ActivationSite) else list(sites)
    kind = check_batch(methods, site_list, seeds)
    saes = build_members(methods, site_list, seeds)
    st = SAEStack(saes)
    cfg = methods[0].params
    assert isinstance(cfg, TrainParams)
    labels = [f"{m.name} @ {s.name}" for m, s in zip(methods, site_list, strict=True)]
    spec = loss_spec(methods, kind, site_list[0].d)
    log, tracker, failed = train_stack(st, stacked_data(site_list), seeds, cfg, spec, labels)
    out: list[Decomposition | TrainingFailed] = []
    for g, (m, sae) in enumerate(zip(methods, saes, strict=True)):
        if g in failed:
            out.append(TrainingFailed(failed[g]))
            continue
        st.copy_into(g, sae)
        sae.eval()
        assert isinstance(m, SAEMethod)
        m.sae, m.log = sae, log.member(g, tracker)
        out.append(m)
    return out


# --- suite hook -------------------------------------------------------------------------


class MethodSpecLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...


class RunLike(Protocol):
    """What the hook reads of a ``bench.suite.PlannedRun``."""

    @property
    def seed(self) -> int: ...
    @property
    def method(self) -> MethodSpecLike: ...


def group_key(run: RunLike) -> str | None:
    """Runs with equal keys (and equal site ``d``) can be fitted as one batch; None: alone."""
    if run.method.name not in KINDS:
        return None
    try:
        method = build_method(run.method.name, run.method.params)
        kind = check_mirrored(method)
    except UserError:
        return None
    return json.dumps(shared_settings(method, kind), sort_keys=True)


def plan_groups(
    runs: Sequence[RunLike],
    data_key: Callable[[Any], Hashable] | None = None,
    max_size: int = 256,
) -> list[list[int]]:
    """Indices of ``runs`` in batches, in first-appearance order; unbatchable runs alone.

    Runs share a batch when their ``group_key`` and their ``data_key`` are equal: e.g.
    ``lambda r: (toy_key(r), r.site)`` batches runs on one site sample only, a key giving
    the site's ``d`` batches across toys (``fit_group`` then gets one site per run).
    """
    groups: dict[tuple[str, Hashable], list[int]] = {}
    out: list[list[int]] = []
    for i, run in enumerate(runs):
        method_key = group_key(run)
        if method_key is None:
            out.append([i])
            continue
        key = (method_key, None if data_key is None else data_key(run))
        if key not in groups or len(groups[key]) >= max_size:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(i)
    return out


def fit_group(
    runs: Sequence[RunLike], sites: Sequence[ActivationSite]
) -> list[Decomposition | TrainingFailed]:
    """Build each run's method and fit them all as one batch (runs from one ``plan_groups``
    group; ``sites[i]`` is what run i's method may see, all of one ``d``)."""
    methods = [build_method(r.method.name, r.method.params) for r in runs]
    return fit_many(methods, sites, [r.seed for r in runs])
