"""`superposed-circuits` — DESIGN.md §1 example 4b, scaled down: many small circuits whose
neuron subspaces overlap, written into a residual stream narrower than the MLP.

What it models
    A residual stream of ``d_resid`` (D, default 6) dimensions holds I = 2D sparse input
    features as D antipodal pairs (features 2j, 2j+1 along +q_j, -q_j; q orthonormal,
    random), each active with probability ``p_active`` with value x ~ U[0, 1], the two of
    a pair never together. Site ``resid`` holds r = sum_a x_a e_a.

    An MLP of N = I K neurons (K = ``neurons_per_input``, default 4) computes
    F = 2N small functions and writes them into the residual stream:

        neuron (a, m) = ReLU(e_a . r - t_m),  t_m = (m + 1) / (K + 1),  m = 0..K-1
        function (a, j), j = 0..2K-1, reads s = ``neurons_per_function`` (default 3)
            of input a's neurons:  f = c . h,  c = e_m + sigma (e_{m+1} + ... + e_{m+s-1})
            (neuron indices mod K, m = j // 2, sigma = +1 for even j, -1 for odd j;
            s < K keeps the 2K functions distinct)
        write = sum_i f_i o_i = W_out h,   W_out = O C    (o_i random unit vectors in R^D)

    The model's output is the write (D dims). Every read is exact: e_a . r = x_a when a is
    active and <= 0 when its partner is, so neuron (a, m) = ReLU(x_a - t_m) and f_i is an
    exact piecewise-linear function of its input (tested). The knots are strictly
    positive, so an absent input leaves its neurons silent even under float round-off.

Scale (ratios of the example kept)
    Defaults: I = 12 inputs, N = 48 neurons, F = 96 functions, D = 6. Twice as many
    functions as neurons; each function uses a fixed handful (3) of neurons; each neuron
    serves 2s = 6 functions; the residual stream (6) is far narrower than the neuron
    count (48). (The example has hundreds of circuits; this is the same shape, small.)

Ground truth (why it is the truth; what had to be chosen)
    * ``resid``: the input directions e_a, activations x_a; all model features (each is
      read by its K neurons and nothing else reads it).
    * ``neurons``: one feature per function, direction c_i / |c_i|, activation f_i = c_i . h
      (the function's value). All are model features; circuits of the same input overlap
      in the neurons they use, and F = 2N features live in N dimensions.
      This is a choice forced by the construction: the model's output depends on h only
      through W_out h, and W_out = O C has rank <= D < N, so W_out alone does not
      determine the c_i (moving h inside W_out's null space changes the f_i but not the
      output; tested). The f_i are the units the network was built from: W_out is the
      sum of one rank-one term o_i c_iᵀ per function, each term is needed only when its
      input is active, and the functions are exact. A method that recovers them recovers
      the construction's circuits; the output alone admits other rank-one splits.
    * Edges: (resid, a, neurons, i) for the 2K functions i of each input a.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from decompbench.config import StrictModel
from decompbench.registry import register_toy
from decompbench.seeding import generator
from decompbench.toys.base import Batch, GroundTruth, Toy


class SuperposedCircuitsParams(StrictModel):
    d_resid: int = Field(default=6, ge=1, description="residual dimension the functions write into")
    neurons_per_input: int = Field(default=4, ge=3, description="neurons per input (>= 3)")
    neurons_per_function: int = Field(default=3, ge=2, description="neurons each function reads")
    p_active: float = Field(
        default=0.1, gt=0, le=1, description="probability that an input is active"
    )

    @model_validator(mode="after")
    def _check(self) -> SuperposedCircuitsParams:
        if self.neurons_per_function >= self.neurons_per_input:
            raise ValueError(
                f"neurons_per_function = {self.neurons_per_function} must be below "
                f"neurons_per_input = {self.neurons_per_input} (else functions repeat)"
            )
        return self


def knots(k: int) -> Tensor:
    """t_m = (m + 1) / (k + 1): the ramps' thresholds."""
    return (torch.arange(k) + 1.0) / (k + 1)


def function_weights(k: int, s: int) -> Tensor:
    """[2k, k] c for the 2k functions of one input (rows), over its k neurons."""
    c = torch.zeros(2 * k, k)
    for j in range(2 * k):
        m, sigma = j // 2, 1.0 if j % 2 == 0 else -1.0
        c[j, m] = 1.0
        for step in range(1, s):
            c[j, (m + step) % k] = sigma
    return c


