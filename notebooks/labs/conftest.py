"""nbval settings for the graded labs.

- nbval compares every output exactly; the checks' JSON carries what each probe observed
  (CPU shares, layer paths) and differs from run to run. The score (text/plain) and the
  pass/fail table (text/html) are still compared.
- Lab 1 starts a --userns container, whose root is an unprivileged host uid that must be
  able to walk down to LABKIT_HOME's layers. When the home in use is not world-searchable
  (/var/lib/labkit made with mode 0700), the labs' kernels get a searchable home of their
  own for the session instead of a failure, and nobody's permissions are changed.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from labkit.grading.checks import MIME

_session_home = None


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb" \
            and hasattr(collector, "skip_compare"):
        collector.skip_compare += (MIME,)


def _searchable(path: Path) -> bool:
    return all(os.stat(d).st_mode & 0o001 for d in (path, *path.parents) if d.exists())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """The kernel of a lab notebook starts in its first item's setup: give it the home."""
    global _session_home
    from labkit.home import labkit_home

    if _searchable(labkit_home()):
        yield
        return
    if _session_home is None:
        _session_home = Path(tempfile.mkdtemp(prefix="labkit-labs-home-"))
        os.chmod(_session_home, 0o755)
    saved = os.environ.get("LABKIT_HOME")
    os.environ["LABKIT_HOME"] = str(_session_home)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LABKIT_HOME", None)
        else:
            os.environ["LABKIT_HOME"] = saved


def pytest_sessionfinish(session):
    if _session_home is not None:
        shutil.rmtree(_session_home, ignore_errors=True)
