"""`circuit` — a three-layer toy for cross-layer work: Boolean gates on superposed features.

What it models
    ``n_features`` (default 12) sparse input features in ``d_l0`` (default 8) dimensions
    at site ``l0``: n_pairs = n_features - d_l0 antipodal pairs (features 2j and 2j+1
    have directions +q_j and -q_j) plus single features on the remaining axes q, with
    q a random orthonormal basis. Each feature is active with probability ``p_active``
    and magnitude m ~ U[lo, hi] (``magnitude``); the two features of a pair are never
    active together (if both are drawn, one is dropped at random). This is the
    superposition of the toy model of superposition (two features per axis), and it can
    be read exactly: ReLU(e_i . h) = m_i, because the only feature with a component
    along e_i other than i itself is its partner, which then is absent.

    The Boolean block computes known gates of the inputs (``gates``: "0&2" is AND,
    "4|9" is OR, of any number of inputs) and writes each gate's bit along an
    orthonormal direction u_g of site ``l1`` (``d_l1`` dims); the readout returns the bits.

        detect:  d = ReLU(E h)                      (one unit per input feature; d_i = m_i)
        gate g:  b_g = clamp(gain_g (sum_{i in g} d_i - theta_g), 0, 1)
        l1 = sum_g b_g u_g,   output = U l1 = b

    clamp(z, 0, 1) = ReLU(z) - ReLU(z - 1). Thresholds are derived from the magnitude
    range so every gate is exact: an AND of k inputs sums to >= k lo when true and
    <= (k-1) hi when false, so theta = ((k-1) hi + k lo) / 2, which exists only when
    (k-1) hi < k lo (otherwise the parameters are rejected; compared exactly on the
    decimals given, ``decompbench.exact``); an OR sums to >= lo when true
    and to 0 when false, so theta = lo / 2. The gain 2 / (true minimum - theta) sends the
    true minimum to 2 and the false maximum to -2 before the clamp, so a true gate
    outputs exactly 1 and a false one exactly 0, with room to spare for float round-off.

Ground truth (why it is the truth)
    * ``l0``: the input directions e_i, activations m_i. Model features are the inputs
      some gate reads; the others are data-only: removing them changes no output (their
      detector units feed no gate). Because every gate is exact over every allowed
      input, ablating input i changes exactly the gates that read it (tested).
    * ``l1``: the gate directions u_g, activations b_g in {0, 1}, all model features.
    * Edges: (l0, i, l1, g) for every input i of gate g, i.e. feature b_g is computed
      from feature m_i.
"""

from __future__ import annotations

import re
from fractions import Fraction

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import FloatPair, StrictModel
from decompbench.exact import decimal, show
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy

GATE_RE = re.compile(r"^\d+([&|]\d+)+$")


def parse_gate(text: str) -> tuple[str, tuple[int, ...]]:
    """ "0&2&5" -> ("and", (0, 2, 5)); "1|3" -> ("or", (1, 3)). One operator per gate."""
    spec = text.replace(" ", "")
    if not GATE_RE.match(spec) or ("&" in spec and "|" in spec):
        raise ValueError(f"gate '{text}' must look like '0&2' or '1|3|4' (one operator)")
    op = "and" if "&" in spec else "or"
    inputs = tuple(int(i) for i in re.split(r"[&|]", spec))
    if len(set(inputs)) != len(inputs):
        raise ValueError(f"gate '{text}' repeats an input")
    return op, inputs


def pair_of(i: int, n_pairs: int) -> int | None:
    """The index of i's antipodal partner, or None for a single feature."""
    return (i ^ 1) if i < 2 * n_pairs else None


