"""What notebooks 00-06 tell students, pinned on the real kernel so a wrong sentence
cannot come back: copy-up happens at open(2) for writing (not at the first write, not
for a read-only open), and the union-fs check fails when a copy did not happen then;
PID 1 drops a handler-less SIGTERM even from the host, SIGKILL from the host always
arrives, and a handler makes SIGTERM arrive.
"""

import os

import pytest

from labkit.experiments import get
from labkit.experiments.base import ExperimentResult, running


def _open_and_look(container, path, flags):
    """Open /path in the container's root from the host; is it in the read-write layer
    (and how big) while the descriptor is open and nothing has been written?"""
    descriptor = os.open(f"/proc/{container.pid}/root{path}", flags)
    try:
        copy = container.upper_dir / path.lstrip("/")
        return os.stat(copy).st_size if copy.exists() else None
    finally:
        os.close(descriptor)


@pytest.mark.root
def test_opening_an_image_file_for_writing_copies_it_up_before_any_write(labkit_home):
    with running(command=["sleep", "60"]) as container:
        size_in_image = os.stat(f"/proc/{container.pid}/root/etc/passwd").st_size
        assert _open_and_look(container, "/etc/passwd", os.O_RDONLY) is None
        assert _open_and_look(container, "/etc/passwd", os.O_WRONLY | os.O_APPEND) == size_in_image


def _overlay_result(copied_up_at_open):
    rows = [{"size_mib": s, "first_ms": s * 0.9, "second_ms": 0.02, "copied_up": copied_up_at_open or s != 4}
            for s in (1, 4, 16, 64)]
    lookup = [{"depth": d, "first_us": 3 + d * 0.3, "again_us": 1.0} for d in (1, 16, 64, 128)]
    return ExperimentResult("overlay_copy_up", {}, {"copy_up": [{"rows": rows}], "lookup": lookup})


def test_union_fs_check_fails_when_one_file_was_not_copied_up_at_open():
    overlay = get("overlay_copy_up")
    assert overlay.check(_overlay_result(copied_up_at_open=True)).held is True
    missed = overlay.check(_overlay_result(copied_up_at_open=False))
    assert missed.held is False and "right after open" in missed.detail


def test_namespace_table_text_shows_introduced_and_complete_columns():
    tour = get("namespace_tour")
    table = [{"kind": "net", "flag": "CLONE_NEWNET", "isolates": "network", "introduced": "2.6.24",
              "complete": "2.6.29", "available": True, "why_not": None}]
    text = tour.table_text(ExperimentResult("namespace_tour", {}, {"table": table}))
    header, row = text.splitlines()
    assert header.split()[:4] == ["kind", "flag", "introduced", "complete"]
    assert row.split()[:4] == ["net", "CLONE_NEWNET", "2.6.24", "2.6.29"]


def _catches(pid, number) -> bool:
    with open(f"/proc/{pid}/status") as status:
        mask = int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask & (1 << (number - 1)))


@pytest.mark.root
def test_pid_1_drops_sigterm_from_the_host_without_a_handler_but_sigkill_always_arrives(labkit_home):
    import signal

    with running(command=["sleep", "60"]) as container:
        os.kill(container.pid, signal.SIGTERM)   # dropped at send time: no handler in PID 1
        with open(f"/proc/{container.pid}/status") as status:
            assert next(line for line in status if line.startswith("State:")).split()[1] in "RS"
        os.kill(container.pid, signal.SIGKILL)
        assert container.wait(timeout=30).signal == signal.SIGKILL


@pytest.mark.root
def test_pid_1_with_a_handler_gets_sigterm_from_the_host(labkit_home):
    import signal
    import time

    with running(command=["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"]) as container:
        deadline = time.monotonic() + 30
        while not _catches(container.pid, signal.SIGTERM):
            assert time.monotonic() < deadline, "the shell never installed its TERM trap"
            time.sleep(0.02)
        os.kill(container.pid, signal.SIGTERM)
        assert container.wait(timeout=30).exit_code == 7
