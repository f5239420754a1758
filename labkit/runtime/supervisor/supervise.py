"""The supervisor of a container: the helper's child, on the host, parent of PID 1.

Runs in its own process, forked by the helper (`Zygote.fork_supervisor`) so that the
helper's loop never waits on a container: it sets its death signal, starts a session,
makes the container's namespaces (runtime/supervisor/namespaces.py) and forks the
container's first process (runtime/inside/recipe.py). It stays outside the new PID
namespace, waits for that process, and reports `init PID` and `exit STATUS` to the
helper on its report pipe. It must end in `os._exit`: never return into the helper's loop.
"""

import os
import signal

from labkit.linux import syscalls
from labkit.runtime.inside.recipe import become_container, join_cgroup
from labkit.runtime.step_failure import report_failure
from labkit.runtime.supervisor.namespaces import enter_new_namespaces


def supervise(plan, fds):
    """Runs in the helper's child. Makes the namespaces, forks the container, waits for it."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)  # the helper died: so do we
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        if "user" in plan.namespaces:
            join_cgroup(plan.cgroup.procs_files)  # before the user namespace takes our rights
        enter_new_namespaces(plan)
        pid = os.fork()
    except BaseException as error:  # noqa: BLE001 — any failure must reach the user
        report_failure(fds["error"], error)
    if pid == 0:
        become_container(plan, fds)
    report_until_exit(pid, fds)


def report_until_exit(pid, fds):
    """The supervisor's part from the fork on: tell the helper the container's PID, wait
    for it, tell the helper how it ended."""
    for name in ("error", "stdin", "stdout", "stderr", "go"):
        if fds.get(name) is not None:
            os.close(fds[name])
    report = fds["report"]
    os.write(report, f"init {pid}\n".encode())
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    os.write(report, f"exit {status}\n".encode())
    os._exit(0)
