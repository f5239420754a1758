"""Cgroups without root: the subtree a user was delegated, or none at all.

An ordinary user may make cgroups and set limits only below a directory someone with root
handed over. systemd's `Delegate=yes` does it for every user session on a cgroup v2 host:
it chowns `user@UID.service` (the directory and its `cgroup.procs`,
`cgroup.subtree_control`, `cgroup.threads` files) to the user. The kernel then lets that
user make children there, enable for them the controllers the parent gave
(`cgroup.controllers`), write their limits and move processes between cgroups below it,
never above it (moving a process needs write access to `cgroup.procs` of the common
ancestor of both cgroups). cgroup v1 has no safe delegation: there a rootless container
runs without limits, and every limit asked for says so (`limits_off_lines`).

    delegation = find_delegation()       # from /proc/self/cgroup, up to the highest dir we own
    delegation.root, delegation.controllers, delegation.why_not
"""

import os
from dataclasses import dataclass

from labkit.cgroups.base import Hierarchy, Limits, read_text
from labkit.cgroups.none import NoCgroups
from labkit.cgroups.v2 import KIND_CONTROLLERS, HierarchyV2, unified_mount

# What systemd chowns besides the directory; without them a user can make children but
# neither move processes in nor enable controllers for them.
DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control")

FIX = ("limits need a cgroup v2 host that delegates a subtree to you (systemd does it for "
       "every user session: Delegate=yes), or the VM kernel: `labkit lab --vm`")


@dataclass(frozen=True)
class Delegation:
    root: str | None             # absolute path of the delegated subtree; None: there is none
    controllers: frozenset       # controllers usable below it, from its cgroup.controllers
    why_not: str = ""            # why there is no delegation (None root), for the one line


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The cgroup v2 path of this process (the `0::/path` line), None where there is none."""
    for line in proc_self_cgroup.splitlines():
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy_id == "0" and controllers == "":
            return path
    return None


def owned_by(uid: int):
    """The default ownership test: the path exists and `uid` owns it (as systemd chowns)."""
    def owned(path: str) -> bool:
        try:
            return os.stat(path).st_uid == uid
        except OSError:
            return False
    return owned


def delegated(directory: str, owned) -> bool:
    return owned(directory) and all(owned(os.path.join(directory, name)) for name in DELEGATED_FILES)


def find_delegation(mount: str | None, own: str | None, owned, unified: bool) -> Delegation:
    """The highest cgroup, from this process's own up to (not including) the mount's root,
    whose directory and delegated files are owned by us, every one between included."""
    if not unified:
        return Delegation(None, frozenset(), "this host runs cgroup v1, which delegates nothing to ordinary users")
    if mount is None or own is None:
        return Delegation(None, frozenset(), "no cgroup v2 hierarchy is mounted here")
    root = None
    path = own.rstrip("/")
    while path:
        directory = mount + path
        if not delegated(directory, owned):
            break
        root = directory
        path = path.rsplit("/", 1)[0]
    if root is None:
        return Delegation(None, frozenset(), f"your cgroup ({own}) is not delegated to you: it and its "
                                             "cgroup.procs and cgroup.subtree_control belong to another user")
    try:
        controllers = frozenset(read_text(os.path.join(root, "cgroup.controllers")).split())
    except OSError:
        controllers = frozenset()
    return Delegation(root, controllers)


def host_delegation(uid: int | None = None, mount: str | None = None) -> Delegation:
    """This process's delegation on this host. A hybrid host's cgroup2 (at
    /sys/fs/cgroup/unified) holds no controllers: only a unified host can delegate limits.
    `mount` names a cgroup2 mount to look in as if it were unified (doctor's test does, on
    a hybrid host); None: the host's own."""
    uid = os.geteuid() if uid is None else uid
    with open("/proc/self/cgroup") as handle:
        own = own_cgroup(handle.read())
    unified = mount is not None
    mount = mount or unified_mount()
    return find_delegation(mount, own, owned_by(uid), unified=unified or mount == "/sys/fs/cgroup")


def limits_off_lines(asked: dict, controllers: set, why_not: str) -> list:
    """One line per limit that will not hold: `asked` maps a limit kind (memory, cpu, pids,
    io) to how the user asked for it (`--memory 64m`, `--memory 256m (class default in FILE)`)."""
    lines = []
    for kind, how in asked.items():
        if kind in controllers:
            continue
        reason = why_not or f"the {kind} controller is not delegated to you"
        lines.append(f"labkit: {how} is not enforced: this container runs without a {kind} limit, "
                     f"because {reason}; {FIX}")
    return lines


def enforceable(limits: Limits, controllers: set) -> Limits:
    """`limits` without what `controllers` cannot enforce; device rules always go (see
    DelegatedHierarchy)."""
    has = controllers.__contains__
    return Limits(memory=limits.memory if has("memory") else None,
                  cpus=limits.cpus if has("cpu") else None,
                  pids=limits.pids if has("pids") else None,
                  io_read_bps=dict(limits.io_read_bps) if has("io") else {},
                  io_write_bps=dict(limits.io_write_bps) if has("io") else {},
                  devices=None)


class DelegatedHierarchy(HierarchyV2):
    """cgroup v2 below a delegated subtree: `labkit/<id>` under it, as root's is under the
    mount. Device rules are not offered: attaching a BPF device program needs
    CAP_SYS_ADMIN in the host's namespace; rootless, the user namespace refuses mknod and
    the device nodes are the host's, bound in with their own permissions."""

    def __init__(self, delegation: Delegation):
        super().__init__(root=delegation.root)
        self.delegation = delegation

    @property
    def controllers(self) -> set:
        return {kind for kind, controller in KIND_CONTROLLERS.items() if controller in self._available()}


def rootless_hierarchy(delegation: Delegation | None = None) -> Hierarchy:
    """An ordinary user's containers' hierarchy: below the delegated subtree, or none."""
    delegation = delegation or host_delegation()
    if delegation.root:
        return DelegatedHierarchy(delegation)
    return NoCgroups(f"{delegation.why_not}; {FIX}", delegation)