class CircuitParams(StrictModel):
    n_features: int = Field(default=12, ge=2, description="sparse input features")
    d_l0: int = Field(default=8, ge=1, description="dimension of the input site l0")
    d_l1: int = Field(default=8, ge=1, description="dimension of the gate site l1")
    gates: list[str] = Field(
        default=["0&2", "1&8", "4|9", "3|10", "2&9"],
        min_length=1,
        description="Boolean gates of inputs: '0&2' is AND, '4|9' is OR",
    )
    p_active: float = Field(
        default=0.25, gt=0, le=1, description="probability that an input pair is active"
    )
    magnitude: FloatPair = Field(
        default=(0.6, 1.0), description="[lo, hi] of an active feature's magnitude U[lo, hi]"
    )

    @model_validator(mode="after")
    def _check(self) -> CircuitParams:
        if not self.d_l0 <= self.n_features <= 2 * self.d_l0:
            raise ValueError(
                f"need d_l0 <= n_features <= 2 * d_l0 (at most two features per axis), got "
                f"{self.n_features} features in {self.d_l0} dims"
            )
        if len(self.gates) > self.d_l1:
            raise ValueError(f"{len(self.gates)} gates do not fit in d_l1 = {self.d_l1}")
        lo, hi = self.magnitude
        if not 0 < lo <= hi:
            raise ValueError(f"magnitude must satisfy 0 < lo <= hi, got [{lo}, {hi}]")
        n_pairs = self.n_features - self.d_l0
        for text in self.gates:
            op, inputs = parse_gate(text)
            if max(inputs) >= self.n_features:
                raise ValueError(f"gate '{text}' reads a feature >= n_features")
            k = len(inputs)
            if op == "and" and any(pair_of(i, n_pairs) in inputs for i in inputs):
                raise ValueError(f"gate '{text}' ANDs an antipodal pair, which is never true")
            true_min, false_max = gate_bounds(op, k, lo, hi)
            if not false_max < true_min:
                raise ValueError(
                    f"magnitude [{lo}, {hi}] admits no exact threshold for '{text}': "
                    f"need (k-1)*hi < k*lo exactly, got {show(false_max)} vs {show(true_min)}"
                )
        return self


def gate_bounds(op: str, k: int, lo: float, hi: float) -> tuple[Fraction, Fraction]:
    """(true minimum, false maximum) of a gate's input sum, exact on the decimals given."""
    if op == "and":
        return k * decimal(lo), (k - 1) * decimal(hi)
    return decimal(lo), Fraction(0)


def exact_gate(op: str, k: int, lo: float, hi: float) -> tuple[Fraction, Fraction]:
    """(theta, gain) as exact fractions; see ``gate_threshold``."""
    true_min, false_max = gate_bounds(op, k, lo, hi)
    theta = (true_min + false_max) / 2
    return theta, 2 / (true_min - theta)


def gate_threshold(op: str, k: int, lo: float, hi: float) -> tuple[float, float]:
    """(theta, gain): theta halfway between the false maximum and the true minimum, and a
    gain that maps them to +2 and -2 (saturating the clamp with margin). Computed exactly
    (``decompbench.exact``) and rounded once."""
    theta, gain = exact_gate(op, k, lo, hi)
    return float(theta), float(gain)


