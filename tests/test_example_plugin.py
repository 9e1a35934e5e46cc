"""The README's plugin example and ``examples/plugin/`` (issue 18) run as a user would run
them: the README's code block saved as a file and passed with ``--plugin``; the example
package pip-installed (offline, into a temporary folder on PYTHONPATH) and found through
its ``decompbench.plugins`` entry point by the CLI (no ``--plugin``) and by ``--jobs 2``
workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from decompbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "seeds": [0, 1],
    "n_train": 256,
    "n_eval": 128,
    "toys": [{"name": "composed", "params": {"values": [2, 2], "d_model": 4}}],
}


def readme_plugin() -> str:
    """The first python block of the README's "Bring your own method" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bring your own method", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block in the section"
    return match.group(1)


def records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_readme_plugin_example_runs(tmp_path: Path) -> None:
    code = readme_plugin()
    assert len(code.strip().splitlines()) <= 30
    plugin = tmp_path / "my_method.py"
    plugin.write_text(code)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({**TINY, "methods": [{"name": "my-svd"}]}))
    out = tmp_path / "run"
    try:
        assert main(["run", str(suite), "--out", str(out), "--quiet", "--plugin", str(plugin)]) == 0
    finally:
        from decompbench import plugins, registry

        registry.METHODS.pop("my-svd", None)
        plugins.LOADED.pop("my_method", None)
        sys.modules.pop("my_method", None)
    assert [(r["method"], r["status"]) for r in records(out)] == [("my-svd", "ok")] * 2
    assert "my-svd" in (out / "stance.json").read_text()


def test_example_plugin_package_installs_and_runs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT / "examples" / "plugin", source)  # the build leaves nothing in the repo
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(site), str(source)]  # fmt: skip
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    assert list(site.glob("*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    cli = [sys.executable, "-m", "decompbench.cli"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({**TINY, "methods": [{"name": "example-kmeans"}]}))
    out = tmp_path / "run"
    argv = [*cli, "run", str(suite), "--out", str(out), "--jobs", "2", "--quiet"]
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    recs = records(out)
    assert [(r["method"], r["status"]) for r in recs] == [("example-kmeans", "ok")] * 2
    assert "example-kmeans" in ran.stdout  # the tables
    assert "example-kmeans" in (out / "report.html").read_text()
    assert "example-kmeans" in (out / "stance.json").read_text()
