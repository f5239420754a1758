"""nbval compares every output of the labs exactly; the checks' JSON carries what each probe
observed (CPU shares, layer paths) and differs from run to run, and so does the table's
"observed" column, which prints the same values for the student. The score (text/plain)
and the rest of the table (each check's mark, points and hint) are still compared.

As an ordinary user, notebooks/conftest.py's hooks apply here too (the outputs a lab cell
stores for a rootless run): these labs' released copies live under notebooks/, their
sources here.

A check cell whose timing check the host was too busy to measure ("busy host, run again":
no points, not a wrong answer) cannot match its stored score; nbval's failure of that cell
becomes a skip that says so, and so does that of the notebook's progress() cell, which adds
the scores up. Any other difference still fails."""

import importlib.util
from pathlib import Path

import pytest

from labkit.grading.checks import MIME
from labkit.grading.checks import OBSERVED_SANITIZE as OBSERVED


def _notebooks_conftest():
    """notebooks/conftest.py (the rootless outputs), under a name of its own."""
    path = Path(__file__).resolve().parent.parent.parent / "notebooks" / "conftest.py"
    spec = importlib.util.spec_from_file_location("labkit_notebooks_conftest_for_labs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ROOTLESS = _notebooks_conftest()
pytest_collection_modifyitems = _ROOTLESS.pytest_collection_modifyitems


def pytest_collectstart(collector):
    _ROOTLESS.pytest_collectstart(collector)
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb" \
            and hasattr(collector, "skip_compare"):
        collector.skip_compare += (MIME,)
        collector.sanitize_patterns[OBSERVED[0]] = OBSERVED[1]


def unmeasured(outputs) -> list:
    """The checks of a cell's outputs that a busy host kept from being measured."""
    found = []
    for output in outputs or []:
        data = output.get("data", {}) if hasattr(output, "get") else {}
        checks = data.get(MIME, {}).get("checks", []) if isinstance(data.get(MIME), dict) else []
        found += [f"{c.get('name')}: {c.get('observed')}" for c in checks if c.get("retry")]
    return found


BUSY = {}   # notebook path -> the checks a busy host kept from being measured in this run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    busy = unmeasured(getattr(item, "test_outputs", None))
    if busy:
        BUSY.setdefault(str(item.fspath), []).extend(busy)
        report.outcome = "skipped"
        report.longrepr = (str(item.fspath), 0, f"Skipped: busy host, run again: {'; '.join(busy)}")
    elif str(item.fspath) in BUSY and "progress()" in getattr(getattr(item, "cell", None), "source", ""):
        # the progress bar adds up the scores, so it differs by what was not measured above
        report.outcome = "skipped"
        report.longrepr = (str(item.fspath), 0, "Skipped: progress() counts a check that a busy host kept from "
                           f"being measured above: {'; '.join(BUSY[str(item.fspath)])}")
