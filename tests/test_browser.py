"""The main job as a user sees it: JupyterLab from `labkit lab` in a real browser
(Debian's chromium, driven by playwright; playwright's own browser download is never
used, and no video is recorded). The screenshot lands in out/browser-00-start-here.png."""

import os
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is in the 'lab' extra (make lab installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the 'test' extra (make test installs it)")

from lab_process import lab  # noqa: E402,F401 — the fixture is used by name

CHROMIUM = Path("/usr/bin/chromium")
OUT = Path(__file__).resolve().parent.parent / "out"
KERNEL = "Python 3 (labkit)"

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no {CHROMIUM}: `make setup` installs Debian's chromium with apt; this "
                              "distribution could not (Ubuntu ships it only as a snap)"),
]

CONTAINER_CELL = "%%container --hostname web\necho \"hostname: $(hostname)\""
MONITOR_CELL = ("from labkit.widgets import monitor\n"
                "watched = %container run -d --name watched --memory 32m -- sleep 120\n"
                "monitor(watched)")


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def add_cell_on_top_and_run(page, source):
    """Command mode on the active cell, a new cell above it (JupyterLab's `A`), its
    source typed in, Shift+Enter: what a user does with the keyboard."""
    page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(source)
    page.keyboard.press("Shift+Enter")
    return page.locator(".jp-Notebook .jp-Cell").first


def test_a_student_runs_a_container_cell_and_watches_a_monitor_in_jupyterlab(lab, page):
    page.goto(f"{lab.url}/lab/tree/00-start-here.ipynb?token={lab.token}")
    # The status bar says which kernel the notebook has and when it is idle.
    page.get_by_text(f"{KERNEL} | Idle").wait_for(timeout=180_000)

    cell = add_cell_on_top_and_run(page, CONTAINER_CELL)
    output = cell.locator(".jp-OutputArea-output")
    output.get_by_text("hostname: web").wait_for(timeout=120_000)
    assert output.inner_text().strip() == "hostname: web"

    cell = add_cell_on_top_and_run(page, MONITOR_CELL)
    widget = cell.locator(".jp-OutputArea-output .widget-vbox")
    widget.wait_for(timeout=120_000)
    assert widget.locator(".widget-label").filter(has_text="memory").count() >= 1
    assert widget.locator(".progress, .widget-progress").count() == 3  # memory, CPU %, pids bars
    widget.get_by_text("of 32.0 MiB").wait_for(timeout=60_000)   # the label the helper filled in

    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "browser-00-start-here.png"))
