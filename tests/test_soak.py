"""A small soak in every `make test`: benchmarks/soak.py with 70 containers of every
ending (OOM kill, timeout, interrupt, exec, bridge, ...), 35 of them 8 at a time,
must leave nothing behind and not grow the helper. The full 1,000 is
`python benchmarks/soak.py`."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import soak  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_seventy_containers_of_every_ending_leave_nothing_and_the_helper_does_not_grow(labkit_home):
    report = soak.soak(containers=70, concurrency=8, home=labkit_home, say=lambda line: None)
    assert report["wrong_endings"] == []
    assert set(report["endings"].values()) == {10}
    assert report["left_while_helper_runs"] == dict.fromkeys(report["left_while_helper_runs"], 0), report["left_details"]
    assert report["left_after_helper_exits"] == dict.fromkeys(report["left_after_helper_exits"], 0), report["left_details"]
    assert report["helper_fd_growth"] <= 0, report["helper_fds_gained"]
    assert report["helper_rss_growth_bytes"] <= soak.RSS_TOLERANCE
    assert report["passed"]
