"""`spd` — stochastic parameter decomposition of the downstream weights next to the site.

Every ``nn.Linear`` of the downstream network (or those named in ``modules``) is written as
a sum of ``components`` rank-1 subcomponents, ``W = sum_c U_c V_c^T``. Each subcomponent
has a causal importance ``g_c(x)`` in [0, 1], computed by its own tiny MLP from its inner
activation ``V_c . x`` through a leaky hard sigmoid. Training masks each subcomponent with
``m_c ~ U(g_c, 1)``: a subcomponent may be ablated freely where it is unimportant, so the
network's output with random masks must match the original output. Loss:

    faithfulness ||W - sum U V^T||^2 / ||W||^2
    + stochastic reconstruction (all layers masked) + layerwise (one layer at a time)
    + importance * mean_x sum_c g_c(x)^p

Output divergences are MSE divided by the output's variance (KL for categorical outputs),
so coefficients mean the same on every toy.

What it reports at the site: the read vectors ``V_c`` of the subcomponents of the layers
whose input *is* the site activation; latent ``c`` is ``g_c(x) * (V_c/|V_c|) . x``. The
site reconstruction is a least-squares readout of those latents (SPD has no site
decoder). Selection (no ground truth): ``importance`` may be a list; every value is
fitted and the largest one whose held-out stochastic reconstruction error stays within
``recon_tol`` is kept — the sparsest decomposition that still reproduces the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.downstream import (
    Readout,
    choose_sparsest,
    divergence,
    holdout_split,
    linear_calls,
    output_scale,
    require_downstream,
)
from decompbench.methods.train import TrainParams, train
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite, DownstreamSite, OutputKind

LEAK = 0.01  # slope of the leaky parts of the hard sigmoids
EPS = 1e-12


class SPDParams(TrainParams):
    components: int | None = Field(default=None, ge=1, description="per layer; 2*max(in,out)")
    importance: float | list[float] = Field(
        default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1], description="minimality coefficient(s)"
    )
    p: float = Field(default=1.0, gt=0)
    layerwise: float = Field(default=1.0, ge=0)
    faithfulness: float = Field(default=1.0, ge=0)
    simplicity: float = Field(default=0.0, ge=0, description="weight of sum_c |U_c||V_c|")
    ci_hidden: int = Field(default=16, ge=1)
    ci_fn: Literal["scalar", "vector"] = Field(
        default="vector", description="importance from the inner activation or the layer input"
    )
    warmup_steps: int = Field(default=200, ge=0)
    recon_tol: float = Field(default=0.02, gt=0, description="selection: max held-out error")
    holdout_frac: float = Field(default=0.1, gt=0, lt=1)
    modules: list[str] | None = Field(default=None, description="Linear names to decompose")
    lr: float = Field(default=1e-3, gt=0)

    @field_validator("importance")
    @classmethod
    def _nonneg(cls, v: float | list[float]) -> float | list[float]:
        vals = v if isinstance(v, list) else [v]
        if not vals or any(x < 0 for x in vals):
            raise ValueError("importance must be a non-negative number or a non-empty list")
        return v


def lower_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    """clamp(x, 0, 1); below 0 a gradient of slope LEAK only where it pushes x up."""
    return _LowerLeaky.apply(x)  # type: ignore[no-any-return]


class _LowerLeaky(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        below = torch.where(grad < 0, LEAK * grad, torch.zeros_like(grad))  # descent pushes up
        return torch.where(x <= 0, below, torch.where(x <= 1, grad, torch.zeros_like(grad)))


def upper_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    return torch.where(x > 1, 1 + LEAK * (x - 1), x.clamp(0, 1))


class LinearComponents(nn.Module):
    """C rank-1 subcomponents of one linear layer, with one causal-importance MLP each."""

    def __init__(
        self, target: nn.Linear, C: int, hidden: int, vector_ci: bool, gen: torch.Generator
    ) -> None:
        super().__init__()
        W_OI = target.weight.detach()
        d_out, d_in = W_OI.shape
        V_IC = torch.randn(d_in, C, generator=gen)
        V_IC /= V_IC.norm(dim=0, keepdim=True)
        U_CO = torch.randn(C, d_out, generator=gen)
        U_CO /= U_CO.norm(dim=1, keepdim=True)
        U_CO *= torch.einsum("co,oi,ic->c", U_CO, W_OI, V_IC)[:, None]  # SPD's init
        self.V_IC, self.U_CO = nn.Parameter(V_IC), nn.Parameter(U_CO)
        fan_in = d_in if vector_ci else 1
        w1 = torch.randn(C, fan_in, hidden, generator=gen) * math.sqrt(2.0 / fan_in)
        self.w1_CFH = nn.Parameter(w1)
        self.vector_ci = vector_ci
        self.b1_CH = nn.Parameter(torch.zeros(C, hidden))
        self.w2_CH = nn.Parameter(torch.randn(C, hidden, generator=gen) / math.sqrt(hidden))
        self.b2_C = nn.Parameter(torch.zeros(C))
        self.register_buffer("W_OI", W_OI.clone())
        self.register_buffer("bias_O", None if target.bias is None else target.bias.detach())

    def inner(self, x: Tensor) -> Tensor:
        return x @ self.V_IC

    def ci_pre(self, x: Tensor) -> Tensor:
        """Causal-importance pre-activations [..., C]: from each inner activation alone
        (scalar MLPs, as in the SPD paper) or from the whole layer input (vector MLPs)."""
        if self.vector_ci:
            pre = torch.einsum("...i,cih->...ch", x, self.w1_CFH)
        else:
            pre = self.inner(x)[..., None] * self.w1_CFH[:, 0, :]
        h = nn.functional.gelu(pre + self.b1_CH)
        return (h * self.w2_CH).sum(dim=-1) + self.b2_C

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out = (self.inner(x) * mask) @ self.U_CO
        return out if self.bias_O is None else out + self.bias_O

    def faithfulness(self) -> Tensor:
        W = self.W_OI
        return (W - (self.V_IC @ self.U_CO).T).pow(2).sum() / W.pow(2).sum().clamp_min(EPS)

    def weight_norms(self) -> Tensor:
        return self.V_IC.norm(dim=0) * self.U_CO.norm(dim=1)

    def simplicity(self) -> Tensor:
        """Sum of the subcomponents' norms over the nuclear norm of W (>= 1; = 1 at best)."""
        return self.weight_norms().sum() / torch.linalg.matrix_norm(self.W_OI, "nuc")


