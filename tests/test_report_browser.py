"""The report in a real browser: headless Chromium renders every section and every image,
logs no console error and loads nothing from the network; a screenshot goes to tmp_path.

Chromium and chromedriver come from the Debian packages (``.ci/install-browser``); the
test tries that script once when they are missing and is skipped, with its reason, only
when the browser cannot be installed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from decompbench.bench.report import SECTIONS, write_report
from tests.test_report import build_run_dir

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]

PAGE_STATE = """
const imgs = Array.from(document.images);
return {
  ready: document.readyState,
  images: imgs.map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                          h: i.naturalHeight, shown: i.getBoundingClientRect().width})),
  sections: Array.from(document.querySelectorAll('section')).map(s => ({
      id: s.id, h2: (s.querySelector('h2') || {}).textContent || '',
      height: s.getBoundingClientRect().height})),
  resources: performance.getEntriesByType('resource').map(r => r.name.slice(0, 40)),
  height: document.documentElement.scrollHeight,
};
"""


def browser_or_skip() -> None:
    """Install the browser with .ci/install-browser when missing; skip if that fails."""
    if CHROMIUM.exists() and DRIVER.exists():
        return
    script = ROOT / ".ci" / "install-browser"
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    if not (CHROMIUM.exists() and DRIVER.exists()):
        why = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"headless Chromium could not be installed: {why[0]}")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    browser_or_skip()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)  # the system browser: nothing is downloaded
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def load(driver: Any, path: Path) -> dict[str, Any]:
    driver.get(path.resolve().as_uri())
    state: dict[str, Any] = driver.execute_script(PAGE_STATE)
    return state


def severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_report_renders_every_section_and_image(driver: Any, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    report = write_report(build_run_dir(tmp_path))
    driver.get_log("browser")  # drop anything logged before this page
    state = load(driver, report)
    assert state["ready"] == "complete"
    assert [(s["id"], s["h2"]) for s in state["sections"]] == SECTIONS
    assert all(s["height"] > 0 for s in state["sections"])
    n_png = len(list((report.parent / "plots").glob("*.png")))
    assert len(state["images"]) == n_png >= 4
    for img in state["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
    assert severe(driver) == []
    assert all(r.startswith("data:") for r in state["resources"]), state["resources"]
    driver.save_screenshot(str(tmp_path / "report-top.png"))
    driver.set_window_size(1400, min(state["height"] + 150, 16000))
    assert driver.save_screenshot(str(tmp_path / "report-full.png"))
    assert (tmp_path / "report-full.png").stat().st_size > 10_000


def test_the_checks_catch_a_broken_image_and_a_console_error(driver: Any, tmp_path: Path) -> None:
    """Control: the same checks fail on a page with a broken image and a script error."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><section id="x"><h2>x</h2>'
        '<img src="data:image/png;base64,iVBORw0KGgoAAAA=" alt="broken">'
        "<script>console.error('boom')</script></section></body></html>"
    )
    driver.get_log("browser")
    state = load(driver, page)
    assert [img["w"] for img in state["images"]] == [0]
    assert any("boom" in m for m in severe(driver))
