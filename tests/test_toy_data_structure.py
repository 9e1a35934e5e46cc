"""`data-structure`: the curve lies where the model does not read; the twins agree bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from decompbench.errors import UserError
from decompbench.toys.base import build_toy
from decompbench.toys.data_structure import DataStructure


def twins(**params: object) -> tuple[DataStructure, DataStructure]:
    a = build_toy("data-structure", {**params, "use": "coordinates"}, seed=2)
    b = build_toy("data-structure", {**params, "use": "curve"}, seed=2)
    assert isinstance(a, DataStructure) and isinstance(b, DataStructure)
    return a, b


def test_twins_have_identical_activations_bit_for_bit() -> None:
    a, b = twins()
    ba, bb = a.sample(1000, seed=4), b.sample(1000, seed=4)
    assert torch.equal(a.acts("hidden", ba.inputs), b.acts("hidden", bb.inputs))


@pytest.mark.parametrize("use", ["coordinates", "curve"])
def test_features_reconstruct_the_activations_and_directions_are_orthonormal(use: str) -> None:
    toy = build_toy("data-structure", {"use": use}, seed=0)
    b = toy.sample(500, seed=1)
    gt = toy.ground_truth("hidden")
    k = gt.directions_KD.shape[0]
    assert torch.allclose(gt.directions_KD @ gt.directions_KD.T, torch.eye(k), atol=1e-5)
    h = toy.acts("hidden", b.inputs)
    assert torch.allclose(b.features["hidden"] @ gt.directions_KD, h, atol=1e-5)


def test_moving_along_data_only_directions_leaves_every_output_unchanged() -> None:
    a, _ = twins()
    h = a.acts("hidden", a.sample(300, seed=0).inputs)
    gt = a.ground_truth("hidden")
    data_only = gt.directions_KD[~gt.model_mask]
    assert data_only.shape[0] == 6  # 3 unread frequencies x (cos, sin)
    out = a.downstream("hidden")(h)
    for v in data_only:
        assert torch.equal(a.downstream("hidden")(h + 5.0 * v), out)


def test_each_coordinate_moves_only_its_own_output_on_every_sample() -> None:
    a, _ = twins()
    h = a.acts("hidden", a.sample(300, seed=1).inputs)
    gt = a.ground_truth("hidden")
    down = a.downstream("hidden")
    out = down(h)
    for i, e in enumerate(gt.directions_KD[gt.model_mask]):
        delta = down(h + 0.1 * e) - out
        assert (delta[:, i].abs() >= 0.05 - 1e-6).all()  # LeakyReLU slope >= 0.5
        others = [j for j in range(out.shape[1]) if j != i]
        assert delta[:, others].abs().max() == 0


def test_curve_twin_reads_every_fourier_axis_and_nothing_else() -> None:
    _, b = twins()
    h = b.acts("hidden", b.sample(200, seed=3).inputs)
    down = b.downstream("hidden")
    out = down(h)
    dirs = b.ground_truth("hidden").directions_KD
    for i, v in enumerate(dirs):
        delta = down(h + 0.1 * v) - out
        assert (delta[:, i].abs() > 0.04).all()
        assert torch.cat([delta[:, :i], delta[:, i + 1 :]], 1).abs().max() < 1e-6
    outside = torch.linalg.svd(dirs, full_matrices=True).Vh[dirs.shape[0] :]
    for w in outside:  # dims the curve never visits: unread
        assert torch.allclose(down(h + w), out, atol=1e-6)


def test_the_curves_largest_variance_is_unread_and_its_axes_differ_from_coordinates() -> None:
    a, _ = twins()
    t = torch.arange(256, dtype=torch.float64) * (2 * math.pi / 256)  # exact for these freqs
    h = a.component_coefs(t).double() @ a.fourier_CD.double()
    cov = h.T @ h / len(t)  # the curve's mean is 0
    top = torch.linalg.eigh(cov).eigenvectors[:, -1]
    assert top[: a.params.n_read].norm() < 0.05  # the top principal axis lies in U
    fourier = a.fourier_CD.double()
    assert fourier.abs().max() < 0.99  # no Fourier axis is a coordinate axis
    # The Fourier axes are the covariance's principal axes (what PCA latches onto).
    for v in fourier:
        cv = cov @ v
        residual = cv - (v @ cv) * v
        assert residual.norm() < 1e-5 * cv.norm()


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"freqs_read": [1, 2], "freqs_unread": [2, 3]}, "distinct"),
        ({"freqs_read": [1, 2, 4]}, "n_read"),
        ({"freqs_unread": [3, 4, 5, 6]}, "too small"),
        ({"n_read": 12}, "exceeds d_model"),
    ],
)
def test_invalid_params_are_rejected_with_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        build_toy("data-structure", params, seed=0)
    assert "\n" not in str(info.value)
