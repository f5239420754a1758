"""Probes of a process, seen from outside: namespaces, hostname, PID view, user mapping.
They read /proc, the kernel's own account of the process; the hostname is read in the
process's UTS namespace by a short-lived thread of ours, never by a program of the
container's (which the student could replace)."""

import os
import socket

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import current_world, namespace_pids, poll, running_process, value_of


def _inode(pid, kind) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        raise ProbeFailed(f"process {pid} is gone") from None


def _reference(kind) -> int:
    """The notebook's own namespace of this kind (what a container should not share)."""
    return _inode(current_world().reference, kind)


def in_namespace(pid, kind, fn, *args):
    """Run `fn(*args)` in a new thread that joined `pid`'s namespace of `kind`; the thread
    ends with it, so no thread of ours stays in a namespace of the student's."""
    from labkit.linux import syscalls
    from labkit.linux.namespaces import lookup
    from labkit.linux.threads import call_in_thread

    def work():
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, lookup(kind).flag)
        finally:
            os.close(fd)
        return fn(*args)

    return call_in_thread(f"labkit-{kind}ns-{pid}", work, daemon=True)


def own_namespaces(target, kinds=("pid", "net", "ipc"), deadline=2.0):
    """The process has its own namespace of each kind (not the notebook's); polled a moment,
    since a process started by hand (`unshare` just exec'd) may not have made them yet."""
    def once():
        process = running_process(target)
        own = {kind: _inode(process.pid, kind) != _reference(kind) for kind in kinds}
        words = ", ".join(f"{kind}: {'own' if own[kind] else 'shared with the host'}" for kind in kinds)
        return Observation(all(own.values()), words)
    return lambda: poll(once, deadline)


def shares_namespace(target, kind):
    """The process shares the notebook's namespace of this kind (e.g. --net host)."""
    def look():
        process = running_process(target)
        same = _inode(process.pid, kind) == _reference(kind)
        return Observation(same, f"{kind}: {'shared with the host' if same else 'own'}")
    return look


def hostname(target, expected: str, deadline=2.0):
    """The hostname of the process's UTS namespace is `expected` (polled a moment: a shell
    started by hand may not have set it yet)."""
    def once():
        process = running_process(target)
        seen = in_namespace(process.pid, "uts", socket.gethostname)
        return Observation(seen == expected, f"hostname {seen!r}")
    return lambda: poll(once, deadline)


def pid_view(target):
    """Inside its own PID namespace the process is PID 1."""
    def look():
        process = running_process(target)
        inside = namespace_pids(process.pid)[-1]
        own = _inode(process.pid, "pid") != _reference("pid")
        return Observation(own and inside == 1, f"its first process is PID {inside} inside"
                           + ("" if own else " (in the host's PID namespace)"))
    return look


def host_pid_of_pid1(answer, target):
    """`answer` is the host PID of the process's PID 1."""
    def look():
        process = running_process(target)
        given = value_of(answer)
        if isinstance(given, bool):
            raise ProbeFailed(f"the answer {given!r} is not a PID (a whole number)")
        try:
            given = int(given)
        except (TypeError, ValueError):
            raise ProbeFailed(f"the answer {given!r} is not a PID (a whole number)") from None
        if given <= 0 or current_world().host_pid(given) is None:
            return Observation(False, "no process on the host has that PID")
        given = current_world().host_pid(given)
        if not os.path.exists(f"/proc/{given}"):
            return Observation(False, "no process on the host has that PID")
        try:
            same_ns = _inode(given, "pid") == _inode(process.pid, "pid")
            inside = namespace_pids(given)[-1]
        except (OSError, ProbeFailed):
            return Observation(False, "that process is not in the container's PID namespace")
        if same_ns and inside == 1:
            return Observation(True, "that host PID is PID 1 in the container")
        if same_ns:
            return Observation(False, f"that process is in the container, but it is PID {inside} there")
        if _inode(given, "pid") == _reference("pid"):
            return Observation(False, "that process is in the notebook's own PID namespace")
        return Observation(False, "that process is not in the container's PID namespace")
    return look


def uid_map(pid) -> list:
    """[(inside, outside, count)] from /proc/PID/uid_map."""
    rows = []
    with open(f"/proc/{pid}/uid_map") as handle:
        for line in handle:
            inside, outside, count = (int(word) for word in line.split())
            rows.append((inside, outside, count))
    return rows


def host_uid(pid) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise ProbeFailed(f"/proc/{pid}/status has no Uid line")


def root_inside_not_outside(target):
    """A user namespace: uid 0 inside is an unprivileged uid outside."""
    def look():
        process = running_process(target)
        own = _inode(process.pid, "user") != _reference("user")
        if not own:
            return Observation(False, "the container is in the host's user namespace: its root is the host's root")
        root = [outside for inside, outside, count in uid_map(process.pid) if inside == 0]
        outside = host_uid(process.pid)
        if not root:
            return Observation(False, "uid 0 is not mapped inside")
        return Observation(root[0] != 0 and outside != 0,
                           f"uid 0 inside is uid {root[0]} on the host; PID 1 runs as host uid {outside}")
    return look


def same_namespace(first, second, kind):
    """Two processes share one namespace of this kind (e.g. --net container:NAME)."""
    def look():
        a, b = running_process(first), running_process(second)
        same = _inode(a.pid, kind) == _inode(b.pid, kind)
        return Observation(same, f"{a.label} and {b.label}: {'one' if same else 'different'} {kind} namespace(s)")
    return look


def uid_inside(target, expected: int):
    """The process runs as uid `expected` inside its user namespace (its host uid
    translated through /proc/PID/uid_map)."""
    def look():
        process = running_process(target)
        outside = host_uid(process.pid)
        for inside_start, outside_start, count in uid_map(process.pid):
            if outside_start <= outside < outside_start + count:
                inside = inside_start + outside - outside_start
                return Observation(inside == int(expected), f"its first process is uid {inside} inside")
        return Observation(False, "its uid is not mapped into its user namespace")
    return look
