"""Every registered method, on tiny data: the shared contract, seeding and twin identity."""

from __future__ import annotations

import pytest
import torch

from decompbench import metrics as M
from decompbench.bench.runner import site_data, site_view
from decompbench.methods.base import build_method
from decompbench.toys.base import ActivationSite, DownstreamSite, build_toy
from tests.conftest import fast_params

TWIN = {"values": [3, 3], "d_model": 8}


def fitted(name: str, use: str, seed: int = 0):
    toy = build_toy("composed", {**TWIN, "use": use}, seed=seed)
    data = site_data(toy, "hidden", 2048, 512, seed)
    method = build_method(name, fast_params(name))
    method.fit(site_view(toy, data, method), seed)
    return method, data


def test_contract_shapes_and_unit_directions(method_name: str) -> None:
    method, data = fitted(method_name, "factored")
    Z = method.encode(data.eval_ND)
    X = method.decode(Z)
    D = method.directions()
    assert Z.shape[0] == data.eval_ND.shape[0] and X.shape == data.eval_ND.shape
    assert D.shape == (Z.shape[1], data.eval_ND.shape[1])
    assert torch.allclose(D.norm(dim=1), torch.ones(D.shape[0]), atol=1e-4)
    assert M.fvu(data.eval_ND, X) < 0.5


def test_same_seed_same_dictionary(method_name: str) -> None:
    a, _ = fitted(method_name, "factored", seed=1)
    b, _ = fitted(method_name, "factored", seed=1)
    assert torch.equal(a.directions(), b.directions())


def test_activation_only_methods_learn_identical_dictionaries_on_both_twins(
    method_name: str,
) -> None:
    """The proof that activation-only methods never look downstream."""
    f, df = fitted(method_name, "factored")
    if f.access != "activation_only":
        pytest.skip("downstream-aware methods may differ between twins")
    c, dc = fitted(method_name, "composed")
    assert torch.equal(df.train_ND, dc.train_ND)
    assert torch.equal(f.directions(), c.directions())
    zf, zc = f.encode(df.eval_ND), c.encode(dc.eval_ND)
    assert torch.equal(zf, zc)
    assert M.fvu(df.eval_ND, f.decode(zf)) == M.fvu(dc.eval_ND, c.decode(zc))
    assert M.l0(zf) == M.l0(zc)


def test_site_view_hides_the_downstream_from_activation_only_methods(method_name: str) -> None:
    toy = build_toy("composed", {**TWIN, "use": "factored"}, seed=0)
    data = site_data(toy, "hidden", 64, 64, 0)
    method = build_method(method_name, fast_params(method_name))
    view = site_view(toy, data, method)
    if method.access == "activation_only":
        assert type(view) is ActivationSite
        assert not hasattr(view, "downstream")
    else:
        assert isinstance(view, DownstreamSite)


def test_pca_reconstructs_exactly_at_full_rank() -> None:
    method, data = fitted("pca", "factored")
    assert M.fvu(data.eval_ND, method.decode(method.encode(data.eval_ND))) < 1e-10
    assert method.directions().shape[0] == 4  # 3 + 3 one-hot values, centred: rank 2 + 2


def test_topk_sae_recovers_a_planted_one_sparse_dictionary() -> None:
    """Samples are c * e_i for 4 orthonormal directions: one latent per direction suffices."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    G = q[:4]
    which = torch.randint(4, (4096,), generator=g)
    X = torch.rand(4096, 1, generator=g) * G[which]
    method = build_method("sae-topk", {"width": 4, "k": 1, "steps": 1500, "lr": 1e-2})
    method.fit(ActivationSite("x", X), seed=0)
    assert M.mcc(G, method.directions()) > 0.95


def test_topk_rejects_k_above_width() -> None:
    from decompbench.errors import UserError

    with pytest.raises(UserError, match="exceeds width"):
        build_method("sae-topk", {"width": 4, "k": 5})
