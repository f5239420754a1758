"""A ready slot's supervisor (S): made by the helper ahead of any plan, with the default
namespaces, parent of the slot's first process.

Runs in its own process, forked by the helper in its idle time (runtime/helper/
ready_slots.py explains the slots). It does what runtime/supervisor/supervise.py does
for a container, with no plan yet: setsid, a fresh cgroup, the default namespaces but
mnt and cgroup, one fork (runtime/inside/slot.py), then the same `init`/`exit` reports.
"""

import dataclasses
import os
import signal

from labkit.cgroups.slot_cgroups import make_slot_cgroup
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
    slots' sockets, a held container's `go` pipe must not be kept open by a slot."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def supervise_slot(hierarchy, cgroup_name, helper_pid, fds, root_plan=None):
    """S: the first half of `supervise` (runtime/supervisor/supervise.py), with no plan yet
    (default namespaces). `root_plan`: the root its first process makes ahead, which
    then mounts this slot's cgroup."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)   # the helper died: so do we
        if os.getppid() != helper_pid:
            os._exit(0)   # it died before the death signal was set
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        cgroup = make_slot_cgroup(hierarchy, cgroup_name.split("/", 1)[1])
        make_slot_namespaces()
        if root_plan is not None:
            make_slot_directory(root_plan)
            root_plan = dataclasses.replace(root_plan, cgroup=CgroupPlacement(
                procs_files=cgroup.procs_files(), version=cgroup.version,
                v1_mounts=cgroup.mount_table() if cgroup.version == 1 else []))
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
    empty: the container's are written at start). Made here, not in the helper: on a busy
    disk its mkdirs took a median of 22 ms, in front of the next request."""
    ContainerDir(root_plan.dir).make({name: "" for name in root_plan.init_files})


@step("create namespaces")
def make_slot_namespaces():
    """The default kinds but mnt and cgroup: the first process makes those once its plan
    has come (after joining its cgroup: a cgroup namespace is rooted where its maker stands)."""
    flags = 0
    for kind in DEFAULT_NAMESPACES:
        if kind not in ("mnt", "cgroup"):
            flags |= BY_NAME[kind].flag
    syscalls.unshare(flags)
