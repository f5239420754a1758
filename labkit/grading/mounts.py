"""Probes of a process's filesystem view, seen from outside: what is mounted at its root
and at its /proc. They read /proc/PID/mountinfo, which the kernel writes relative to the
process's own root (pivot_root or chroot), and list /proc/PID/root/proc, the /proc the
process itself sees; nothing of the process's is run."""

import os

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import current_world, namespace_pids, running_process
from labkit.linux.namespaces import namespace_inode


def mounts_of(pid) -> dict:
    """{mount point: filesystem type} as the process sees its mounts (the last one on a
    point wins: it is the one on top)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as handle:
            lines = handle.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        raise ProbeFailed(f"process {pid} is gone") from None
    seen = {}
    for line in lines:
        fields = line.split()
        seen[fields[4]] = fields[fields.index("-") + 1]
    return seen


def root_filesystem(target, fstype="overlay"):
    """The process's / is a mount of `fstype` (an overlay root made for it, not the host's)."""
    def look():
        process = running_process(target)
        root = mounts_of(process.pid).get("/")
        if root is None:
            return Observation(False, "no mount at its / (a chroot into a plain directory?)")
        host_root = mounts_of("self").get("/")
        same_as_host = os.stat(f"/proc/{process.pid}/root").st_dev == os.stat("/").st_dev and root == host_root
        return Observation(root == fstype and not same_as_host,
                           f"its / is a mount of type {root}" + (" (the host's own root)" if same_as_host else ""))
    return look


def own_proc(target):
    """The process sees a proc mounted at /proc that lists its own PID namespace: itself as
    the PID its namespace gives it, and not the host's processes."""
    def look():
        process = running_process(target)
        kind = mounts_of(process.pid).get("/proc")
        if kind != "proc":
            return Observation(False, "nothing mounted at its /proc" if kind is None else f"its /proc is {kind}")
        inside = namespace_pids(process.pid)[-1]
        try:
            listed = sorted(int(name) for name in os.listdir(f"/proc/{process.pid}/root/proc") if name.isdigit())
        except OSError as error:
            raise ProbeFailed(f"cannot list its /proc: {error.strerror}") from None
        theirs = _lists_its_namespace(process.pid, inside)
        own = theirs and inside in listed and _not_the_graders_pid_namespace(process.pid)
        return Observation(own, f"its /proc lists {len(listed)} process(es) ({', '.join(map(str, listed[:5]))}"
                           f"{'…' if len(listed) > 5 else ''}); "
                           + (f"it is PID {inside} there" if theirs else
                              f"PID {inside} there is another process: a proc of another PID namespace"))
    return look


def _lists_its_namespace(pid, inside) -> bool:
    """Is the proc at the process's /proc one of its own PID namespace? There, the entry of
    its own number is itself; in a proc of another namespace (mounted by a process still
    outside the new one, or bound from the notebook's), that number is another process."""
    try:
        entry = os.stat(f"/proc/{pid}/root/proc/{inside}/ns/pid")
        own = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return False
    return (entry.st_dev, entry.st_ino) == (own.st_dev, own.st_ino)


def _not_the_graders_pid_namespace(pid) -> bool:
    """Is the process in a PID namespace other than the one the grader reads /proc from (the
    host's, or an ancestor of every namespace it grades)? Compared by identity: counting the
    processes each /proc lists raced with processes starting on a busy host (a host
    process's /proc counted 91 where the host's, read a moment later, had more)."""
    try:
        return namespace_inode("pid", pid) != namespace_inode("pid")
    except OSError:
        return False


def file_in_root(target, path: str, text: str):
    """The file at `path`, as the process sees it (through its own root and mounts: a
    bind-mounted /etc/hosts is the bound file), holds `text`."""
    def look():
        process = running_process(target)
        try:
            # in its root: a symlink there (to the host's /etc/shadow, say) resolves as the process
            # sees it, never from ours; and a FIFO put at `path` is refused, not waited on
            content = current_world().file_of(process.pid, path, 1 << 16).decode(errors="replace")
        except FileNotFoundError:
            return Observation(False, f"it has no {path}")
        except OSError as error:
            raise ProbeFailed(f"cannot read its {path}: {error.strerror}") from None
        lines = [line for line in content.splitlines() if text in line]
        return Observation(bool(lines), f"its {path} has {len(content.splitlines())} line(s)"
                           + (f", e.g. {lines[0]!r}" if lines else f", none with {text!r}"))
    return look