@dataclass(frozen=True)
class LossWeights:
    importance: float
    p: float
    layerwise: float
    faithfulness: float
    simplicity: float


class SPDModel(nn.Module):
    """Subcomponents of the chosen linear layers of a frozen downstream network."""

    def __init__(
        self, site: DownstreamSite, names: list[str], p: SPDParams, seed: int
    ) -> None:
        super().__init__()
        gen = generator(seed, "method/spd/init")
        linears = dict(site.downstream.named_modules())
        self.names = names
        self.comps = nn.ModuleList()
        for name in names:
            lin = linears[name]
            assert isinstance(lin, nn.Linear)
            c = p.components or 2 * max(lin.in_features, lin.out_features)
            self.comps.append(LinearComponents(lin, c, p.ci_hidden, p.ci_fn == "vector", gen))
        self.linears = [linears[n] for n in names]
        self.holder = (site.downstream,)  # a tuple keeps the frozen network out of parameters()
        self.kind: OutputKind = site.output_kind
        self.scale = 1.0
        self.weights = LossWeights(0.0, 1.0, 1.0, 1.0, 0.0)
        self.mask_gen = generator(seed, "method/spd/masks")
        self._inputs: dict[int, Tensor] = {}
        self._masks: dict[int, Tensor] = {}

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Hooks that record each layer's input and swap in masked components on request."""

        def make(i: int):  # type: ignore[no-untyped-def]
            def hook(_m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
                self._inputs[i] = inp[0]
                if i in self._masks:
                    return self.comps[i](inp[0], self._masks[i])  # type: ignore[no-any-return]
                return None

            return hook

        handles = [lin.register_forward_hook(make(i)) for i, lin in enumerate(self.linears)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, x_BD: Tensor, masks: dict[int, Tensor]) -> Tensor:
        self._masks = masks
        try:
            return self.holder[0](x_BD)  # type: ignore[no-any-return]
        finally:
            self._masks = {}

    def target(self, x_BD: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Original output and, per layer, the causal-importance pre-activations."""
        self._inputs = {}
        with torch.no_grad():
            out = self.run(x_BD, {})
        pres = [c.ci_pre(self._inputs[i]) for i, c in enumerate(self.comps)]
        return out, pres

    def stochastic_masks(self, pres: list[Tensor]) -> list[Tensor]:
        gs = [lower_leaky_hard_sigmoid(p) for p in pres]
        return [g + (1 - g) * torch.rand(g.shape, generator=self.mask_gen) for g in gs]

    def recon(self, x_BD: Tensor, target: Tensor, masks: dict[int, Tensor]) -> Tensor:
        return divergence(self.run(x_BD, masks), target, self.kind) / self.scale

    def loss(self, x_BD: Tensor) -> Tensor:
        w = self.weights
        target, pres = self.target(x_BD)
        masks = self.stochastic_masks(pres)
        total = self.recon(x_BD, target, dict(enumerate(masks)))
        if w.layerwise > 0 and len(masks) > 1:
            layer = sum(self.recon(x_BD, target, {i: m}) for i, m in enumerate(masks))
            total = total + w.layerwise * layer / len(masks)
        elif w.layerwise > 0:
            total = total * (1 + w.layerwise)
        faith = sum(c.faithfulness() for c in self.comps)
        minimal = sum((upper_leaky_hard_sigmoid(p) + EPS).pow(w.p).sum(-1).mean() for p in pres)
        total = total + w.faithfulness * faith + w.importance * minimal
        if w.simplicity > 0:
            total = total + w.simplicity * sum(c.simplicity() for c in self.comps)
        return total  # type: ignore[return-value]

    def after_step(self) -> None:
        pass


class _Warmup(nn.Module):
    """Faithfulness only, to start the subcomponents summing to the weights."""

    def __init__(self, model: SPDModel) -> None:
        super().__init__()
        self.model = model

    def loss(self, _x: Tensor) -> Tensor:
        return sum(c.faithfulness() for c in self.model.comps)  # type: ignore[return-value]

    def after_step(self) -> None:
        pass


@torch.no_grad()
def held_out_error(model: SPDModel, x_ND: Tensor, draws: int = 4) -> tuple[float, float]:
    """Normalised stochastic reconstruction error and mean importance L0 on ``x_ND``."""
    target, pres = model.target(x_ND)
    err = 0.0
    for _ in range(draws):
        masks = model.stochastic_masks(pres)
        err += float(model.recon(x_ND, target, dict(enumerate(masks)))) / draws
    l0 = sum(float((p > 0).float().sum(-1).mean()) for p in pres)
    return err, l0


def site_readers(site: DownstreamSite, names: list[str] | None) -> tuple[list[str], list[str]]:
    """(layers to decompose, those among them whose input is the site activation)."""
    probe = site.acts_ND[: min(256, site.acts_ND.shape[0])]
    calls = linear_calls(site.downstream, probe)
    if not calls:
        raise UserError(f"spd: the downstream of site '{site.name}' has no nn.Linear to decompose")
    known = [n for n, _, _ in calls]
    if names is not None:
        missing = [n for n in names if n not in known]
        if missing:
            raise UserError(f"spd: no linear layer {missing[0]!r} downstream (have {known})")
    chosen = [n for n in dict.fromkeys(known) if names is None or n in names]
    readers = [n for n, _, inp in calls if n in chosen and torch.equal(inp, probe)]
    if not readers:
        raise UserError(f"spd: no decomposed linear layer reads site '{site.name}' directly")
    return chosen, list(dict.fromkeys(readers))


@register_method("spd")
class SPD(Decomposition):
    summary = "stochastic parameter decomposition of the downstream weights (rank-1, masked)"
    access = "downstream_aware"
    directions_kind = "component read vectors"
    Params = SPDParams
    params: SPDParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        names, readers = site_readers(ds, self.params.modules)
        train_ND, hold_ND = holdout_split(ds.acts_ND, self.params.holdout_frac, seed)
        coefs = self.params.importance
        coefs = sorted(coefs) if isinstance(coefs, list) else [coefs]
        self.selection: list[dict[str, float]] = []
        fits = []
        for coef in coefs:
            model = self._fit_one(ds, names, train_ND, coef, seed)
            with model.attached():
                err, l0 = held_out_error(model, hold_ND)
            self.selection.append({"importance": coef, "recon": err, "l0": l0})
            fits.append(model)
        errors = [s["recon"] for s in self.selection]
        self.chosen = choose_sparsest(errors, self.params.recon_tol)
        self.model = fits[self.chosen]
        self.reader_idx = [names.index(n) for n in readers]
        self.reads_IC = [self._folded_reads(i, ds.acts_ND) for i in self.reader_idx]
        self.readout = Readout.fit(self.encode(ds.acts_ND), ds.acts_ND)

    @torch.no_grad()
    def _folded_reads(self, i: int, x_ND: Tensor) -> Tensor:
        """Read vectors [in, C] after folding never-important subcomponents into the rest."""
        comp = self.model.comps[i]
        assert isinstance(comp, LinearComponents)
        alive_C = (comp.ci_pre(x_ND) > 0).any(dim=0)
        return fold_dead(comp.W_OI, comp.V_IC.detach(), comp.U_CO.detach(), alive_C)

    def _fit_one(
        self, ds: DownstreamSite, names: list[str], x_ND: Tensor, coef: float, seed: int
    ) -> SPDModel:
        p = self.params
        model = SPDModel(ds, names, p, seed)
        with model.attached(), torch.no_grad():
            model.scale = output_scale(model.run(x_ND, {}), ds.output_kind)
        label = f"spd @ {ds.name} (importance {coef:g})"
        if p.warmup_steps:
            warm = TrainParams(steps=p.warmup_steps, lr=1e-2, batch_size=p.batch_size)
            train(_Warmup(model), x_ND, warm, seed, f"{label} warm-up")
        model.weights = LossWeights(coef, p.p, p.layerwise, p.faithfulness, p.simplicity)
        with model.attached():
            train(model, x_ND, p, seed, label)
        return model

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        zs = []
        for i, V_IC in zip(self.reader_idx, self.reads_IC, strict=True):
            g = self.model.comps[i].ci_pre(acts_ND).clamp(0, 1)
            zs.append(g * (acts_ND @ V_IC) / V_IC.norm(dim=0).clamp_min(EPS))
        return torch.cat(zs, dim=1)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return self.readout(latents_NM)

    @torch.no_grad()
    def directions(self) -> Tensor:
        v = torch.cat([V_IC.T for V_IC in self.reads_IC], dim=0)
        return v / v.norm(dim=1, keepdim=True).clamp_min(EPS)



def fold_dead(W_OI: Tensor, V_IC: Tensor, U_CO: Tensor, alive_C: Tensor) -> Tensor:
    """Read vectors with the weight of never-important subcomponents folded into the alive.

    Subcomponents that are never causally important can still hold weight (directions
    the data never excites, where nothing checks them). Dropping them and correcting the
    alive read vectors by the least-norm ``dV`` with ``U_A^T (V_A + dV)^T = W`` makes the
    alive subcomponents alone sum to ``W`` as closely as their write vectors allow.
    """
    V = V_IC.clone()
    if not bool(alive_C.any()):
        return V
    U_AO, V_IA = U_CO[alive_C], V_IC[:, alive_C]
    resid_OI = W_OI - U_AO.T @ V_IA.T
    dV_AI = torch.linalg.pinv(U_AO.T.double(), rtol=1e-6) @ resid_OI.double()
    V[:, alive_C] = V_IA + dV_AI.T.float()
    return V
