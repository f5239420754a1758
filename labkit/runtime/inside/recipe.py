"""The container's first process, from fork to exec: the recipe, one `@step` per stage.

Runs in PID 1 of the container's new PID namespace, forked by the helper itself as root
(runtime/helper/first_process.py), or by its supervisor (runtime/supervisor/supervise.py),
or ahead of time for a ready slot, by the helper or the slot's supervisor (runtime/inside/
slot.py then goes on with `set_up_container` once its plan comes). Read
`become_container` and `set_up_container` top to bottom: join the cgroup, make the cgroup
and mount namespaces, bring up loopback, build the root (runtime/inside/mounts.py), switch
into it, set the hostname, wait to be released, then stdio, user, capabilities, seccomp and exec
(runtime/inside/command.py). A failure names its step and reaches the helper through the
error pipe (runtime/step_failure.py).

Everything here runs in a single-threaded fork of the helper and must end in exec or
`os._exit`: never return into the helper's loop.
"""

import dataclasses
import os
import signal
import socket
import struct

from labkit.linux import syscalls
from labkit.linux.namespaces import BY_NAME
# Imported here, in the helper, not when first needed: by then the container process
# has switched root and the host's Python files are out of its sight (~0.7 ms, once).
from labkit.net import inside as network_inside
from labkit.runtime.inside.command import attach_stdio, become_user_and_exec, change_to_working_directory, run_as_init
from labkit.runtime.inside.mounts import (
    bind_etc_files, make_mounts_private, make_root_read_only, mount_kernel_filesystems, mount_root_filesystem,
    mount_tmpfs, mount_volumes, protect_kernel_paths, switch_root,
)
from labkit.runtime.step_failure import report_failure, step


def become_container(plan, fds):
    """PID 1 of the new PID namespace. Ends in exec (or in the init loop)."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)  # parent (helper or supervisor) gone: the whole container goes
        lead_own_session()
        if "user" not in plan.namespaces:
            join_cgroup(plan.cgroup.procs_files)
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)
    set_up_container(plan, fds)


def set_up_container(plan, fds, namespaces_made=False, root_built=False, root_switched=False):
    """From the container's own mount namespace to exec: in its cgroup already, and in
    every namespace its supervisor made. A pool slot's first process starts here too,
    having made its own namespaces ahead (`namespaces_made`), and for a plan of the
    image it made a root for, that root (`root_built`, at plan.rootfs), pivoted into
    already (`root_switched`: runtime/inside/slot.py)."""
    try:
        if not namespaces_made:
            enter_own_namespaces(plan, fds)
        if not root_built:
            build_root(plan)
        if not root_switched:
            switch_root(plan.rootfs)
        set_hostname(plan)
        wait_until_released(plan, fds)
        attach_stdio(fds)
        change_to_working_directory(plan.process)
        if plan.init:
            run_as_init(plan.process, fds["error"])
        become_user_and_exec(plan.process)
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)


def enter_own_namespaces(plan, fds):
    """The container's cgroup and mount namespaces, its mounts private (nothing it
    mounts from here on is seen outside), its loopback up."""
    enter_cgroup_and_mount_namespaces(plan)
    say_mount_namespace_made(fds)
    make_mounts_private(plan)
    if "net" in plan.namespaces:
        bring_up_loopback()


def build_root(plan):
    """The container's root filesystem at plan.rootfs, all but the switch into it: what
    its image and mounts decide, and nothing else of the plan (a ready slot builds one
    before its plan comes)."""
    rootfs = plan.rootfs
    mount_root_filesystem(plan)
    bind_etc_files(plan, rootfs)
    mount_kernel_filesystems(plan, rootfs)
    mount_volumes(plan, rootfs)
    mount_tmpfs(plan, rootfs)
    make_root_read_only(plan, rootfs)
    protect_kernel_paths(plan, rootfs)


def lead_own_session():
    """PID 1 leads a session and process group of its own, as runc's does (`setsid` in
    its init): in the container, `ps -o sid,pgid` shows 1 for both."""
    try:
        os.setsid()
    except PermissionError:
        pass   # a leader already: a slot's first process forked by the helper did it at birth


@step("join cgroup")
def join_cgroup(procs_files):
    for procs in procs_files:
        # raw os.open/os.write: a Python text file costs fstat, ioctl and lseek calls
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


@step("create cgroup and mount namespaces")
def enter_cgroup_and_mount_namespaces(plan):
    flags = 0
    for kind in ("cgroup", "mnt"):
        if kind in plan.namespaces:
            flags |= BY_NAME[kind].flag
    if flags:
        syscalls.unshare(flags)


def say_mount_namespace_made(fds):
    """Tell our parent, which then holds the namespace (the supervisor: runtime/supervisor/
    supervise.py `report_until_exit`; the helper: its `on_namespace_made`) so that our exit
    does not wait for its teardown."""
    made = fds.pop("mount_namespace_made", None)
    if made is not None:
        try:
            os.write(made, b"m")
        except OSError:
            pass   # our parent is gone: our death signal follows
        os.close(made)


@step("set hostname")
def set_hostname(plan):
    if "uts" in plan.namespaces:
        syscalls.sethostname(plan.hostname)


@step("bring up the loopback interface")
def bring_up_loopback():
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


@step("wait for the runtime to release the container")
def wait_until_released(plan, fds):
    """Created but not started (the OCI 'created' state): everything is set up, and the
    runtime may still configure the network from outside before the command runs."""
    report = fds.pop("report")
    go = fds.pop("go", None)
    if go is None:
        os.close(report)
        return
    os.write(report, b"ready\n")
    os.close(report)
    answer = os.read(go, 1)
    os.close(go)
    if answer != b"g":
        os._exit(0)  # the runtime went away or removed us before start
    if plan.network_inside is not None:
        network_inside.configure(dataclasses.asdict(plan.network_inside))
