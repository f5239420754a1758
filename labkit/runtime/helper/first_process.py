"""A container's first process forked by the helper itself, with no supervisor between.

Runs in the helper. As root on the host, the helper makes a container's PID namespace
itself (`unshare(CLONE_NEWPID)`: it takes effect for the caller's children only), forks
the container's PID 1 into it and goes back into its own (`setns`). PID 1 makes the other
namespaces itself (runtime/supervisor/supervise.py `start_alone`, or a ready slot's:
runtime/supervisor/slot.py). The helper then waits for it on a pidfd and holds its mount
namespace (`hold_mount_namespace`), as a supervisor did: no labkit process is left in
the container's namespaces, as with runc, whose `runc init` execs the command.

Why: a supervisor was a whole Python process per container (forked from the helper, its
copy-on-write faults, its exit), 6.5 ms of CPU a container in a `perf` profile of 200
back-to-back starts, a third of what the stream cost. Where the helper could not go back
to its PID namespace (`setns` into a PID namespace needs CAP_SYS_ADMIN in the user
namespace that owns it: a rootless helper lacks the host's; a seccomp profile around labkit
may refuse it: tried once, in a child), or a plan needs more than the
helper can make for it (`alone_can_start`: a user or time namespace, namespaces joined,
fuse-overlayfs), a supervisor does it as before.
"""

import os
import signal

from labkit.linux import capabilities, syscalls
from labkit.linux.namespaces import in_initial_user_namespace
_OWN = []   # [fd or None] once asked: one descriptor per helper, kept for its life


def own_pid_namespace():
    """An fd of the helper's own PID namespace, to go back to after making a container's;
    None where going back is not allowed (the module's doc): supervisors then fork PID 1."""
    if not _OWN:
        _OWN.append(_open_own_pid_namespace())
    return _OWN[0]


def _open_own_pid_namespace():
    if os.geteuid() != 0 or not in_initial_user_namespace():
        return None
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if not _can_go_back(own):
        os.close(own)
        return None
    return own


def _can_go_back(own) -> bool:
    """Both `unshare(CLONE_NEWPID)` and the `setns` back need CAP_SYS_ADMIN; where the
    helper has it and no seccomp filter, nothing else refuses them. Under a filter (a
    profile around labkit may allow the `unshare` and refuse the `setns`: the helper must
    not learn that after its own unshare) they are tried in a child, once (a 2 ms fork of
    the helper, which every `labkit run` paid before it was needed only there)."""
    if not capabilities.has("sys_admin"):
        return False
    if not _under_seccomp_filter():
        return True
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(syscalls.CLONE_NEWPID)
            syscalls.setns(own, syscalls.CLONE_NEWPID)
            code = 0
        except BaseException:  # noqa: BLE001 — any failure: the supervisor's way
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _under_seccomp_filter() -> bool:
    with open("/proc/self/status") as status:
        return any(line.startswith("Seccomp:") and line.split()[1] != "0" for line in status)


def fork_into_new_pid_namespace(own_pid_namespace) -> int:
    """os.fork, the child PID 1 of a new PID namespace; the helper's own later children
    are in its own namespace again (back with `setns` before this returns). Where going
    back fails, every later fork would land in that container's namespace: the helper
    stops (its children die with it)."""
    syscalls.unshare(syscalls.CLONE_NEWPID)
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:   # the helper (the fork done or failed), not its child
            try:
                syscalls.setns(own_pid_namespace, syscalls.CLONE_NEWPID)
            except OSError as error:
                os.write(2, f"labkit helper: cannot go back to its PID namespace ({error}); stopping\n".encode())
                os._exit(70)
    return pid


def hold_mount_namespace(pid: int):
    """An fd of PID 1's mount namespace, held so that its teardown is not part of PID 1's
    exit (runtime/supervisor/supervise.py `report_until_exit` says why); None: gone already."""
    try:
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)   # PEP 475: retried after a signal
    except ChildProcessError:
        pass


def alone_can_start(plan) -> bool:
    """Can PID 1 of this plan be forked by the helper and make the rest itself? Its own
    PID namespace, nothing joined, no user or time namespace (made before the PID
    namespace, by the process above the container), the kernel's overlay."""
    return ("pid" in plan.namespaces and "user" not in plan.namespaces and "time" not in plan.namespaces
            and not plan.join and plan.overlay == "kernel")
