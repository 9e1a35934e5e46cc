"""`composed-tms` — the composed-features toy model of superposition (DESIGN.md §5), trained.

What it models
    Four features in two sets, {x1, x2} and {y1, y2}, squeezed into 2 hidden dimensions by
    the TMS network x_hat = ReLU(W^T W f + b) (``tms.TiedReLUNet``, trained the same way and
    cached the same way). Each sample holds exactly one feature of each set, the four
    (x_i, y_j) pairs equally likely (a uniform joint table), magnitudes U[0, 1]. Options:
    ``corr`` — correlation of the two magnitudes of a sample (with probability |corr| the y
    magnitude copies the x magnitude, or 1 minus it when corr < 0, else it is drawn
    independently: both stay U[0, 1] and their Pearson correlation is exactly corr);
    ``p_onehot`` — the share of samples with only one feature active (uniform over the
    four). Activations are composed, x_i + y_j: the setting where sparse autoencoders have
    been reported to learn the four composed directions instead of the features.

Ground truth at ``hidden`` (why it is the truth)
    As for ``tms``: h = sum_i f_i W_i exactly, and output i reads feature i back through
    W_i, so the normalised columns of W are the features the network writes and reads;
    activation f_i |W_i|. Groups: the x set is group 0, the y set group 1 (a latent along a
    normalised x_i + y_j is what the ``composition`` score counts). Because x1 and x2
    never co-occur (nor y1 and y2), the loss-optimal network can place each pair on one
    line with opposite signs and the two lines orthogonal, which reproduces every sample
    exactly with b = 0. Training finds this (measured below), so ablating one feature
    silences exactly its own output.

The target check (raises ``TrainingTargetMissed``)
    * Loss bound. Zero loss is reachable (the construction above), so the evaluation loss
      on 65 536 fresh samples must be <= 5 % of L_triv = q/3 - q^2/4, the loss of
      predicting each feature by its mean (q = (1 - p_onehot)/2 + p_onehot/4 is a
      feature's firing rate).
    * Construction: as for ``tms``, each kept feature alone at 1 is read back at >= 0.25
      and more strongly than by any other output.
    Measured at the defaults (seeds 0-2): see the project report.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.registry import register_toy
from decompbench.toys.tms import TiedTMS
from decompbench.toys.trained import ToyTrainParams

NAMES = ("x1", "x2", "y1", "y2")
GROUPS = (0, 0, 1, 1)
LOSS_FRACTION = 0.05


class ComposedTMSParams(ToyTrainParams):
    corr: float = Field(
        default=0.0, ge=-1, le=1, description="correlation of the x and y magnitudes"
    )
    p_onehot: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="probability that a sample holds a single feature instead of one per set",
    )


def correlated_uniform(n: int, corr: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two U[0, 1] magnitudes with Pearson correlation ``corr`` (a copy-or-fresh mixture)."""
    mx = torch.rand(n, generator=g)
    fresh = torch.rand(n, generator=g)
    copy = torch.rand(n, generator=g) < abs(corr)
    tied = mx if corr >= 0 else 1 - mx
    return mx, torch.where(copy, tied, fresh)


def composed_inputs(n: int, corr: float, p_onehot: float, g: torch.Generator) -> Tensor:
    """[n, 4] in the order x1, x2, y1, y2: one of each set, or one of all four."""
    which_x = torch.randint(2, (n,), generator=g)
    which_y = torch.randint(2, (n,), generator=g)
    mx, my = correlated_uniform(n, corr, g)
    f_N4 = torch.zeros(n, 4)
    rows = torch.arange(n)
    f_N4[rows, which_x] = mx
    f_N4[rows, 2 + which_y] = my
    onehot = torch.rand(n, generator=g) < p_onehot
    single_N4 = torch.nn.functional.one_hot(torch.randint(4, (n,), generator=g), 4) * mx[:, None]
    return torch.where(onehot[:, None], single_N4, f_N4)


@register_toy("composed-tms")
class ComposedTMS(TiedTMS):
    summary = "TMS on 4 features {x1,x2}x{y1,y2} in 2 dims, one of each set per sample, trained"
    Params = ComposedTMSParams
    params: ComposedTMSParams
    tag = "composed-tms"

    def shape(self) -> tuple[int, int, bool]:
        return 4, 2, False

    def draw(self, n: int, g: torch.Generator) -> Tensor:
        return composed_inputs(n, self.params.corr, self.params.p_onehot, g)

    def feature_names(self) -> tuple[str, ...]:
        return NAMES

    def feature_groups(self) -> tuple[int, ...] | None:
        return GROUPS

    def loss_bound(self) -> float:
        q = (1 - self.params.p_onehot) / 2 + self.params.p_onehot / 4
        return LOSS_FRACTION * (q / 3 - q * q / 4)
