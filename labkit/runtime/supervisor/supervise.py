"""The supervisor of a container: the helper's child, on the host, parent of PID 1.

Runs in its own process, forked by the helper (`Zygote.fork_supervisor`) so that the
helper's loop never waits on a container: it sets its death signal, starts a session,
makes the container's namespaces (runtime/supervisor/namespaces.py) and forks the
container's first process (runtime/inside/recipe.py). It stays outside the new PID
namespace, waits for that process, and reports `init PID` and `exit STATUS` to the
helper on its report pipe. It must end in `os._exit`: never return into the helper's loop.
"""

import dataclasses
import errno
import os
import signal

from labkit.linux import syscalls
from labkit.linux.sockets import peer_gone
from labkit.runtime.inside.recipe import become_container, join_cgroup
from labkit.runtime.step_failure import report_failure, step
from labkit.runtime.supervisor.namespaces import enter_new_namespaces, walk_from_the_home


def supervise(plan, fds):
    """Runs in the helper's child. Makes the namespaces, forks the container, waits for it."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)  # the helper died: so do we
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        if "user" in plan.namespaces:
            join_cgroup(plan.cgroup.procs_files)  # before the user namespace takes our rights
            plan = walk_from_the_home(plan)
        fuse = start_fuse_overlay(plan)   # before the new PID namespace: not one of the container's processes
        if fuse is not None:
            plan = dataclasses.replace(plan, fuse_fds=[fuse.device, fuse.mounted])
        enter_new_namespaces(plan)
        fds["mount_namespace_made"], made_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except BaseException as error:  # noqa: BLE001 — any failure must reach the user
        report_failure(fds["error"], error)
    if pid == 0:
        os.close(fds.pop("mount_namespace_made"))
        become_container(plan, {**fds, "mount_namespace_made": made_w})
    os.close(made_w)
    if fuse is not None:
        os.close(fuse.device)   # the container's first process mounts its copy, and says so
        os.close(fuse.mounted)
    report_until_exit(pid, fds, fuse)


def start_alone(plan, fds):
    """PID 1 forked by the helper itself into the PID namespace it made (runtime/helper/
    first_process.py): what a supervisor does before its fork, then the container's recipe.
    `fds["mount_namespace_made"]` is a socket: its end says the helper is gone."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)   # the helper died: the whole container goes
        if peer_gone(fds["mount_namespace_made"]):
            os._exit(0)   # it died before the death signal was set (our getppid() is 0: no help)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        enter_new_namespaces(plan, made_above=("pid",))
    except BaseException as error:  # noqa: BLE001 — any failure must reach the user
        report_failure(fds["error"], error)
    become_container(plan, fds)


@step("start fuse-overlayfs for the container's root")
def start_fuse_overlay(plan):
    """The FUSE daemon serving the root (images/fuse_overlay.py), where the helper chose
    fuse-overlayfs; None for the kernel's overlay."""
    if plan.overlay != "fuse":
        return None
    if "user" in plan.namespaces:
        # The kernel takes a /dev/fuse descriptor only from the user namespace that mounts it.
        raise OSError(errno.EOPNOTSUPP, "a --userns container needs the kernel's overlay in a user namespace, "
                      "and this labkit serves roots with fuse-overlayfs (LABKIT_OVERLAY; see labkit doctor)")
    from labkit.images.fuse_overlay import start_daemon   # rootless only: not in every helper's start-up

    return start_daemon(plan.lower, plan.upper, plan.work, volatile=plan.auto_remove)


def report_until_exit(pid, fds, fuse=None):
    """The supervisor's part from the fork on: tell the helper the container's PID, wait
    for it, tell the helper how it ended.

    It holds the container's mount namespace from the moment its first process made it
    (`fds["mount_namespace_made"]`: that process writes a byte there) until after the
    exit is reported. Without the hold, the exit of the namespace's last process takes
    the namespace down inside that exit: the overlay is unmounted and its upper
    filesystem synced (an ext4 journal commit and a cache flush: 1 ms on a quiet disk,
    tens of ms on a busy one) before the kernel tells us the process has exited. With it,
    that work happens when this process lets go, after the helper has the exit status.
    The hold is a file descriptor of this process: whatever ends it (its `_exit`, the
    helper's death taking it by its death signal, a SIGKILL) lets go of the namespace."""
    for name in ("error", "stdin", "stdout", "stderr", "go"):
        if fds.get(name) is not None:
            os.close(fds[name])
    report = fds["report"]
    os.write(report, f"init {pid}\n".encode())
    mount_namespace = hold_mount_namespace(pid, fds.get("mount_namespace_made"))
    _, status = os.waitpid(pid, 0)   # PEP 475: retried after a signal
    os.write(report, f"exit {status}\n".encode())
    if mount_namespace is not None:
        os.close(mount_namespace)   # the overlay's unmount and sync, after the exit is told
    if fuse is not None:
        from labkit.images.fuse_overlay import stop_daemon   # imported by start_fuse_overlay already

        stop_daemon(fuse, mounted=mount_namespace is not None)   # ends with its mount
    os._exit(0)   # EOF on the report pipe: the helper reaps us and tears the container down


def hold_mount_namespace(pid, made_r):
    """An fd of PID `pid`'s mount namespace once it says it made one (None: it exec'd or
    failed first, or is gone already; the namespace then goes with it, as without a hold)."""
    if made_r is None:
        return None
    try:
        said = os.read(made_r, 1)
    except OSError:
        said = b""
    os.close(made_r)
    if said != b"m":
        return None
    try:
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
