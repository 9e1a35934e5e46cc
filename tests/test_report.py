"""The run report: per-run artefacts (safetensors + JSON) and the self-contained report.html."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from decompbench import metrics as M
from decompbench.bench.artefacts import (
    ARTEFACTS,
    load_run_artefacts,
    run_artefacts,
    write_run_artefacts,
)
from decompbench.bench.plots import matched_order
from decompbench.bench.report import PLOTS, REPORT, SECTIONS, write_report
from decompbench.bench.results import RESULTS, read_records
from decompbench.bench.runner import site_data, site_view
from decompbench.cli import main
from decompbench.config import StrictModel
from decompbench.errors import UserError
from decompbench.methods.base import Decomposition, build_method
from decompbench.toys.base import ActivationSite, GroundTruth, build_toy

TOPK = {"width": 9, "steps": 150, "batch_size": 64}
SUITE = {
    "seeds": [0],
    "n_train": 1024,
    "n_eval": 256,
    "toys": [
        {"name": "composed", "params": {"values": [3, 3], "d_model": 8, "use": u}}
        for u in ("factored", "composed")
    ],
    "methods": [
        {"name": "pca"},
        {"name": "sae-topk", "params": {**TOPK, "k": 1}},
        {"name": "sae-topk", "params": {**TOPK, "k": 2}},
        # A real failure: the loss turns non-finite at the first step.
        {"name": "sae-relu", "params": {"width": 8, "steps": 5, "batch_size": 64, "lr": 1e30}},
    ],
}


def build_run_dir(root: Path) -> Path:
    """Run the tiny suite through the CLI, then save every ok run's artefacts as the runner
    would (refitting from the record's settings: same seed, same dictionary)."""
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = root / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1  # the failed sae-relu
    for r in read_records(out):
        if r.status != "ok":
            continue
        assert r.run_id is not None and r.n_train is not None and r.n_eval is not None
        toy = build_toy(r.toy, r.toy_params, r.seed)
        data = site_data(toy, r.site, r.n_train, r.n_eval, r.seed)
        method = build_method(r.method, r.method_params)
        method.fit(site_view(toy, data, method), r.seed)
        meta = r.model_dump(
            include={"toy", "toy_params", "site", "method", "method_params", "seed"}
        )
        saved = run_artefacts(
            r.run_id,
            method,
            toy.ground_truth(r.site),
            data.eval_ND,
            data.eval_feats_NK,
            toy.downstream(r.site),
            meta=meta,
        )
        write_run_artefacts(out, saved)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_run_dir(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(run_dir: Path) -> str:
    return write_report(run_dir).read_text(encoding="utf-8")


# --- artefacts ------------------------------------------------------------------------


class FixedParams(StrictModel):
    pass


class Fixed(Decomposition):
    """The identity dictionary on 2 dims: latents are the coordinates."""

    name: ClassVar[str] = "fixed"
    Params = FixedParams

    def fit(self, site: ActivationSite, seed: int) -> None:
        pass

    def encode(self, acts_ND: Tensor) -> Tensor:
        return acts_ND.clone()

    def decode(self, latents_NM: Tensor) -> Tensor:
        return latents_NM.clone()

    def directions(self) -> Tensor:
        return torch.eye(2)


def test_artefacts_by_hand(tmp_path: Path) -> None:
    """X = [[1,0],[0,2],[3,-4]] through the identity: ablating latent j moves the output by
    |x_j| on each sample, so the effect is mean |x_j| = [4/3, 2]; both fire on 2 of 3."""
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -4.0]])
    gt = GroundTruth(torch.eye(2)[[1, 0]], ("b", "a"), (True, False), (0, 1))
    feats = torch.tensor([[0.0, 1.0], [2.0, 0.0], [-4.0, 3.0]])
    saved = run_artefacts(
        "abc", Fixed(FixedParams()), gt, X, feats, nn.Identity(), meta={"toy": "hand", "seed": 3}
    )
    write_run_artefacts(tmp_path, saved)
    a = load_run_artefacts(tmp_path, "abc")
    assert a is not None and a.downstream_effect_M is not None
    assert torch.allclose(a.downstream_effect_M, torch.tensor([4 / 3, 2.0]))
    assert torch.allclose(a.firing_rate_M, torch.tensor([2 / 3, 2 / 3]))
    assert torch.allclose(a.mean_abs_M, torch.tensor([4 / 3, 2.0]))
    assert a.alive_M.tolist() == [True, True]
    assert torch.equal(a.true_directions_KD, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert a.feature_names == ["b", "a"] and a.is_model == [True, False]
    assert a.meta["groups"] == [0, 1] and a.meta["toy"] == "hand" and a.meta["seed"] == 3
    assert a.meta["downstream_output_norm"] == pytest.approx((1 + 2 + 5) / 3)
    names = sorted(p.name for p in (tmp_path / ARTEFACTS).iterdir())
    assert names == ["abc.json", "abc.safetensors"]  # no temporary files left behind
    assert load_run_artefacts(tmp_path, "other") is None
    (tmp_path / ARTEFACTS / "abc.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable artefacts"):
        load_run_artefacts(tmp_path, "abc")


def test_saved_artefacts_reproduce_the_recorded_scores(run_dir: Path) -> None:
    """The report draws from the artefacts: they must be the dictionaries that were scored."""
    ok = [r for r in read_records(run_dir) if r.status == "ok"]
    assert len(ok) >= 5
    for r in ok:
        assert r.run_id is not None
        a = load_run_artefacts(run_dir, r.run_id)
        assert a is not None and a.meta["method"] == r.method and a.meta["seed"] == r.seed
        assert a.true_sign_K is not None and a.latent_sign_M is not None
        truth = M.Truth.of(a.true_directions_KD, a.true_sign_K, torch.tensor(a.is_model))
        D, signs = a.directions_MD[a.alive_M], a.latent_sign_M[a.alive_M]
        assert M.mcc_strict(truth, D, signs) == pytest.approx(r.metrics["mcc_strict"], abs=1e-6)
        assert int(a.alive_M.sum()) == r.metrics["n_alive"]
        assert float(a.firing_rate_M.sum()) == pytest.approx(r.metrics["l0"], rel=1e-5)
        effect = a.downstream_effect_M
        assert effect is not None and bool((effect[~a.alive_M] == 0).all())


def test_matched_order_puts_the_matching_on_the_diagonal() -> None:
    cos = np.array([[0.1, 0.9, 0.0, 0.5], [0.8, 0.2, 0.3, 0.0], [0.0, 0.1, 0.7, 0.6]])
    model = np.array([False, True, True])
    alive = np.array([True, True, True, False])
    order = matched_order(cos, alive, model)
    assert order.rows == [1, 2, 0]  # model features first
    assert order.cols == [0, 2, 1, 3]  # matched latents in row order, dead latent last
    assert order.matched == [(1, 0), (2, 2), (0, 1)]


def test_matched_order_matches_model_features_first() -> None:
    """A global matching would give the data-only f0 latent 0 (0.9 + 0.7 > 0.8 + 0.0); the
    scores match model features alone, so f1 takes latent 0 and f0 gets what is left."""
    cos = np.array([[0.9, 0.0, 0.2], [0.8, 0.7, 0.1]])
    order = matched_order(cos, np.array([True, True, True]), np.array([False, True]))
    assert order.matched == [(1, 0), (0, 2)]
    assert order.rows == [1, 0] and order.cols == [0, 2, 1]


# --- report ---------------------------------------------------------------------------


def test_report_has_every_section_and_embeds_every_plot(run_dir: Path, report: str) -> None:
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in report
    srcs = re.findall(r'<img src="([^"]*)"', report)
    files = sorted((run_dir / PLOTS).glob("*.png"))
    # 2 twins x (pca, sae-topk) heatmaps (at most), one sweep per twin, one twin panel
    assert 4 <= len(srcs) == len(files) <= 7
    embedded = {base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in srcs}
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert embedded == {f.read_bytes() for f in files}
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in embedded)
    for token in ("http://", "https://", "<script", "<link", 'src="/', "url("):
        assert token not in report


