"""labkit.linux.processes: a container's processes found without a cgroup (rootless on
cgroup v1), from /proc as any user may read it. Needs no root."""

import os
import signal
import subprocess
import time

from labkit.linux import processes


def test_descendants_are_the_process_its_children_and_theirs_and_no_other():
    tree = subprocess.Popen(["sh", "-c", "sleep 61 & (sleep 62 & wait) & wait"])
    try:
        for _ in range(500):
            found = processes.descendants(tree.pid)
            if len(found) == 4:
                break
            time.sleep(0.01)
        commands = sorted(open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip() for pid in found)
        assert [c for c in commands if c.startswith("sleep")] == ["sleep 61", "sleep 62"]
        assert len(found) == 4 and tree.pid in found
    finally:
        for pid in processes.descendants(tree.pid):   # ours: this test started them
            os.kill(pid, signal.SIGKILL)
        tree.wait()


def test_a_process_that_is_gone_has_no_descendants():
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert processes.descendants(gone.pid) == []
