"""Naming a process for good: a PID is reused, a (PID, start time) pair is not; killing
every process a listing names, until it names none; and finding a container's processes
where it has no cgroup to list them."""

import os
import signal
import time


def _stat_fields(pid: int) -> list | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None if there is no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def parent_of(pid: int) -> int | None:
    """Field 4 of /proc/<pid>/stat (the parent's PID), or None if there is no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[1]) if fields else None
    except (IndexError, ValueError):
        return None


def identity(pid: int) -> dict:
    """What to record about an owner: {"owner_pid": ..., "owner_start": ...}."""
    return {"owner_pid": pid, "owner_start": start_time(pid)}


def is_running(pid, started) -> bool:
    """The same process as when recorded, and not a zombie (a dead process whose parent
    died too may stay unreaped, with its PID and start time, for a long while)."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    if not fields:
        return False
    try:
        return int(fields[19]) == started and fields[0] not in ("Z", "X")
    except (IndexError, ValueError):
        return False


def kill_each(list_pids, timeout: float) -> list:
    """SIGKILL every process `list_pids()` names, and again until it names none (a fork in
    flight shows up on the next look); a process already gone is fine. Returns the PIDs
    still there when `timeout` seconds ran out ([] when they all went)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = list(list_pids())
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)


def in_pid_namespace_of(pid: int) -> list:
    """The live processes in the PID namespace whose first process is `pid` (a container's
    PID 1), where there is no cgroup to list them: `pid`'s descendants (an orphan in the
    namespace is reparented to its PID 1), and every process whose /proc/N/ns/pid is that
    namespace (an `exec`'s, whose parent stays outside), where this caller may read those
    links. Only for a PID 1 of a namespace of its own: the host's holds every process."""
    namespace = _pid_namespace(pid)
    return descendants(pid, also=lambda other: namespace is not None and _pid_namespace(other) == namespace)


def descendants(pid: int, also=lambda other: False) -> list:
    """`pid` and its live descendants (and any process `also` picks), from every
    /proc/N/stat, which anyone may read."""
    children, found = {}, set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if not fields or fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        if int(entry) != pid and also(int(entry)):
            found.add(int(entry))
    if _stat_fields(pid) is None:
        return sorted(found)
    waiting = [pid]
    while waiting:
        parent = waiting.pop()
        found.add(parent)
        waiting.extend(child for child in children.get(parent, ()) if child not in found)
    return sorted(found)


def _pid_namespace(pid: int):
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:   # gone, or not ours to look at (another id of a rootless range)
        return None
    return st.st_dev, st.st_ino


class ForkedChild:
    """A child this process forked, with Popen's `pid`, `returncode` and `poll()` (by
    waitpid), for code that handles it as a subprocess."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
