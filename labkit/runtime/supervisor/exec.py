"""`exec`: run another process inside a running container by joining its cgroup and
namespaces (what `nsenter` and `docker exec` do).

Runs in an exec's supervisor, forked by the helper (`Zygote.op_exec`), and in the two
forks below it: the child joins the container's namespaces, the grandchild (inside the
pid and time namespaces, which apply to children only) ends as the container's own first
process does, in runtime/inside/command.py.
"""

import os
import signal

from labkit.linux import syscalls
from labkit.linux.namespaces import BY_NAME
from labkit.runtime.inside.command import attach_stdio, become_user_and_exec
from labkit.runtime.inside.recipe import join_cgroup
from labkit.runtime.step_failure import report_failure, step

# user first (it grants the rights the others need); mnt last (it changes our root).
ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


def supervise_exec(plan, fds):
    """`plan` is an ExecPlan. Runs in the helper's child: join, fork the process, wait for it, report."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        join_cgroup(plan.cgroup_procs)
        namespace_fds = open_namespaces(plan.target_pid, plan.namespaces)
        pid = os.fork()
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)
    if pid == 0:
        try:
            syscalls.prctl_set_pdeathsig(signal.SIGKILL)
            join_namespaces(namespace_fds)
            # pid and time namespaces apply to children only: one more fork puts the
            # command inside them.
            grandchild = os.fork()
            if grandchild:
                os.close(fds["error"])
                _, status = os.waitpid(grandchild, 0)
                os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
            fds.pop("report", None)
            attach_stdio(fds)
            os.chdir(plan.process.workdir)
            become_user_and_exec(plan.process)
        except BaseException as error:  # noqa: BLE001
            report_failure(fds["error"], error)
    for name in ("error", "stdin", "stdout", "stderr"):
        if fds.get(name) is not None:
            os.close(fds[name])
    for fd in namespace_fds.values():
        os.close(fd)
    os.write(fds["report"], f"init {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(fds["report"], f"exit {status}\n".encode())
    os._exit(0)


@step("open the container's namespaces")
def open_namespaces(target_pid, kinds):
    return {kind: os.open(BY_NAME[kind].path(target_pid), os.O_RDONLY | os.O_CLOEXEC)
            for kind in ORDER if kind in kinds}


@step("join the container's namespaces")
def join_namespaces(namespace_fds):
    for kind in ORDER:
        if kind in namespace_fds:
            syscalls.setns(namespace_fds[kind], BY_NAME[kind].flag)
            os.close(namespace_fds[kind])
    # setns(CLONE_NEWNS) leaves the root where it was; the container's root is "/" of
    # its mount namespace, reached through our new cwd.
    os.chdir("/")
    if "user" in namespace_fds:
        # Joining a user namespace keeps our host uid 0, which it does not map (it shows
        # as 65534 inside, and files we make would belong to host root): become its root,
        # host uid user_map.uid, as the container's first process did.
        os.setgid(0)
        os.setuid(0)