def test_report_contents(run_dir: Path, report: str) -> None:
    records = read_records(run_dir)
    section = {
        sid: report.split(f'<section id="{sid}">')[1].split("</section>")[0] for sid, _ in SECTIONS
    }
    assert section["stance"].count("<tr>") == 1 + 2  # header + one row per twin
    assert "composed use=factored" in section["stance"]
    assert section["heatmaps"].count("sae-topk") >= 2 and "own rule" in section["heatmaps"]
    assert section["twins"].count("<img") == 1 and "twin strict (min)" in section["twins"]
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) >= 2 and section["failed"].count("<tr>") == 1 + len(failed)
    assert "TrainingFailed" in section["failed"]
    n_cards = section["latents"].count('<div class="card">')
    alive = sum(int(r.metrics["n_alive"] or 0) for r in records if r.status == "ok")
    assert 4 + 2 <= n_cards < alive  # pca's 4 alive latents + an SAE per twin; not every run
    assert "downstream effect" in section["latents"] and "% of |y|" in section["latents"]


def test_report_command_regenerates_from_files_and_drops_stale_plots(
    run_dir: Path, report: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = run_dir / PLOTS / "old.png"
    stale.write_bytes(b"x")
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / REPORT)
    assert not stale.exists()
    again = (run_dir / REPORT).read_text(encoding="utf-8")
    strip = re.compile(r"generated [0-9: -]+")
    assert strip.sub("", again) == strip.sub("", report)  # deterministic, no retraining


def test_report_without_artefacts_says_so(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / RESULTS).write_bytes((run_dir / RESULTS).read_bytes())
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "no artefacts saved for run" in text
    assert text.count("<img") == len(list((tmp_path / PLOTS).glob("*.png"))) == 3  # sweeps, twins


@pytest.mark.parametrize("what", ["empty", "missing", "file", "bad-results"])
def test_report_on_a_non_run_directory_exits_2_with_one_line(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "d"
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("hello")
    elif what == "bad-results":
        target.mkdir()
        (target / RESULTS).write_text(json.dumps({"not": "a record"}) + "\n")
    assert main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("decompbench: error: ")
    assert not (target / REPORT).exists() if target.is_dir() else True
