"""`sae-e2e-ds` — `sae-e2e` plus reconstruction of the downstream layers' activations.

    loss = D(output(x_hat), output(x))
           + ds_coef * sum_l ||a_l(x_hat) - a_l(x)||^2 / Var(a_l) + sparsity

where a_l are the outputs of every ``nn.Linear`` in the network after the site (the
pre-activations of each later layer). Braun et al. (2024) add this term so that the
reconstruction also follows the path the original activations take through the later
layers, not only the final output. Everything else is `sae-e2e`'s (leaky ReLU backward,
L1/TopK, selection rule, decoder rows as directions).
"""

from __future__ import annotations

from pydantic import Field

from decompbench.methods.sae_e2e import SAEE2E, E2EParams
from decompbench.registry import register_method


class E2EDSParams(E2EParams):
    ds_coef: float = Field(default=1.0, ge=0, description="weight of the downstream-layer term")


@register_method("sae-e2e-ds")
class SAEE2EDS(SAEE2E):
    summary = "end-to-end SAE plus reconstruction of the downstream layers' activations"
    Params = E2EDSParams
    params: E2EDSParams
