"""Shared sparse-autoencoder body: parameters, decoding, unit-norm decoder rows.

Variants (one file each) subclass ``SparseAutoencoder`` and define ``activation`` (how
pre-activations become latents) and ``sparsity_loss``. The fit/encode/decode plumbing of
every SAE variant is ``SAEMethod``.

Training features every variant gets, each a validated parameter in ``SAEParams``:

* ``normalize`` — scale inputs by one scalar so that E||x||^2 = d on the training data
  (so hyper-parameters such as an L1 or L0 coefficient mean the same on every site);
  ``decode`` undoes it and the loss is measured in the normalised units.
  Default off (the toys' activations are already of order one).
* ``init_b_dec`` — ``zeros`` (default; also the April-2024 Anthropic recipe), ``mean``,
  or ``geometric_median`` of the (normalised) training data (Bricken et al. 2023).
* the TopK family's auxiliary-k loss on dead latents (Gao et al. 2024), see
  ``auxk_loss``; on for the TopK variants, off (``aux_coef = 0``) otherwise.
* dead/dense latent tracking and the sparsity warm-up come from ``methods/train.py``:
  the module reports ``fire_rate_M`` after every loss and receives the dead mask and the
  warm-up factor through ``set_train_state``.

Fast training step. On large minibatches (B·m >= ``FAST_MIN_ELEMENTS``) a variant that
declares ``relu_l1`` (ReLU latents, penalty c·sum z / B) trains through ``_ReLUStep``, one
autograd node computing exactly the generic loss and its gradients with five [B,d]x[d,m]
matmuls and no fresh [B,m] tensors: the decoder bias is folded into the encoder bias
(``folded_bias``: (x - b_dec) W_enc + b_enc = x W_enc + c, so no x-gradient matmul is
needed), the [B,m] intermediates live in two reused buffers (a new 64 MB tensor costs
~25 ms of page faults per step on CPU), the L1 gradient rides in the matmul's bias and the
firing counts are one matrix-vector product. TopK uses the sparse step of
``methods/sparse_decode.py`` (see ``sae_topk.py``). ``step_path`` forces a path
(``generic`` | ``fast``); the paths agree up to float rounding (tests/test_sparse_decode.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from decompbench.methods.base import Decomposition
from decompbench.methods.train import TrainLog, TrainParams, TrainState, train
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite

InitBDec = Literal["zeros", "mean", "geometric_median"]
StepPath = Literal["auto", "generic", "fast"]

# From this many minibatch x latent entries on, ``auto`` takes the fast step. Below it
# (every toy-sized run) the generic autograd step runs: same cost there, and its rounding
# is the one ``methods/batched.py`` mirrors bit for bit.
FAST_MIN_ELEMENTS = 1 << 20


class SAEParams(TrainParams):
    width: int = Field(default=32, ge=1, description="dictionary size (latents)")
    normalize: bool = Field(default=False, description="scale inputs so E||x||^2 = d")
    init_b_dec: InitBDec = Field(
        default="zeros", description="initial decoder bias: zeros, data mean or geometric median"
    )


def geometric_median(X_ND: Tensor, iters: int = 100, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    x = X_ND.double()
    y = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(dim=0) / w.sum()
        if (y_new - y).norm() <= tol * max(1.0, float(y.norm())):
            return y_new.to(X_ND.dtype)
        y = y_new
    return y.to(X_ND.dtype)


def auxk_loss(err_BD: Tensor, pre_BM: Tensor, dead_M: Tensor, W_dec_MD: Tensor, k: int) -> Tensor:
    """Gao et al. 2024: reconstruct the main residual from the top-k dead latents.

    ``err_BD`` is x - x_hat (treated as a constant target). Only the dead latents'
    ReLU pre-activations are used, so their encoder and decoder rows get a gradient.
    """
    n_dead = int(dead_M.sum())
    if n_dead == 0:
        return pre_BM.new_zeros(())
    k = min(k, n_dead)
    masked_BM = torch.where(dead_M, pre_BM, torch.full_like(pre_BM, float("-inf")))
    vals, idx = masked_BM.topk(k, dim=1)
    z_BM = torch.zeros_like(pre_BM).scatter(1, idx, torch.relu(vals))
    return (z_BM @ W_dec_MD - err_BD.detach()).pow(2).sum(dim=1).mean()


class _ReLUStep(torch.autograd.Function):
    """mse + l1·sum z / B for z = ReLU(x W_enc + c), x_hat = z W_dec + b_dec; and counts.

    Outputs the loss and, not differentiable, how many samples each latent fired on.
    ``bufs`` holds two reused [B, m] buffers: ``z`` (saved for backward) and ``g``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x_BD: Tensor, W_enc_DM: Tensor, c_M: Tensor, W_dec_MD: Tensor,
        b_dec_D: Tensor, l1: float, bufs: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        B, m = x_BD.shape[0], W_enc_DM.shape[1]
        z_BM = torch.addmm(c_M, x_BD, W_enc_DM, out=reused_buffer(bufs, "z", (B, m), x_BD)).relu_()
        ones_B = x_BD.new_ones(B)
        fired_M = torch.mv(torch.sign(z_BM, out=reused_buffer(bufs, "g", (B, m), x_BD)).T, ones_B)
        diff_BD = torch.addmm(b_dec_D, z_BM, W_dec_MD).sub_(x_BD)  # x_hat - x
        flat = diff_BD.view(-1)
        loss = (torch.dot(flat, flat) + l1 * z_BM.sum()) / B
        ctx.save_for_backward(x_BD, W_dec_MD, z_BM, diff_BD)
        ctx.l1, ctx.bufs = l1, bufs  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(fired_M)
        return loss, fired_M

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        x_BD, W_dec_MD, z_BM, diff_BD = ctx.saved_tensors
        B = x_BD.shape[0]
        g_xhat_BD = diff_BD * (2 * g_loss / B)
        # dL/dz = g_xhat W_dec^T + l1/B on the active latents, 0 elsewhere (ReLU)
        g_BM = reused_buffer(ctx.bufs, "g", z_BM.shape, z_BM)
        torch.addmm((ctx.l1 / B) * g_loss, g_xhat_BD, W_dec_MD.T, out=g_BM)
        torch.ops.aten.threshold_backward.grad_input(g_BM, z_BM, 0.0, grad_input=g_BM)
        g_W_enc = x_BD.T @ g_BM
        g_c = torch.mv(g_BM.T, x_BD.new_ones(B))
        g_W_dec = z_BM.T @ g_xhat_BD
        return None, g_W_enc, g_c, g_W_dec, g_xhat_BD.sum(dim=0), None, None


