"""Plugins (issue 18): methods and toys from modules outside the package, found by
``--plugin``, a suite's ``plugins:`` list or an entry point; loaded in every worker
(``--jobs 2``, Ray); one line and exit 2 for a plugin that cannot be used; the access
rule holds for plugins as for built-ins."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from decompbench import plugins, registry
from decompbench.cli import main

# A plugin module as a user would write it, outside the repository: an activation-only
# method that records the type of site it was handed, and a downstream-aware one.
PLUGIN = '''
import torch
from decompbench import (ActivationSite, Decomposition, DownstreamSite, StrictModel,
                         register_method)

SEEN = []


class Params(StrictModel):
    width: int = 4


@register_method("{name}")
class TopDirections(Decomposition):
    """Right singular vectors of the centred activations."""

    Params = Params
    summary = "test plugin"

    def fit(self, site, seed):
        SEEN.append(type(site).__name__)
        if isinstance(site, DownstreamSite) or hasattr(site, "downstream"):
            raise RuntimeError("an activation-only plugin was handed the downstream")
        X = site.acts_ND
        self.mean = X.mean(0)
        self.D = torch.linalg.svd(X - self.mean, full_matrices=False).Vh[: self.params.width]

    def encode(self, acts_ND):
        return (acts_ND - self.mean) @ self.D.T

    def decode(self, latents_NM):
        return latents_NM @ self.D + self.mean

    def directions(self):
        return self.D


@register_method("{name}-ds")
class DownstreamTop(TopDirections):
    access = "downstream_aware"

    def fit(self, site, seed):
        SEEN.append(type(site).__name__)
        assert isinstance(site, DownstreamSite)
        X = site.acts_ND
        self.mean = X.mean(0)
        self.D = torch.linalg.svd(X - self.mean, full_matrices=False).Vh[: self.params.width]
'''

SUITE = {
    "seeds": [0],
    "n_train": 256,
    "n_eval": 128,
    "toys": [{"name": "composed", "params": {"values": [2, 2], "d_model": 4}}],
    "methods": [{"name": "pca"}, {"name": "ext-top", "params": {"width": 4}}],
}


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Plugins loaded by a test leave no trace in the registry or ``sys.modules``."""
    registry.all_toys()
    before = (dict(registry.METHODS), dict(registry.TOYS), dict(plugins.LOADED))
    modules, path = set(sys.modules), list(sys.path)
    yield
    for table, old in zip((registry.METHODS, registry.TOYS, plugins.LOADED), before, strict=True):
        table.clear()
        table.update(old)  # type: ignore[arg-type]
    for name in set(sys.modules) - modules:
        if name.startswith(("ext_", "bad_")):
            del sys.modules[name]
    sys.path[:] = path


def write_plugin(folder: Path, module: str = "ext_plugin", name: str = "ext-top") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(PLUGIN.replace("{name}", name))
    return path


def write_suite(folder: Path, plugin_entry: str, **extra: object) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "plugins": [plugin_entry], **extra}))
    return path