@register_toy("circuit")
class Circuit(Toy):
    summary = "superposed sparse inputs -> exact AND/OR gates -> readout; true cross-layer edges"
    Params = CircuitParams
    params: CircuitParams
    dirs_l0_ID: Tensor  # buffer: input feature directions at l0
    dirs_l1_GD: Tensor  # buffer: gate directions at l1

    def __init__(self, params: CircuitParams, seed: int) -> None:
        super().__init__(params, seed)
        p = params
        self.n_pairs = p.n_features - p.d_l0
        self.parsed = [parse_gate(text) for text in p.gates]
        g = generator(seed, "circuit/directions")
        q0, _ = torch.linalg.qr(torch.randn(p.d_l0, p.d_l0, generator=g))
        q1, _ = torch.linalg.qr(torch.randn(p.d_l1, p.d_l1, generator=g))
        axis = [i // 2 if i < 2 * self.n_pairs else i - self.n_pairs for i in range(p.n_features)]
        odd_partner = [i < 2 * self.n_pairs and i % 2 == 1 for i in range(p.n_features)]
        sign = torch.tensor([-1.0 if odd else 1.0 for odd in odd_partner])
        self.register_buffer("dirs_l0_ID", q0.T[axis] * sign[:, None])
        self.register_buffer("dirs_l1_GD", q1.T[: len(self.parsed)].clone())
        self.block = self._make_block()
        self.readout = nn.Linear(p.d_l1, len(self.parsed), bias=False)
        self.readout.weight.data = self.dirs_l1_GD.clone()

    @property
    def sites(self) -> tuple[str, ...]:
        return ("l0", "l1")

    def _make_block(self) -> nn.Sequential:
        """l0 -> l1: detectors, gates, and the write into l1."""
        p = self.params
        detect = nn.Linear(p.d_l0, p.n_features, bias=False)
        detect.weight.data = self.dirs_l0_ID.clone()
        gate = nn.Linear(p.n_features, len(self.parsed))
        gate.weight.data.zero_()
        for g, (op, inputs) in enumerate(self.parsed):
            theta, gain = exact_gate(op, len(inputs), *p.magnitude)
            gate.weight.data[g, list(inputs)] = float(gain)
            gate.bias.data[g] = float(-gain * theta)
        write = nn.Linear(len(self.parsed), p.d_l1, bias=False)
        write.weight.data = self.dirs_l1_GD.T.clone()
        return nn.Sequential(detect, nn.ReLU(), gate, nn.Hardtanh(0.0, 1.0), write)

    def sample(self, n: int, seed: int) -> Batch:
        p = self.params
        g = generator(seed, "circuit/sample")
        active = torch.rand(n, p.n_features, generator=g) < p.p_active
        mags = p.magnitude[0] + (p.magnitude[1] - p.magnitude[0]) * torch.rand(
            n, p.n_features, generator=g
        )
        drop_odd = torch.rand(n, self.n_pairs, generator=g) < 0.5
        both = active[:, 0 : 2 * self.n_pairs : 2] & active[:, 1 : 2 * self.n_pairs : 2]
        active[:, 1 : 2 * self.n_pairs : 2] &= ~(both & drop_odd)
        active[:, 0 : 2 * self.n_pairs : 2] &= ~(both & ~drop_odd)
        inputs_NI = mags * active
        return Batch(
            inputs=inputs_NI,
            features={"l0": inputs_NI.clone(), "l1": self.gate_bits(inputs_NI > 0)},
        )

    def gate_bits(self, active_NI: Tensor) -> Tensor:
        """[n, gates] the Boolean value of each gate for the given active inputs."""
        cols = []
        for op, inputs in self.parsed:
            sub = active_NI[:, list(inputs)]
            cols.append(sub.all(dim=1) if op == "and" else sub.any(dim=1))
        return torch.stack(cols, dim=1).float()

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        h0 = inputs @ self.dirs_l0_ID
        return h0 if site == "l0" else self.block(h0)

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        return nn.Sequential(self.block, self.readout) if site == "l0" else self.readout

    def next_layer(self, site: str) -> nn.Module:
        self.check_site(site)
        return self.block if site == "l0" else self.readout

    def forward(self, inputs: Tensor) -> Tensor:
        return self.readout(self.block(inputs @ self.dirs_l0_ID))

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        if site == "l1":
            names = tuple(self.params.gates)
            return GroundTruth(self.dirs_l1_GD.clone(), names, (True,) * len(names))
        read = {i for _, inputs in self.parsed for i in inputs}
        n = self.params.n_features
        names = tuple(f"x{i}" for i in range(n))
        return GroundTruth(self.dirs_l0_ID.clone(), names, tuple(i in read for i in range(n)))

    def edges(self) -> list[tuple[str, int, str, int]]:
        return [("l0", i, "l1", g) for g, (_, inputs) in enumerate(self.parsed) for i in inputs]