def reused_buffer(
    bufs: dict[str, Tensor], name: str, shape: tuple[int, ...], like: Tensor
) -> Tensor:
    """The reused buffer ``name`` (re)allocated when shape, dtype or device change."""
    t = bufs.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = bufs[name] = like.new_empty(shape)
    return t


class SparseAutoencoder(nn.Module):
    """x_hat = act((x s - b_dec) W_enc + b_enc) W_dec / s + b_dec / s, unit decoder rows.

    ``s`` (buffer ``in_scale``) is 1 unless ``normalize`` is on; ``b_dec`` lives in the
    normalised units.
    """

    in_scale: Tensor  # buffer: the input scale s (1 unless ``normalize``)
    normalize: bool = False
    init_b_dec: InitBDec = "zeros"
    aux_k: int = 0
    aux_coef: float = 0.0
    step_path: StepPath = "auto"

    def __init__(self, d: int, width: int, gen: torch.Generator) -> None:
        super().__init__()
        w_dec_MD = torch.randn(width, d, generator=gen)
        w_dec_MD /= w_dec_MD.norm(dim=1, keepdim=True)
        self.W_dec_MD = nn.Parameter(w_dec_MD)
        self.W_enc_DM = nn.Parameter(w_dec_MD.T.clone())
        self.b_enc_M = nn.Parameter(torch.zeros(width))
        self.b_dec_D = nn.Parameter(torch.zeros(d))
        self.register_buffer("in_scale", torch.ones(()))
        self.sparsity_scale = 1.0
        self.dead_M: Tensor | None = None
        self.fire_rate_M: Tensor | None = None
        self.step_buffers: dict[str, Tensor] = {}  # reused by the fast training step

    # -- training hooks (see methods/train.py) ---------------------------------------
    @torch.no_grad()
    def prepare(self, x_ND: Tensor, *rest: Tensor) -> None:
        """Set the input scale and the decoder-bias initialisation from the training data."""
        if self.normalize:
            self.in_scale.fill_((x_ND.shape[1] / x_ND.pow(2).sum(dim=1).mean()).sqrt())
        xn_ND = x_ND * self.in_scale
        if self.init_b_dec == "mean":
            self.b_dec_D.copy_(xn_ND.mean(dim=0))
        elif self.init_b_dec == "geometric_median":
            self.b_dec_D.copy_(geometric_median(xn_ND))

    def set_train_state(self, state: TrainState) -> None:
        self.sparsity_scale = state.sparsity_scale
        self.dead_M = state.dead_M

    # -- the model ---------------------------------------------------------------------
    def pre_acts(self, x_BD: Tensor) -> Tensor:
        return (x_BD * self.in_scale - self.b_dec_D) @ self.W_enc_DM + self.b_enc_M

    def activation(self, pre_BM: Tensor) -> Tensor:
        raise NotImplementedError

    def sparsity_loss(self, z_BM: Tensor) -> Tensor:
        return z_BM.new_zeros(())

    def penalty(self, z_BM: Tensor, pre_BM: Tensor) -> Tensor:
        """The sparsity term of the loss; variants that need pre-activations override it."""
        return self.sparsity_loss(z_BM)

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x_BD))

    def decode_normalised(self, z_BM: Tensor) -> Tensor:
        return z_BM @ self.W_dec_MD + self.b_dec_D

    def decode(self, z_BM: Tensor) -> Tensor:
        return self.decode_normalised(z_BM) / self.in_scale

    def aux_loss(self, err_BD: Tensor, pre_BM: Tensor) -> Tensor:
        if self.aux_coef == 0 or self.dead_M is None or self.aux_k == 0:
            return pre_BM.new_zeros(())
        return self.aux_coef * auxk_loss(err_BD, pre_BM, self.dead_M, self.W_dec_MD, self.aux_k)

    def note_firing(self, z_BM: Tensor) -> None:
        """Record which latents fired on this minibatch (read by the training loop)."""
        fired_M = (z_BM.detach() != 0).sum(dim=0, dtype=torch.int32)  # 2x cheaper than .mean
        self.fire_rate_M = fired_M.double() / z_BM.shape[0]  # same value, bit for bit

    # -- the fast training step (see the module docstring) -------------------------------
    def relu_l1(self) -> float | None:
        """c when the latents are ReLU(pre) and ``penalty`` is c · mean_b sum_m z[b, m]
        (then ``loss`` may take the fused step); None (default) otherwise."""
        return None

    def fast_step(self, x_BD: Tensor) -> bool:
        """Whether ``loss`` takes a variant's fast step on this minibatch."""
        if self.step_path == "generic" or not torch.is_grad_enabled() or x_BD.requires_grad:
            return False
        n = x_BD.shape[0] * self.b_enc_M.shape[0]
        return self.step_path == "fast" or n >= FAST_MIN_ELEMENTS

    def folded_bias(self) -> Tensor:
        """c = b_enc - b_dec W_enc, so that (x - b_dec) W_enc + b_enc = x W_enc + c."""
        return torch.addmv(self.b_enc_M, self.W_enc_DM.T, self.b_dec_D, alpha=-1)

    def train(self, mode: bool = True) -> Self:
        if not mode:
            self.step_buffers.clear()
        return super().train(mode)

    def relu_step_loss(self, x_BD: Tensor, l1: float) -> Tensor:
        xs_BD = x_BD * self.in_scale
        loss, fired_M = _ReLUStep.apply(
            xs_BD, self.W_enc_DM, self.folded_bias(), self.W_dec_MD, self.b_dec_D,
            self.sparsity_scale * l1, self.step_buffers,
        )  # fmt: skip
        self.fire_rate_M = fired_M.double() / x_BD.shape[0]
        out: Tensor = loss
        return out

    def loss(self, x_BD: Tensor) -> Tensor:
        l1 = self.relu_l1()
        if l1 is not None and self.aux_coef == 0 and self.fast_step(x_BD):
            return self.relu_step_loss(x_BD, l1)
        pre_BM = self.pre_acts(x_BD)
        z_BM = self.activation(pre_BM)
        self.note_firing(z_BM)
        err_BD = x_BD * self.in_scale - self.decode_normalised(z_BM)
        mse = err_BD.pow(2).sum(dim=1).mean()
        sparsity = self.sparsity_scale * self.penalty(z_BM, pre_BM)
        return mse + sparsity + self.aux_loss(err_BD, pre_BM)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec_MD.div_(self.W_dec_MD.norm(dim=1, keepdim=True).clamp_min(1e-12))


class SAEMethod(Decomposition):
    """Fit/encode/decode for any ``SparseAutoencoder`` subclass named by ``Module``."""

    Module: ClassVar[type[SparseAutoencoder]]
    params: SAEParams

    def make_module(self, d: int, gen: torch.Generator) -> SparseAutoencoder:
        return self.Module(d, self.params.width, gen)

    def configure(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """Copy the shared training features from the params onto the module."""
        sae.normalize = self.params.normalize
        sae.init_b_dec = self.params.init_b_dec
        return sae

    def fit(self, site: ActivationSite, seed: int) -> None:
        sae = self.make_module(site.d, generator(seed, f"method/{self.name}/init"))
        self.sae = self.configure(sae)
        self.sae.train()
        self.log: TrainLog = train(
            self.sae, site.acts_ND, self.params, seed, f"{self.name} @ {site.name}"
        )
        self.sae.eval()

    def training_log(self) -> TrainLog | None:
        return getattr(self, "log", None)

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        return self.sae.encode(acts_ND)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return self.sae.decode(latents_NM)

    @torch.no_grad()
    def directions(self) -> Tensor:
        w = self.sae.W_dec_MD.detach()
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