@register_toy("superposed-circuits")
class SuperposedCircuits(Toy):
    summary = "2N exact small functions on N shared neurons, written into a narrow residual"
    Params = SuperposedCircuitsParams
    params: SuperposedCircuitsParams
    embed_ID: Tensor  # buffer: input directions in the residual stream
    out_FD: Tensor  # buffer: each function's output direction o_i
    c_FN: Tensor  # buffer: each function's weights over the neurons

    def __init__(self, params: SuperposedCircuitsParams, seed: int) -> None:
        super().__init__(params, seed)
        p = params
        d, k = p.d_resid, p.neurons_per_input
        self.n_inputs, self.n_neurons = 2 * d, 2 * d * k
        self.n_functions = 2 * self.n_neurons
        g = generator(seed, "superposed-circuits/directions")
        q_DD, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        sign = torch.tensor([1.0, -1.0]).repeat(d)
        self.register_buffer("embed_ID", q_DD.T.repeat_interleave(2, dim=0) * sign[:, None])
        out_FD = torch.randn(self.n_functions, d, generator=g)
        self.register_buffer("out_FD", out_FD / out_FD.norm(dim=1, keepdim=True))
        self.register_buffer(
            "c_FN", torch.block_diag(*[function_weights(k, p.neurons_per_function)] * self.n_inputs)
        )
        self.mlp_in = nn.Linear(d, self.n_neurons)
        self.mlp_in.weight.data = self.embed_ID.repeat_interleave(k, dim=0).clone()
        self.mlp_in.bias.data = -knots(k).repeat(self.n_inputs)
        self.mlp_out = nn.Linear(self.n_neurons, d, bias=False)
        self.mlp_out.weight.data = self.out_FD.T @ self.c_FN

    @property
    def sites(self) -> tuple[str, ...]:
        return ("resid", "neurons")

    def input_of_function(self, i: int) -> int:
        return i // (2 * self.params.neurons_per_input)

    def sample(self, n: int, seed: int) -> Batch:
        g = generator(seed, "superposed-circuits/sample")
        d = self.params.d_resid
        active = torch.rand(n, d, 2, generator=g) < self.params.p_active
        keep_odd = torch.rand(n, d, generator=g) < 0.5
        both = active.all(dim=2)
        active[..., 0] &= ~(both & keep_odd)
        active[..., 1] &= ~(both & ~keep_odd)
        x_NI = torch.rand(n, self.n_inputs, generator=g) * active.flatten(1)
        h = self.acts("neurons", x_NI)
        return Batch(inputs=x_NI, features={"resid": x_NI.clone(), "neurons": h @ self.c_FN.T})

    def acts(self, site: str, inputs: Tensor) -> Tensor:
        self.check_site(site)
        r = inputs @ self.embed_ID
        return r if site == "resid" else torch.relu(self.mlp_in(r))

    def downstream(self, site: str) -> nn.Module:
        self.check_site(site)
        if site == "resid":
            return nn.Sequential(self.mlp_in, nn.ReLU(), self.mlp_out)
        return self.mlp_out

    def to_next_site(self, site: str) -> nn.Module:
        """``resid`` -> ``neurons`` is the MLP's first half; ``neurons`` is the last site."""
        self.check_site(site)
        return nn.Sequential(self.mlp_in, nn.ReLU()) if site == "resid" else self.mlp_out

    def forward(self, inputs: Tensor) -> Tensor:
        return self.mlp_out(self.acts("neurons", inputs))

    def ground_truth(self, site: str) -> GroundTruth:
        self.check_site(site)
        if site == "resid":
            names = tuple(f"x{a}" for a in range(self.n_inputs))
            return GroundTruth(self.embed_ID.clone(), names, (True,) * len(names))
        dirs = self.c_FN / self.c_FN.norm(dim=1, keepdim=True)
        per = 2 * self.params.neurons_per_input
        names = tuple(f"f{i // per}.{i % per}" for i in range(self.n_functions))
        return GroundTruth(dirs, names, (True,) * len(names))

    def edges(self) -> list[tuple[str, int, str, int]]:
        return [("resid", self.input_of_function(i), "neurons", i) for i in range(self.n_functions)]
