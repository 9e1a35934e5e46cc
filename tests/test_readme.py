"""The README's shell commands run verbatim (issue 19).

Every ```bash block of README.md is run with bash -e, as a reader would paste it after
`make demo` (the virtual environment exists and is activated): blocks that use `.venv`
run in the repository (they only read), the others in an empty temporary folder. Lines
running `make` (minutes: the demo, the whole test suite) are left out and listed here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIPPED = re.compile(r"^\s*make\s")  # make demo / make test: minutes, run by hand
# Blocks that need files from a ```python block (the plugin example, `my_method.py`): the
# plugin tests write that example out and run it.
NEEDS_EXAMPLE_FILES = "my_method.py"


def bash_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(r"```bash\n(.*?)```", text, flags=re.S)]


def runnable(block: str) -> str:
    return "\n".join(line for line in block.splitlines() if not SKIPPED.match(line))


BLOCKS = [b for b in map(runnable, bash_blocks()) if b.strip() and NEEDS_EXAMPLE_FILES not in b]


def test_the_readme_has_shell_blocks_and_only_make_lines_are_skipped() -> None:
    blocks = bash_blocks()
    assert len(blocks) >= 3
    skipped = [line for b in blocks for line in b.splitlines() if SKIPPED.match(line)]
    assert [s.split("#")[0].split() for s in skipped] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.strip().splitlines()[0][:40] for b in BLOCKS])
def test_readme_block_runs_verbatim(block: str, tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "decompbench").exists():
        pytest.skip("decompbench is not installed next to this python")
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "DECOMPBENCH_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    in_repo = ".venv" in block
    if in_repo and not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv in the repository (tests run from another environment)")
    res = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=ROOT if in_repo else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"{block}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    assert "Traceback" not in res.stderr
