"""The namespaces a container's supervisor makes (or joins) before it forks PID 1.

Runs in the supervisor (runtime/supervisor/supervise.py). pid and time namespaces take
effect for the supervisor's children, so these are made here, one process above the
container; mnt and cgroup are left to the container's first process, which makes them
after joining its cgroup (a cgroup namespace is rooted where its maker stands). With
`--userns`, a short-lived child left outside writes the uid/gid map.
"""

import dataclasses
import os

from labkit.linux import syscalls
from labkit.linux.namespaces import BY_NAME, unshare_user_namespace
from labkit.runtime.step_failure import step


@step("create namespaces")
def enter_new_namespaces(plan, made_above=()):
    """unshare every kind but mnt and cgroup (the container's first process makes those,
    after joining its cgroup); pid and time take effect for our children.
    `plan.join` ({"net": "/proc/PID/ns/net"}) shares another container's namespaces
    instead of making new ones (`--net container:NAME`). `made_above`: kinds made by the
    process above us (the PID namespace, where the helper forked PID 1 itself)."""
    kinds = set(plan.namespaces) - {"mnt", "cgroup"} - set(plan.join) - set(made_above)
    join_namespaces(plan.join)
    flags = 0
    for kind in kinds:
        flags |= BY_NAME[kind].flag
    offsets = plan.time_offsets if "time" in kinds else {}
    if "user" in kinds:
        unshare_user_namespace(flags, plan.user_map, before_mapping=lambda: set_time_offsets(offsets))
    elif flags:
        syscalls.unshare(flags)
        set_time_offsets(offsets)


def join_namespaces(paths):
    # Joined before the unshare, not after: setns into a namespace the host's user
    # namespace owns needs the host's CAP_SYS_ADMIN, which a new user namespace drops.
    for kind, path in paths.items():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, BY_NAME[kind].flag)
        finally:
            os.close(fd)


def set_time_offsets(offsets):
    lines = "".join(f"{clock} {int(seconds)} 0\n" for clock, seconds in offsets.items() if seconds)
    if lines:
        with open("/proc/self/timens_offsets", "w") as handle:
            handle.write(lines)


@step("enter LABKIT_HOME before the user namespace")
def walk_from_the_home(plan):
    """The plan with its paths made relative to the directory that holds the container's
    and the image's files, which becomes our working directory (PID 1 inherits it).

    A `--userns` container's root is another host id than ours, and the directories above
    LABKIT_HOME need not let it through: a rootless user's 0700 home never does. A path
    relative to the working directory is walked from there, whatever the directories above
    it allow, and the working directory follows us into the new mount namespace; so the
    container's root needs to pass through LABKIT_HOME's own directories only (0710 for its
    group: labkit.home.open_for_user_namespace), and nothing above them is opened to anyone."""
    top = os.path.commonpath([plan.dir, plan.rootfs, plan.upper, plan.work, *plan.lower])
    os.chdir(top)

    def relative(path):
        return os.path.relpath(path, top)

    return dataclasses.replace(plan, dir=relative(plan.dir), rootfs=relative(plan.rootfs), upper=relative(plan.upper),
                               work=relative(plan.work), lower=[relative(path) for path in plan.lower])
