"""`lib` — a local-interaction-style basis (after Bushnaq et al. 2024).

1. Centre and whiten the activations: y = S^-1/2 E^T (x - mu) with Cov = E S E^T
   (directions of zero variance dropped). In whitened coordinates every direction the
   data moves along has the same variance, so data statistics no longer pick the basis.
2. Rotate onto the right singular vectors R of the Jacobians to the next layer,
   stacked over the data, J~_n = J_n E S^1/2 (equivalently the eigenvectors of the
   data average of J~_n^T J~_n): the directions the next layer is most sensitive to.
3. Scale each coordinate by its singular value lambda_i^1/2 (its downstream importance)
   and drop coordinates the next layer ignores (lambda below ``rel_tol`` of the largest).

Latents: f = Lambda^1/2 R^T y. Directions: the basis vectors in activation space,
E S^1/2 r_i (the decoder of f), normalised; decode maps f back exactly on the kept span.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition
from decompbench.methods.downstream import require_downstream
from decompbench.registry import register_method
from decompbench.seeding import generator
from decompbench.toys.base import ActivationSite, DownstreamSite

ROWS_PER_CHUNK = 2**15  # chunk rows x output size per batch of products


class LIBParams(StrictModel):
    width: int | None = Field(default=None, ge=1, description="keep the top width; default all")
    rel_tol: float = Field(default=1e-4, gt=0, description="relative variance / importance kept")
    max_samples: int = Field(default=4096, ge=1, description="samples for the Jacobian average")


def jacobian_gram(site: DownstreamSite, x_ND: Tensor, unwhiten_DR: Tensor) -> Tensor:
    """[r, r] mean over samples of J~^T J~, J~ = d next_layer / d x at x_n times unwhiten.

    The next layer acts row by row, so every sample's J~ comes from products on whole
    chunks: forward mode pushes each of the r columns of ``unwhiten_DR`` through on every
    row, reverse mode pulls back each of the O output coordinates, whichever is fewer.
    """
    n_out = site.next_output(x_ND[:1]).reshape(-1).numel()
    gram = torch.zeros(unwhiten_DR.shape[1], unwhiten_DR.shape[1], dtype=torch.float64)
    chunk = max(16, ROWS_PER_CHUNK // min(n_out, unwhiten_DR.shape[1]))
    for start in range(0, x_ND.shape[0], chunk):
        Jw_OBR = chunk_jacobian(site, x_ND[start : start + chunk], unwhiten_DR, n_out)
        gram += torch.einsum("obr,obs->rs", Jw_OBR, Jw_OBR)
    return gram / x_ND.shape[0]


def chunk_jacobian(site: DownstreamSite, x_BD: Tensor, unwhiten_DR: Tensor, n_out: int) -> Tensor:
    """[O, B, r]: J~ of every row of the chunk (forward mode when r < O, else reverse)."""

    def f(x: Tensor) -> Tensor:
        return site.next_output(x).reshape(len(x), -1)

    B, R = len(x_BD), unwhiten_DR.shape[1]
    if n_out > R:  # fewer tangents than outputs: forward mode
        tangents_RBD = unwhiten_DR.T.to(x_BD.dtype)[:, None, :].expand(R, B, -1)
        pushed_RBO = torch.func.vmap(lambda t: torch.func.jvp(f, (x_BD,), (t,))[1])(tangents_RBD)
        return pushed_RBO.double().transpose(0, 2)
    vjp_fn = torch.func.vjp(f, x_BD)[1]
    cot_OBO = torch.eye(n_out, dtype=x_BD.dtype)[:, None, :].expand(n_out, B, n_out)
    (J_OBD,) = torch.func.vmap(vjp_fn)(cot_OBO)
    return J_OBD.double() @ unwhiten_DR


@register_method("lib")
class LIB(Decomposition):
    summary = "whitened activations rotated onto the next layer's Jacobian singular vectors"
    access = "downstream_aware"
    directions_kind = "basis vectors in activation space (decoder)"
    Params = LIBParams
    params: LIBParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        ds = require_downstream(site, self.name)
        x = ds.acts_ND.double()
        self.mean_D = x.mean(dim=0)
        s, E = torch.linalg.eigh(torch.cov((x - self.mean_D).T, correction=0).reshape(ds.d, ds.d))
        keep = s > self.params.rel_tol * s.max().clamp_min(1e-300)
        if not bool(keep.any()):
            raise UserError(f"lib: the activations at site '{ds.name}' do not vary")
        s, E = s[keep], E[:, keep]
        unwhiten_DR = E * s.sqrt()
        perm = torch.randperm(x.shape[0], generator=generator(seed, "method/lib/subsample"))
        sub = ds.acts_ND[perm[: self.params.max_samples]]
        lam, R = torch.linalg.eigh(jacobian_gram(ds, sub, unwhiten_DR))
        lam, R = lam.flip(0), R.flip(1)
        used = lam > self.params.rel_tol * lam.max().clamp_min(1e-300)
        if not bool(used.any()):
            raise UserError(f"lib: the next layer does not respond to site '{ds.name}'")
        m = int(used.sum()) if self.params.width is None else min(self.params.width, len(lam))
        lam, R = lam[:m].clamp_min(1e-300), R[:, :m]
        self.encoder_DM = (E / s.sqrt()) @ R * lam.sqrt()  # x - mu -> f
        self.decoder_MD = (unwhiten_DR @ R / lam.sqrt()).T  # f -> x - mu

    def encode(self, acts_ND: Tensor) -> Tensor:
        return ((acts_ND.double() - self.mean_D) @ self.encoder_DM).to(acts_ND.dtype)

    def decode(self, latents_NM: Tensor) -> Tensor:
        return (latents_NM.double() @ self.decoder_MD + self.mean_D).to(latents_NM.dtype)

    def directions(self) -> Tensor:
        d = self.decoder_MD
        return (d / d.norm(dim=1, keepdim=True).clamp_min(1e-300)).float()