def records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_list_and_describe_take_a_plugin_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = write_plugin(tmp_path / "outside")
    assert main(["list", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "ext-top" in out and "ext-top-ds" in out
    assert "ext_plugin" in plugins.LOADED


def test_plugin_method_runs_in_two_processes_and_shows_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A suite naming a plugin file (relative to the suite file) runs with --jobs 2; the
    method appears in results, the tables, stance.json and the report."""
    write_plugin(tmp_path / "plugins")
    # two runs (two seeds) of the plugin alone, so it is the verdict's best method
    suite = write_suite(tmp_path, "plugins/ext_plugin.py", seeds=[0, 1],
                        methods=[{"name": "ext-top", "params": {"width": 4}}])  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--jobs", "2"]) == 0
    shown = capsys.readouterr()
    assert "in 2 processes" in shown.err
    assert "ext-top" in shown.out  # the score table
    ours = records(out)
    assert [(r["method"], r["status"]) for r in ours] == [("ext-top", "ok")] * 2, ours
    assert ours[0]["access"] == "activation_only"
    assert isinstance(ours[0]["metrics"], dict) and ours[0]["metrics"]["mcc"] > 0
    assert "ext-top" in (out / "stance.json").read_text()
    assert "ext-top" in (out / "report.html").read_text()
    assert main(["show", str(out)]) == 0
    assert "ext-top" in capsys.readouterr().out


def test_plugin_method_runs_as_ray_tasks(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already connected")
    plugin = write_plugin(tmp_path / "elsewhere")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "run"
    argv = ["run", str(suite), "--out", str(out), "--executor", "ray", "--jobs", "2"]
    assert main([*argv, "--quiet", "--plugin", str(plugin)]) == 0
    ours = [r for r in records(out) if r["method"] == "ext-top"]
    assert [r["status"] for r in ours] == ["ok"], ours


def test_access_rule_holds_for_plugins(tmp_path: Path) -> None:
    """An activation-only plugin is handed an ActivationSite (no downstream), a
    downstream-aware one a DownstreamSite."""
    from decompbench import run_suite

    write_plugin(tmp_path / "p")
    suite = {**SUITE, "methods": [{"name": "ext-top"}, {"name": "ext-top-ds"}]}
    recs = run_suite(suite, tmp_path / "run", plugins=[str(tmp_path / "p" / "ext_plugin.py")],
                     report=False)  # fmt: skip
    assert [(r.method, r.status) for r in recs] == [("ext-top", "ok"), ("ext-top-ds", "ok")]
    seen = sys.modules["ext_plugin"].SEEN
    assert seen == ["ActivationSite", "DownstreamSite"]
    assert [r.access for r in recs] == ["activation_only", "downstream_aware"]
    assert (tmp_path / "run" / "stance.json").is_file()


def test_a_dotted_module_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path, module="ext_here", name="ext-here")
    monkeypatch.chdir(tmp_path)
    assert main(["list", "--plugin", "ext_here"]) == 0
    assert "ext-here" in capsys.readouterr().out
    assert plugins.LOADED["ext_here"].path == str(tmp_path.resolve())


def test_worker_activation_imports_by_name(tmp_path: Path) -> None:
    """What a worker does with the parent's plugin list: path entry + import by name."""
    write_plugin(tmp_path / "w", module="ext_worker", name="ext-worker")
    plugins.activate([plugins.Plugin("ext_worker", str(tmp_path / "w"))])
    assert registry.get_method("ext-worker").__module__ == "ext_worker"


BAD = {
    "missing": ("", "no module named 'bad_missing'"),
    "no_fit": (
        "from decompbench import Decomposition, StrictModel, register_method\n"
        "class P(StrictModel):\n    pass\n"
        "@register_method('bad-nofit')\nclass M(Decomposition):\n    Params = P\n"
        "    def encode(self, x): return x\n    def decode(self, z): return z\n"
        "    def directions(self): return None\n",
        "method 'bad-nofit' (M) does not define fit",
    ),
    "taken": (
        "from decompbench import register_method\nfrom decompbench.methods.pca import PCA\n"
        "@register_method('pca')\nclass Mine(PCA):\n    pass\n",
        "method name 'pca' is already taken (by decompbench.methods.pca.PCA)",
    ),
    "no_params": (
        "from decompbench import register_method\nfrom decompbench.methods.pca import PCA\n"
        "@register_method('bad-noparams')\nclass Mine(PCA):\n    Params = dict\n",
        "has no Params class",
    ),
    "bad_access": (
        "from decompbench import register_method\nfrom decompbench.methods.pca import PCA\n"
        "@register_method('bad-access')\nclass Mine(PCA):\n    access = 'everything'\n",
        "has access 'everything'",
    ),
    "not_a_method": (
        "from decompbench import register_method\n@register_method('bad-cls')\n"
        "class Mine:\n    pass\n",
        "is not a subclass of decompbench.Decomposition",
    ),
    "raises": ("raise RuntimeError('boom')\n", "failed while importing: RuntimeError: boom"),
    "toy_no_acts": (
        "from decompbench import StrictModel, Toy, register_toy\n"
        "class P(StrictModel):\n    pass\n"
        "@register_toy('bad-toy')\nclass T(Toy):\n    Params = P\n",
        "toy 'bad-toy' (T) does not define acts, downstream, ground_truth, sample, sites",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_plugin_is_one_line_exit_2_and_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, expected = BAD[case]
    module = f"bad_{case}"
    if source:
        (tmp_path / f"{module}.py").write_text(source)
    spec = str(tmp_path / f"{module}.py") if source else module
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE | {"methods": [{"name": "pca"}]}))
    out = tmp_path / "run"
    before = dict(registry.METHODS)
    assert main(["run", str(suite), "--out", str(out), "--plugin", spec]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
    assert before == registry.METHODS  # a rejected plugin's entries are removed again


def test_a_bad_plugin_in_a_suite_file_names_the_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path, "nowhere/ext_absent.py")
    assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "ext_absent.py" in err and "no such file" in err
    assert not (tmp_path / "run").exists()


def test_entry_points_are_loaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution's ``decompbench.plugins`` entry point is imported by the
    registry (here a fake dist-info folder on sys.path)."""
    write_plugin(tmp_path, module="ext_ep", name="ext-ep")
    info = tmp_path / "ext_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [decompbench.plugins]
        ext = ext_ep
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(plugins._entry_points_state, "loaded", False)
    assert registry.get_method("ext-ep").__module__ == "ext_ep"
    assert "ext_ep" in plugins.LOADED


def test_a_plugin_toy_is_described_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ext_toy.py").write_text(
        "from decompbench import register_toy\n"
        "from decompbench.toys.composed import Composed\n"
        "@register_toy('ext-composed')\nclass Mine(Composed):\n    pass\n"
    )
    plugin = str(tmp_path / "ext_toy.py")
    assert main(["describe", "ext-composed", "--json", "--plugin", plugin]) == 0
    assert json.loads(capsys.readouterr().out)["sites"]["hidden"]["d"] == 16
    suite = tmp_path / "suite.yaml"
    entries = {"toys": [{"name": "ext-composed"}], "methods": [{"name": "pca"}]}
    suite.write_text(yaml.safe_dump({**SUITE, **entries, "plugins": ["ext_toy.py"]}))
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert [(r["toy"], r["status"]) for r in records(tmp_path / "run")] == [("ext-composed", "ok")]
