"""`spd` — stochastic parameter decomposition of the downstream weights next to the site.

Each weight matrix of the network after the site (every 2-D parameter or buffer used in a
matrix product or ``nn.functional.linear``, or those named in ``weights``) is written as
a sum of ``components`` rank-1 subcomponents ``W = sum_c U_c V_c^T`` (V_c reads the
layer's input, U_c writes its output). Each subcomponent has a causal importance
``g_c(x)`` in [0, 1] from its own tiny MLP (hidden width ``ci_hidden``, GELU) through a
leaky hard sigmoid; the MLP sees the subcomponent's inner activation ``V_c . a`` (``ci_fn:
scalar``, the SPD paper's choice) or the layer's whole input ``a`` (``vector``). Training
masks each subcomponent with ``m_c ~ U(g_c, 1)``: a subcomponent may be ablated freely
where it is unimportant, so the output with random masks must match the original.

    loss = faithfulness ||W - sum U V^T||^2 / ||W||^2
           + stochastic reconstruction (all weights masked) + layerwise (one at a time)
           + importance * mean_x sum_c [ g_c(x)^p + active_norm g_c(x) |U_c||V_c| / |W|_F ]

The last term inside the bracket is an addition to SPD (APD's "simplicity" for rank-1
pieces): it breaks a tie SPD leaves open. Where a ReLU hides wrong-signed or sub-threshold
contributions, one large subcomponent can serve several mechanisms at the same importance
count as one small subcomponent per mechanism (measured on the composed twin: without it
SPD settles on 9-12 multi-purpose subcomponents for 16 conjunctions). ``active_norm: 0``
gives plain SPD.

Output divergences are MSE divided by the output's variance (KL for categorical outputs),
so the coefficients mean the same on every toy. The matrix products are found by a
``TorchFunctionMode`` while the downstream runs, so toys need not use ``nn.Linear``.

What it reports at the site: the read vectors ``V_c`` of the subcomponents of the weights
whose input *is* the site activation; latent ``c`` is ``g_c(x) * (V_c/|V_c|) . x``.
Subcomponents that read parallel directions (|cos| >= ``merge_tol``) and are important on
the same inputs (importance correlation >= ``merge_tol``) are one mechanism split in two
and are reported once (the larger). Read vectors are exact only on the data's span: the
part of a weight row the data never excites can sit in never-important subcomponents. The
site reconstruction is a least-squares readout of those latents (SPD has no site
decoder). Selection (no ground truth): ``importance`` may be a list; every value is
fitted on 90 % of the training activations and, among the fits whose stochastic
reconstruction error on the other 10 % is well inside the tolerance (at most
``recon_tol`` / 4), the one with the fewest important subcomponents per input (held-out
L0; L0s within 5 % tie, broken by the lower error) is kept; when no fit is that
accurate, the most accurate one. The previous rule (error <= ``recon_tol``, then the
sparsest) picked fits at the edge of the tolerance, where the importance penalty has
started to trade the output for fewer components and merges mechanisms (issue 17: on
[3, 5] twins it took importance 0.1 at error 0.0088 over 0.03 at 0.0002); the margin
keeps the choice off that edge (``decompbench.methods.downstream.choose_setting``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.downstream import (
    Readout,
    choose_from_records,
    divergence,
    holdout_split,
    nonneg_choices,
    output_scale,
    require_downstream,
)
from decompbench.methods.train import TrainLog, TrainParams, TrainState, train
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite, DownstreamSite, OutputKind

LEAK = 0.01  # slope of the leaky parts of the hard sigmoids
EPS = 1e-12


class SPDParams(TrainParams):
    sweep_fields: ClassVar[tuple[str, ...]] = ("importance",)  # a list: one fit per value
    components: int | None = Field(default=None, ge=1, description="per weight; 2*max(in,out)")
    importance: float | list[float] = Field(
        default=[0.003, 0.01, 0.03, 0.1], description="minimality coefficient(s); list: select"
    )
    p: float = Field(
        default=1.0, gt=0, description="exponent of the importance-minimality penalty (L_p)"
    )
    layerwise: float = Field(
        default=1.0, ge=0, description="weight of the layer-wise stochastic reconstruction loss"
    )
    faithfulness: float = Field(
        default=1.0,
        ge=0,
        description="weight of the faithfulness loss (components sum to the weights)",
    )
    active_norm: float = Field(
        default=10.0, ge=0, description="weight of the active-norm term, relative to importance"
    )
    ci_fn: Literal["scalar", "vector"] = Field(
        default="scalar",
        description="causal-importance MLP input: a scalar per subcomponent or the vector",
    )
    ci_hidden: int = Field(
        default=16, ge=1, description="hidden width of each causal-importance MLP"
    )
    warmup_steps: int = Field(
        default=200, ge=0, description="steps before the importance penalty starts"
    )
    recon_tol: float = Field(default=0.01, gt=0, description="selection: max held-out error")
    holdout_frac: float = Field(
        default=0.1, gt=0, lt=1, description="share of samples held out for the selection"
    )
    merge_tol: float = Field(
        default=0.99, gt=0, le=1, description="merge parallel, co-important subcomponents"
    )
    weights: list[str] | None = Field(default=None, description="weight names to decompose")
    lr: float = Field(default=1e-2, gt=0)

    @field_validator("importance")
    @classmethod
    def _nonneg(cls, v: float | list[float]) -> float | list[float]:
        return nonneg_choices(v, "importance")


# -- finding and replacing the downstream's matrix products ----------------------------

_MATMULS = {torch.matmul, torch._C.TensorBase.matmul, torch.mm, torch._C.TensorBase.mm}
_LINEAR = {torch.nn.functional.linear}
_TRANSPOSES = {torch.t, torch._C.TensorBase.t}
_T_GETTERS = {torch._C.TensorBase.T, torch._C.TensorBase.mT}
_SWAPS = {torch.transpose, torch._C.TensorBase.transpose}


@dataclass
class Use:
    """One matrix product with a decomposed weight: which, along which dim, on what input."""

    index: int
    read_dim: int  # dimension of the weight contracted with the input
    input: Tensor


Replace = Callable[[int, Tensor], Tensor | None]


class WeightCalls(TorchFunctionMode):
    """Records every matrix product with one of ``weights``; ``replace`` may swap its result.

    ``replace(i, input)`` returns the product's replacement (without bias) or ``None``.
    Any other operation on a decomposed weight is refused.
    """

    def __init__(self, weights: list[Tensor], replace: Replace | None = None) -> None:
        super().__init__()
        self.tags: dict[int, tuple[int, bool]] = {id(w): (i, False) for i, w in enumerate(weights)}
        self.keep: list[Tensor] = []  # derived views stay alive so their ids stay unique
        self.uses: list[Use] = []
        self.replace = replace

    def _tag(self, x: object) -> tuple[int, bool] | None:
        return self.tags.get(id(x)) if isinstance(x, Tensor) else None

    def _transposed(self, func: Any, args: tuple[Any, ...]) -> bool:
        if func in _TRANSPOSES or getattr(func, "__self__", None) in _T_GETTERS:
            return True
        return func in _SWAPS and {d % 2 for d in args[1:3]} == {0, 1}

    def _product(self, i: int, read_dim: int, a: Tensor, orig: Callable[[], Tensor]) -> Tensor:
        self.uses.append(Use(i, read_dim, a))
        out = None if self.replace is None else self.replace(i, a)
        return orig() if out is None else out

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        tag = self._tag(args[0]) if args else None
        if tag is not None and self._transposed(func, args):
            out = func(*args, **kwargs)
            self.keep.append(out)
            self.tags[id(out)] = (tag[0], not tag[1])
            return out
        if func in _MATMULS and len(args) == 2 and self._tag(args[1]) and not tag:
            i, tr = self._tag(args[1])  # type: ignore[misc]
            return self._product(i, 1 if tr else 0, args[0], lambda: func(*args, **kwargs))
        if func in _LINEAR and len(args) >= 2 and self._tag(args[1]) and not tag:
            i, tr = self._tag(args[1])  # type: ignore[misc]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = self._product(i, 0 if tr else 1, args[0], lambda: func(args[0], args[1]))
            return out if bias is None else out + bias
        used = [a for a in (*args, *kwargs.values()) if self._tag(a) is not None]
        if used:
            name = getattr(func, "__name__", str(func))
            raise UserError(f"spd: a decomposed weight is used in '{name}' (only matmul/linear)")
        return func(*args, **kwargs)


# -- subcomponents ------------------------------------------------------------------------


def lower_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    """clamp(x, 0, 1); below 0 a gradient of slope LEAK only where it pushes x up."""
    return _LowerLeaky.apply(x)


class _LowerLeaky(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        below = torch.where(grad < 0, LEAK * grad, torch.zeros_like(grad))  # descent pushes up
        return torch.where(x <= 0, below, torch.where(x <= 1, grad, torch.zeros_like(grad)))


def upper_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    return torch.where(x > 1, 1 + LEAK * (x - 1), x.clamp(0, 1))


class Subcomponents(nn.Module):
    """C rank-1 pieces of one weight W_OI (output x input), one importance MLP each."""

    W_OI: Tensor  # buffer: the target weight

    def __init__(self, W_OI: Tensor, C: int, hidden: int, vector_ci: bool, gen: torch.Generator):
        super().__init__()
        d_out, d_in = W_OI.shape
        V_IC = torch.randn(d_in, C, generator=gen)
        V_IC /= V_IC.norm(dim=0, keepdim=True)
        U_CO = torch.randn(C, d_out, generator=gen)
        U_CO /= U_CO.norm(dim=1, keepdim=True)
        U_CO *= torch.einsum("co,oi,ic->c", U_CO, W_OI, V_IC)[:, None]  # SPD's init
        self.V_IC, self.U_CO = nn.Parameter(V_IC), nn.Parameter(U_CO)
        fan_in = d_in if vector_ci else 1
        self.vector_ci = vector_ci
        self.w1_CFH = nn.Parameter(
            torch.randn(C, fan_in, hidden, generator=gen) * (2 / fan_in) ** 0.5
        )
        self.b1_CH = nn.Parameter(torch.zeros(C, hidden))
        self.w2_CH = nn.Parameter(torch.randn(C, hidden, generator=gen) / math.sqrt(hidden))
        self.b2_C = nn.Parameter(torch.zeros(C))
        self.register_buffer("W_OI", W_OI.detach().clone())

    def inner(self, a: Tensor) -> Tensor:
        return a @ self.V_IC

    def ci_pre(self, a: Tensor) -> Tensor:
        """Importance pre-activations [..., C] from the inner activations or the input."""
        if self.vector_ci:
            pre = torch.einsum("...i,cih->...ch", a, self.w1_CFH)
        else:
            pre = self.inner(a)[..., None] * self.w1_CFH[:, 0, :]
        h = nn.functional.gelu(pre + self.b1_CH)
        return (h * self.w2_CH).sum(dim=-1) + self.b2_C

    def forward(self, a: Tensor, mask: Tensor) -> Tensor:
        return (self.inner(a) * mask) @ self.U_CO

    def active_norm(self, pre_BC: Tensor) -> Tensor:
        """mean_x sum_c g_c(x) |U_c||V_c| / |W|_F: the size of the active mechanism (APD's
        simplicity for rank-1 pieces). Prefers one small subcomponent per mechanism to a
        large one that serves several (possible where a ReLU hides its side effects)."""
        norms_C = self.V_IC.norm(dim=0) * self.U_CO.norm(dim=1)
        g = upper_leaky_hard_sigmoid(pre_BC)
        return (g * norms_C).sum(dim=-1).mean() / self.W_OI.norm().clamp_min(EPS)

    def faithfulness(self) -> Tensor:
        W = self.W_OI
        return (W - (self.V_IC @ self.U_CO).T).pow(2).sum() / W.pow(2).sum().clamp_min(EPS)


@dataclass(frozen=True)
class LossWeights:
    importance: float
    p: float
    layerwise: float
    faithfulness: float
    active_norm: float = 0.0


@dataclass(frozen=True)
class Plan:
    """Which downstream weights get decomposed, how each is read, and which read the site."""

    names: list[str]
    weights: list[Tensor]
    read_dims: list[int]
    readers: list[int]


def weight_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Every 2-D floating parameter or buffer of ``module`` by name (shared ones once)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.ndim == 2 and t.is_floating_point() and id(t) not in seen:
            out[name] = t
            seen.add(id(t))
    return out


def same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def plan(site: DownstreamSite, names: list[str] | None) -> Plan:
    """Run the downstream once and find the weights it multiplies with (refusing otherwise)."""
    cands = weight_tensors(site.downstream)
    if names is not None:
        missing = [n for n in names if n not in cands]
        if missing:
            raise UserError(f"spd: no weight {missing[0]!r} downstream (have {list(cands)})")
        cands = {n: cands[n] for n in names}
    x = site.acts_ND[: min(64, site.acts_ND.shape[0])]
    mode = WeightCalls(list(cands.values()))
    with mode, torch.no_grad():
        site.output(x)
    keys = list(cands)
    used = sorted({u.index for u in mode.uses})
    if not used:
        raise UserError(f"spd: no weight matrix downstream of site '{site.name}' to decompose")
    for i in used:
        if sum(u.index == i for u in mode.uses) > 1:
            raise UserError(f"spd: weight '{keys[i]}' is used more than once downstream")
    read_dim = {u.index: u.read_dim for u in mode.uses}
    reads_site = {
        u.index for u in mode.uses if u.input.shape == x.shape and torch.equal(u.input, x)
    }
    if not reads_site:
        raise UserError(f"spd: no decomposed weight reads site '{site.name}' directly")
    return Plan(
        names=[keys[i] for i in used],
        weights=[cands[keys[i]] for i in used],
        read_dims=[read_dim[i] for i in used],
        readers=[j for j, i in enumerate(used) if i in reads_site],
    )


class SPDModel(nn.Module):
    """Subcomponents of the planned weights of a frozen downstream network."""

    def __init__(self, site: DownstreamSite, pl: Plan, p: SPDParams, seed: int) -> None:
        super().__init__()
        gen = generator(seed, "method/spd/init")
        self.pieces: list[Subcomponents] = []
        for W, rd in zip(pl.weights, pl.read_dims, strict=True):
            W_OI = W.detach() if rd == 1 else W.detach().T
            C = p.components or 2 * max(W_OI.shape)
            self.pieces.append(Subcomponents(W_OI, C, p.ci_hidden, p.ci_fn == "vector", gen))
        self.comps = nn.ModuleList(self.pieces)  # registers the parameters
        self.holder = (site, pl)  # a tuple keeps the frozen network out of parameters()
        self.kind: OutputKind = site.output_kind
        self.scale = 1.0
        self.weights = LossWeights(0.0, p.p, p.layerwise, p.faithfulness)
        self.mask_gen = generator(seed, "method/spd/masks")
        self.importance_scale = 1.0  # ramped by the loop's sparsity warm-up

    def set_train_state(self, state: TrainState) -> None:
        self.importance_scale = state.sparsity_scale

    def run(self, x_BD: Tensor, masks: dict[int, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Output with the masked subcomponents of weights in ``masks``, and each input."""
        site, pl = self.holder

        def replace(i: int, a: Tensor) -> Tensor | None:
            return self.pieces[i](a, masks[i]) if i in masks else None

        mode = WeightCalls(pl.weights, replace)
        with mode:
            out = site.output(x_BD)
        inputs = {u.index: u.input for u in mode.uses}
        return out, [inputs[i] for i in range(len(self.pieces))]

    def target(self, x_BD: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Original output, each weight's input, and the importance pre-activations."""
        with torch.no_grad():
            out, inputs = self.run(x_BD, {})
        return out, inputs, [c.ci_pre(a) for c, a in zip(self.pieces, inputs, strict=True)]

    def stochastic_masks(self, pres: list[Tensor]) -> list[Tensor]:
        gs = [lower_leaky_hard_sigmoid(p) for p in pres]
        return [g + (1 - g) * torch.rand(g.shape, generator=self.mask_gen) for g in gs]

    def recon(self, x_BD: Tensor, target: Tensor, masks: dict[int, Tensor]) -> Tensor:
        return divergence(self.run(x_BD, masks)[0], target, self.kind) / self.scale

    def loss(self, x_BD: Tensor) -> Tensor:
        w = self.weights
        target, _, pres = self.target(x_BD)
        masks = self.stochastic_masks(pres)
        total = self.recon(x_BD, target, dict(enumerate(masks)))
        if w.layerwise > 0:
            layer = [self.recon(x_BD, target, {i: m}) for i, m in enumerate(masks)]
            total = total + w.layerwise * torch.stack(layer).mean()
        faith = torch.stack([c.faithfulness() for c in self.pieces]).sum()
        ups = [(upper_leaky_hard_sigmoid(p) + EPS).pow(w.p).sum(-1).mean() for p in pres]
        imp = w.importance * self.importance_scale
        total = total + w.faithfulness * faith + imp * torch.stack(ups).sum()
        if w.active_norm > 0:
            sizes = [c.active_norm(p) for c, p in zip(self.pieces, pres, strict=True)]
            total = total + w.active_norm * self.importance_scale * torch.stack(sizes).sum()
        return total

    def after_step(self) -> None:
        pass


class _Warmup(nn.Module):
    """Faithfulness only, to start the subcomponents summing to the weights."""

    def __init__(self, model: SPDModel) -> None:
        super().__init__()
        self.model = model

    def loss(self, _x: Tensor) -> Tensor:
        return torch.stack([c.faithfulness() for c in self.model.pieces]).sum()

    def after_step(self) -> None:
        pass


@torch.no_grad()
def held_out_error(model: SPDModel, x_ND: Tensor, draws: int = 4) -> tuple[float, float]:
    """Normalised stochastic reconstruction error and mean importance L0 on ``x_ND``."""
    target, _, pres = model.target(x_ND)
    err = 0.0
    for _ in range(draws):
        masks = model.stochastic_masks(pres)
        err += float(model.recon(x_ND, target, dict(enumerate(masks)))) / draws
    l0 = sum(float((p > 0).float().sum(-1).mean()) for p in pres)
    return err, l0


@register_method("spd")
class SPD(Decomposition):
    summary = "stochastic parameter decomposition of the downstream weights (rank-1, masked)"
    access = "downstream_aware"
    directions_kind = "component read vectors"
    Params = SPDParams
    params: SPDParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        pl = plan(ds, self.params.weights)
        train_ND, hold_ND = holdout_split(ds.acts_ND, self.params.holdout_frac, seed)
        coefs = self.params.importance
        coefs = sorted(coefs) if isinstance(coefs, list) else [coefs]
        self.selection: list[dict[str, float]] = []
        fits, logs = [], []
        for coef in coefs:
            model, log = self._fit_one(ds, pl, train_ND, coef, seed)
            logs.append(log)
            err, l0 = held_out_error(model, hold_ND)
            self.selection.append({"importance": coef, "recon": err, "l0": l0})
            fits.append(model)
        self.chosen = choose_from_records(self.selection, "recon", self.params.recon_tol)
        self.model, self.log = fits[self.chosen], logs[self.chosen]
        self.readers = pl.readers
        self.kept: dict[int, Tensor] = {}
        self.reads_IC = [self._merged_reads(i, train_ND) for i in self.readers]
        self.readout = Readout.fit(self.encode(ds.acts_ND), ds.acts_ND)

    def _fit_one(
        self, ds: DownstreamSite, pl: Plan, x_ND: Tensor, coef: float, seed: int
    ) -> tuple[SPDModel, TrainLog]:
        """The fitted model and the log of its main training (after the warm-up)."""
        p = self.params
        model = SPDModel(ds, pl, p, seed)
        with torch.no_grad():
            model.scale = output_scale(model.run(x_ND, {})[0], ds.output_kind)
        label = f"spd @ {ds.name} (importance {coef:g})"
        if p.warmup_steps:
            warm = TrainParams(steps=p.warmup_steps, lr=1e-2, batch_size=p.batch_size)
            train(_Warmup(model), x_ND, warm, seed, f"{label} warm-up")
        model.weights = LossWeights(coef, p.p, p.layerwise, p.faithfulness, p.active_norm * coef)
        log = train(model, x_ND, p, seed, label)
        return model, log

    def training_log(self) -> TrainLog | None:
        return getattr(self, "log", None)

    @torch.no_grad()
    def _merged_reads(self, i: int, x_ND: Tensor) -> Tensor:
        """Read vectors [in, kept] of weight ``i``: one per group of duplicates."""
        comp = self._reader(i)
        g_NC = comp.ci_pre(x_ND).clamp(0, 1)
        keep = duplicates_removed(comp.V_IC, g_NC, comp.U_CO.norm(dim=1), self.params.merge_tol)
        self.kept[i] = keep
        return comp.V_IC.detach()[:, keep].clone()

    def _reader(self, i: int) -> Subcomponents:
        return self.model.pieces[i]

    @torch.no_grad()
    def encode(self, acts_ND: Tensor) -> Tensor:
        zs = []
        for i, V_IC in zip(self.readers, self.reads_IC, strict=True):
            g = self._reader(i).ci_pre(acts_ND).clamp(0, 1)[:, self.kept[i]]
            zs.append(g * (acts_ND @ V_IC) / V_IC.norm(dim=0).clamp_min(EPS))
        return torch.cat(zs, dim=1)

    @torch.no_grad()
    def decode(self, latents_NM: Tensor) -> Tensor:
        return self.readout(latents_NM)

    @torch.no_grad()
    def directions(self) -> Tensor:
        v = torch.cat([V_IC.T for V_IC in self.reads_IC], dim=0)
        return v / v.norm(dim=1, keepdim=True).clamp_min(EPS)


def duplicates_removed(V_IC: Tensor, g_NC: Tensor, size_C: Tensor, tol: float) -> Tensor:
    """Indices of subcomponents to report: one (the largest) per group of duplicates.

    Two subcomponents that are important on some input, read parallel directions
    (|cos| >= ``tol``) and are important on the same inputs (correlation of their
    importances >= ``tol``) are one mechanism split in two; never-important ones stay
    (they never fire, so scoring ignores them).
    """
    C = V_IC.shape[1]
    alive = (g_NC > 0).any(dim=0)
    V = V_IC / V_IC.norm(dim=0, keepdim=True).clamp_min(EPS)
    cos = (V.T @ V).abs()
    g = g_NC - g_NC.mean(dim=0)
    sd = g.norm(dim=0).clamp_min(EPS)
    corr = (g.T @ g) / (sd[:, None] * sd[None, :])
    same = (cos >= tol) & (corr >= tol) & alive[:, None] & alive[None, :]
    group = list(range(C))
    for a in range(C):
        for b in range(a + 1, C):
            if bool(same[a, b]):
                ra, rb = _root(group, a), _root(group, b)
                group[max(ra, rb)] = min(ra, rb)
    best: dict[int, int] = {}
    for c in range(C):
        r = _root(group, c)
        if r not in best or size_C[c] > size_C[best[r]]:
            best[r] = c
    return torch.tensor(sorted(best.values()), dtype=torch.long)


def _root(group: list[int], c: int) -> int:
    while group[c] != c:
        c = group[c]
    return c
