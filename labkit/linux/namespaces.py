"""The eight namespace kinds: one table students read, and a probe of this host.

Two kernel versions per kind, as namespaces(7) and the kernel history give them: the
release that introduced the flag, and the one from which the kind was complete. The
network namespace arrived in 2.6.24 and the rest of the network stack followed through
2.6.29; user namespaces arrived in 2.6.23 and were complete in 3.8, the first release
that let an unprivileged user create one; POSIX message queues joined the IPC namespace
in 2.6.30.
"""

import errno
import functools
import os
from dataclasses import dataclass

from labkit.linux import syscalls


@dataclass(frozen=True)
class Namespace:
    name: str           # the name under /proc/<pid>/ns/
    flag: int           # CLONE_NEW* for clone(2), unshare(2), setns(2)
    flag_name: str
    isolates: str
    introduced: str     # the release whose clone(2) first accepted the flag
    complete: str       # the release from which it isolated all it isolates today

    def path(self, pid="self") -> str:
        return f"/proc/{pid}/ns/{self.name}"


NAMESPACES = (
    Namespace("mnt", syscalls.CLONE_NEWNS, "CLONE_NEWNS", "mount points", "2.4.19", "2.4.19"),
    Namespace("uts", syscalls.CLONE_NEWUTS, "CLONE_NEWUTS", "hostname and NIS domain name", "2.6.19", "2.6.19"),
    Namespace("ipc", syscalls.CLONE_NEWIPC, "CLONE_NEWIPC", "System V IPC objects and POSIX message queues",
              "2.6.19", "2.6.30"),
    Namespace("pid", syscalls.CLONE_NEWPID, "CLONE_NEWPID", "process IDs (the first process is PID 1)", "2.6.24", "2.6.24"),
    Namespace("net", syscalls.CLONE_NEWNET, "CLONE_NEWNET", "network devices, addresses, routes, ports, firewall",
              "2.6.24", "2.6.29"),
    Namespace("user", syscalls.CLONE_NEWUSER, "CLONE_NEWUSER", "user and group IDs, capabilities", "2.6.23", "3.8"),
    Namespace("cgroup", syscalls.CLONE_NEWCGROUP, "CLONE_NEWCGROUP", "the view of the cgroup hierarchy", "4.6", "4.6"),
    Namespace("time", syscalls.CLONE_NEWTIME, "CLONE_NEWTIME", "CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets", "5.6", "5.6"),
)

BY_NAME = {ns.name: ns for ns in NAMESPACES}


def lookup(name: str) -> Namespace:
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(BY_NAME)
        raise ValueError(f"unknown namespace kind {name!r}; the kinds are {known}") from None


def namespace_inode(name: str, pid="self") -> int:
    """The inode of /proc/<pid>/ns/<name>: two processes share a namespace iff these match."""
    return os.stat(lookup(name).path(pid)).st_ino


_PROBE = r"""
import json, os, sys
from labkit.linux import syscalls
from labkit.linux.namespaces import NAMESPACES
base = int(sys.argv[1])
found = {}
for ns in NAMESPACES:
    if not os.path.exists(ns.path()):
        found[ns.name] = "kernel has no /proc/self/ns/" + ns.name
        continue
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(base | ns.flag)
            os._exit(0)
        except OSError as error:
            os._exit(error.errno or 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    found[ns.name] = None if code == 0 else os.strerror(code)
print(json.dumps(found))
"""


@functools.lru_cache(maxsize=2)
def available_namespaces(inside_user_namespace=False) -> dict:
    """{kind: None if this host lets labkit create it, else the reason it cannot}.

    Probed in a fresh single-threaded interpreter: unshare() in this process would
    change what it sees, and forking a multi-threaded Jupyter kernel is unsafe.
    `inside_user_namespace` asks for each kind together with a new user namespace,
    unshare(CLONE_NEWUSER | kind), as a rootless container makes them: without
    CAP_SYS_ADMIN only that way works.
    """
    import json
    import subprocess
    import sys

    base = syscalls.CLONE_NEWUSER if inside_user_namespace else 0
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(base)], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return {ns.name: f"probe failed: {probe.stderr.strip()[-200:]}" for ns in NAMESPACES}
    return json.loads(probe.stdout)


@functools.lru_cache(maxsize=1)
def in_initial_user_namespace() -> bool:
    """Is this process in the host's own user namespace? There, uid_map maps every id to
    itself; inside a user namespace (a grading sandbox, a rootless session) root lacks
    what only the host's CAP_SYS_ADMIN grants: mknod, device cgroup rules, trusted.* xattrs."""
    try:
        with open("/proc/self/uid_map") as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except FileNotFoundError:
        return True  # a kernel without user namespaces has only the initial one


def outside_ids(kind: str):
    """A function giving, for a uid or gid as this process sees it (a file's owner, its own
    euid), the id it stands for in the parent user namespace (the host's, in the initial
    namespace itself); None where it stands for no one in particular: in a user namespace,
    every owner outside its map shows as the overflow id (65534), whoever that owner is.
    `kind`: "uid" or "gid"."""
    try:
        with open(f"/proc/self/{kind}_map") as handle:
            lines = [tuple(int(field) for field in line.split()) for line in handle]
        with open(f"/proc/sys/kernel/overflow{kind}") as handle:
            overflow = int(handle.read())
    except FileNotFoundError:
        return lambda inside: inside  # a kernel without user namespaces has only the initial one
    if lines == [(0, 0, 4294967295)]:
        return lambda inside: inside

    def outside(inside: int) -> int | None:
        if inside == overflow:
            return None  # also when the map maps it: an unmapped owner would look the same
        return next((first_outside + inside - first for first, first_outside, count in lines
                     if first <= inside < first + count), None)
    return outside


def unshare_user_namespace(flags, user_map, before_mapping=lambda: None):
    """A new user namespace needs its uid/gid map written from the parent namespace:
    a short-lived child that stays outside writes it for us.

    `before_mapping` runs right after the unshare, while we still are the host's root
    by uid: once we setuid into the new namespace the kernel marks us non-dumpable and
    our own /proc/self files (timens_offsets among them) stop being ours to write."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    parent = os.getpid()
    mapper = os.fork()
    if mapper == 0:
        os.close(ready_w)
        os.close(done_r)
        os.read(ready_r, 1)
        try:
            line = f"0 {user_map.uid} {user_map.count}\n"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{parent}/{name}", "w") as handle:
                    handle.write(line)
            os.write(done_w, b"k")
        finally:
            os._exit(0)
    os.close(ready_r)
    os.close(done_w)
    try:
        syscalls.unshare(flags)
        before_mapping()
    finally:
        os.write(ready_w, b"g")
        os.close(ready_w)
        answer = os.read(done_r, 1)
        os.close(done_r)
        os.waitpid(mapper, 0)
    if answer != b"k":
        raise OSError(errno.EPERM, "could not write the user namespace's uid/gid map")
    os.setgid(0)  # become root of the new namespace (host uid user_map.uid)
    os.setuid(0)
