"""A ready slot's first process (P): joins its cgroup ahead of time, then waits for a plan.

Runs in PID 1 of the slot's new PID namespace, forked by the helper itself (as root) or by
the slot's supervisor (runtime/supervisor/slot.py). The slow first write into `cgroup.procs` happens here, off
anyone's path; once the helper hands over a plan and the stdio fds on the slot's socket,
this process goes on with `set_up_container`, exactly as a container started without a
slot does (runtime/inside/recipe.py).

Given a plan of the helper's default image (`root_plan`: the last container's image,
mounts and defaults, in the slot's own directory), it also makes its own namespaces,
builds that container's root ahead (overlay, /proc /dev /sys, masks) and pivots into it.
Only a plan with the same root (ready_slots.prepared_root_key) is handed to such a slot.
"""

import errno
import json
import os
import signal
import socket

from labkit.linux import syscalls
from labkit.runtime.inside.mounts import make_mounts_private, switch_root
from labkit.runtime.inside.recipe import (
    build_root, enter_own_namespaces, join_cgroup, lead_own_session, say_mount_namespace_made, set_up_container,
)
from labkit.runtime.plan import StartPlan, from_wire
from labkit.runtime.protocol import MAX_MESSAGE
from labkit.runtime.step_failure import report_failure, step

SLOT_PROCESS_NAME = "labkit-slot"      # a waiting P's comm, for the leak checks


def wait_as_slot(procs_files, fds, root_plan=None, alone=False):
    """P: joins the cgroup now (and with `root_plan`, makes its namespaces, builds that
    plan's root and pivots into it), waits for its plan, then is set up as any container.
    `alone`: forked by the helper itself, which holds our mount namespace once told."""
    host_mounts = None
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)   # parent gone: so are we
        syscalls.prctl_set_name(SLOT_PROCESS_NAME)
        lead_own_session()
        join_cgroup(procs_files)
        if root_plan is not None:
            host_mounts = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)   # for another plan
            enter_own_namespaces(root_plan, fds)
            build_root(root_plan)
            # Into it now, not once a plan comes: detaching the host's tree after the
            # pivot waits for an RCU grace period (3.6 ms of each start in a profile of
            # 200 in a row with a VM busy beside them; 0.3 ms in paired runs on a quiet
            # machine, where grace periods are short).
            switch_root(root_plan.rootfs)
        plan, received, use_root = wait_for_plan(fds.pop("plan"), keep_open=alone)
        if alone:
            # No supervisor to hold our mount namespace: the helper does, once this
            # socket says one is made (recipe.say_mount_namespace_made).
            fds["mount_namespace_made"] = received.pop("mount_namespace_made")
        if host_mounts is not None and not use_root:
            leave_root_made_ahead(host_mounts, plan, fds)   # a plan of another root: built as without a slot
        elif host_mounts is not None:
            os.close(host_mounts)
            if alone:
                os.close(fds.pop("mount_namespace_made"))   # no namespace to tell of: the helper holds ours
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)
    fds.update(received)
    set_up_container(plan, fds, namespaces_made=root_plan is not None, root_built=use_root,
                     root_switched=use_root)


@step("leave the root made ahead")
def leave_root_made_ahead(host_mounts, plan, fds):
    """Back in the host's mount namespace, then in a copy of it of our own: the root built
    ahead (and the namespace it is in) is left behind, the plan's own is built next."""
    syscalls.setns(host_mounts, syscalls.CLONE_NEWNS)
    os.close(host_mounts)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    say_mount_namespace_made(fds)
    make_mounts_private(plan)


def wait_for_plan(plan_fd, keep_open=False):
    """(the plan, its fds, whether it takes the root made ahead), as the helper sent them.
    `keep_open`: the socket stays open, in the fds as "mount_namespace_made"."""
    sock = socket.socket(fileno=plan_fd)
    sock.send(b"ready")
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 8)
            break
        except InterruptedError:
            continue
    if not data:
        os._exit(0)   # the helper discarded the slot, or went away
    if keep_open:
        fds.append(sock.detach())
    else:
        sock.close()
    head, _, program = data.partition(b"\0")
    message = json.loads(head)
    if len(fds) != len(message["fd_names"]) + keep_open:
        raise OSError(errno.EBADF, "the plan came without all its file descriptors")
    plan = from_wire(StartPlan, message["plan"])
    plan.process.security.seccomp_program = program or None
    names = message["fd_names"] + (["mount_namespace_made"] if keep_open else [])
    return plan, dict(zip(names, fds)), message["use_root"]
