"""A ready slot's first steps, made by the helper ahead of any plan: a session, a fresh
cgroup, the default namespaces but mnt and cgroup, the directory of a root made ahead.

As root on the host, the helper forks the slot's first process (P) itself, into a PID
namespace it made for it (runtime/helper/ready_slots.py): P takes these steps alone
(`start_alone`) and goes on in runtime/inside/slot.py; the helper watches it on a pidfd
and holds its mount namespace. Where the helper cannot go back to its own PID namespace
after making one (a rootless helper in its user namespace: joining the host's PID
namespace needs the host's CAP_SYS_ADMIN), it forks a supervisor (S) which takes them,
forks P and reports `init`/`exit` as runtime/supervisor/supervise.py does for a container
(`supervise_slot`).
"""

import dataclasses
import os
import signal

from labkit.cgroups.slot_cgroups import make_slot_cgroup, owner_of, spare_prefix
from labkit.linux import syscalls
from labkit.linux.namespaces import BY_NAME
from labkit.runtime.inside.slot import wait_as_slot
from labkit.runtime.container_dir import ContainerDir
from labkit.runtime.plan import CgroupPlacement
from labkit.runtime.spec import DEFAULT_NAMESPACES
from labkit.runtime.step_failure import report_failure, step
from labkit.runtime.supervisor.supervise import report_until_exit


def keep_only(fds: set) -> None:
    """Close every inherited descriptor but these (and stdio): the owner's socket, other
    slots' sockets, a held container's `go` pipe must not be kept open by a slot. One
    close_range(2) call per gap between the kept ones (os.closerange), not a close per
    descriptor listed from /proc/self/fd."""
    low = 3
    for fd in sorted(fd for fd in fds if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


MAX_FD = 2 ** 31 - 1   # close_range's upper bound, taken as "every descriptor above"


def start_alone(hierarchy, cgroup_name, helper_pid, fds, root_plan=None):
    """P forked by the helper in its new PID namespace (PID 1 there): S's steps, then
    the slot's wait (runtime/inside/slot.py). `root_plan`: the root it makes ahead."""
    try:
        cgroup, root_plan = first_steps(hierarchy, cgroup_name, helper_pid, root_plan, pid=False)
    except BaseException as error:  # noqa: BLE001 — the helper finds the slot dead
        report_failure(fds["error"], error)
    wait_as_slot(cgroup.procs_files(), fds, root_plan, alone=True)


def first_steps(hierarchy, cgroup_name, helper_pid, root_plan, pid):
    """Death signal, session, cgroup, namespaces (`pid`: a PID namespace for the children
    too), the root's directory: (the cgroup, `root_plan` placed in it)."""
    syscalls.prctl_set_pdeathsig(signal.SIGKILL)   # the helper died: so do we
    # Died before the death signal was set? S asks; P in its own PID namespace sees no
    # parent (getppid() is 0) and learns it from its plan socket's end instead.
    if pid and os.getppid() != helper_pid:
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()   # out of the owner's process group (a kernel's interrupt is not for containers)
    cgroup = make_slot_cgroup(hierarchy, cgroup_name.split("/", 1)[1])
    make_slot_namespaces(pid)
    if root_plan is not None:
        make_slot_directory(root_plan)
        root_plan = dataclasses.replace(root_plan, cgroup=CgroupPlacement(
            procs_files=cgroup.procs_files(), version=cgroup.version,
            v1_mounts=cgroup.mount_table() if cgroup.version == 1 else []))
    return cgroup, root_plan


def supervise_slot(hierarchy, cgroup_name, helper_pid, fds, root_plan=None):
    """S: the first half of `supervise` (runtime/supervisor/supervise.py), with no plan yet
    (default namespaces). `root_plan`: the root its first process makes ahead, which
    then mounts this slot's cgroup."""
    try:
        cgroup, root_plan = first_steps(hierarchy, cgroup_name, helper_pid, root_plan, pid=True)
        fds["mount_namespace_made"], made_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except BaseException as error:  # noqa: BLE001 — the helper finds the slot dead at `take`
        report_failure(fds["error"], error)
    if pid == 0:
        os.close(fds.pop("mount_namespace_made"))
        wait_as_slot(cgroup.procs_files(), {**fds, "mount_namespace_made": made_w}, root_plan)
    os.close(made_w)
    os.close(fds.pop("plan"))
    report_until_exit(pid, fds)


@step("make the slot's directory")
def make_slot_directory(root_plan):
    """The directory of the root made ahead, laid out as a container's (its /etc files
    empty: the container's are written at start), from a spare where the janitor kept one
    (ContainerDir.make_spare). Made here, not in the helper: on a busy disk its mkdirs
    took a median of 22 ms, in front of the next request."""
    directory = ContainerDir(root_plan.dir)
    init_files = {name: "" for name in root_plan.init_files}
    prefix = spare_prefix(*owner_of(directory.path.name))
    try:
        spares = sorted(entry.path for entry in os.scandir(directory.path.parent) if entry.name.startswith(prefix))
    except OSError:
        spares = []
    if not directory.make_from_spare(spares, init_files):
        directory.make(init_files)


@step("create namespaces")
def make_slot_namespaces(pid=True):
    """The default kinds but mnt and cgroup: the first process makes those once its plan
    has come (after joining its cgroup: a cgroup namespace is rooted where its maker stands).
    Not `pid` in a first process the helper forked into its PID namespace."""
    flags = 0
    for kind in DEFAULT_NAMESPACES:
        if kind not in ("mnt", "cgroup") and (pid or kind != "pid"):
            flags |= BY_NAME[kind].flag
    syscalls.unshare(flags)
