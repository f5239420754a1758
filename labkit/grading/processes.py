"""Probes of a container's process, seen from the host: namespaces, hostname, PID view,
user mapping. They read /proc on the host, the kernel's own account of the process."""

import os

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import running_container, value_of


def _inode(pid, kind) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def own_namespaces(target, kinds=("pid", "net", "ipc")):
    """The container has its own namespace of each kind (not the notebook's)."""
    def look():
        container = running_container(target)
        own = {kind: _inode(container.pid, kind) != _inode("self", kind) for kind in kinds}
        words = ", ".join(f"{kind}: {'own' if own[kind] else 'shared with the host'}" for kind in kinds)
        return Observation(all(own.values()), words)
    return look


def shares_namespace(target, kind):
    """The container shares the notebook's namespace of this kind (e.g. --net host)."""
    def look():
        container = running_container(target)
        same = _inode(container.pid, kind) == _inode("self", kind)
        return Observation(same, f"{kind}: {'shared with the host' if same else 'own'}")
    return look


def hostname(target, expected: str):
    """`hostname` inside the container (its UTS namespace) is `expected`."""
    def look():
        container = running_container(target)
        result = container.exec(["hostname"], timeout=10)
        seen = result.stdout.strip()
        return Observation(result.ok and seen == expected, f"hostname {seen!r}")
    return look


def namespace_pids(pid) -> list:
    """NSpid: the process's PID in each PID namespace it is in, outermost first."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return [int(word) for word in line.split()[1:]]
    return [int(pid)]


def pid_view(target):
    """Inside its own PID namespace the container's first process is PID 1."""
    def look():
        container = running_container(target)
        pids = namespace_pids(container.pid)
        inside = pids[-1]
        own = _inode(container.pid, "pid") != _inode("self", "pid")
        return Observation(own and inside == 1, f"its first process is PID {inside} inside"
                           + ("" if own else " (in the host's PID namespace)"))
    return look


def host_pid_of_pid1(answer, target):
    """`answer` is the host PID of the container's PID 1."""
    def look():
        container = running_container(target)
        given = value_of(answer)
        try:
            given = int(given)
        except (TypeError, ValueError):
            raise ProbeFailed(f"the answer {given!r} is not a PID (a whole number)") from None
        if given == os.getpid():
            return Observation(False, "the answer is the notebook kernel's own PID")
        if not os.path.exists(f"/proc/{given}"):
            return Observation(False, "no process on the host has that PID")
        try:
            same_ns = _inode(given, "pid") == _inode(container.pid, "pid")
            inside = namespace_pids(given)[-1]
        except OSError:
            return Observation(False, "that process is not in the container's PID namespace")
        if same_ns and inside == 1:
            return Observation(True, "that host PID is PID 1 in the container")
        if same_ns:
            return Observation(False, f"that process is in the container, but it is PID {inside} there")
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
    """A user namespace: uid 0 inside the container is an unprivileged uid on the host."""
    def look():
        container = running_container(target)
        own = _inode(container.pid, "user") != _inode("self", "user")
        if not own:
            return Observation(False, "the container is in the host's user namespace: its root is the host's root")
        root = [outside for inside, outside, count in uid_map(container.pid) if inside == 0]
        outside = host_uid(container.pid)
        if not root:
            return Observation(False, "uid 0 is not mapped inside")
        return Observation(root[0] != 0 and outside != 0,
                           f"uid 0 inside is uid {root[0]} on the host; PID 1 runs as host uid {outside}")
    return look


def same_namespace(first, second, kind):
    """Two containers share one namespace of this kind (e.g. --net container:NAME)."""
    def look():
        a, b = running_container(first), running_container(second)
        same = _inode(a.pid, kind) == _inode(b.pid, kind)
        return Observation(same, f"{a.name} and {b.name}: {'one' if same else 'different'} {kind} namespace(s)")
    return look


def uid_inside(target, expected: int):
    """The container's first process runs as uid `expected` inside its user namespace
    (its host uid translated through /proc/PID/uid_map)."""
    def look():
        container = running_container(target)
        outside = host_uid(container.pid)
        for inside_start, outside_start, count in uid_map(container.pid):
            if outside_start <= outside < outside_start + count:
                inside = inside_start + outside - outside_start
                return Observation(inside == int(expected), f"its first process is uid {inside} inside")
        return Observation(False, "its uid is not mapped into its user namespace")
    return look
