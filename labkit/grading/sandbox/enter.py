"""The way into a sandbox, run as the kernel's launch command:
`python -m labkit.grading.sandbox.enter PID1 PROCS[,PROCS...] LOG -- ARGV...`.

As the host's root: join the sandbox's cgroup, then every namespace of its PID 1 at once
through a pidfd (the kernel orders the user namespace right), become root of the
sandbox's user namespace, and fork: the child is in the sandbox's PID namespace and
execs ARGV there. This process stays outside and waits, so jupyter_client's Popen, its
process group (interrupts, kills) and its exit status keep working; the child dies with it.
"""

import os
import signal
import sys

from labkit.grading.sandbox.first_process import exit_with
from labkit.linux import syscalls
from labkit.linux.syscalls import (
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS,
)

EVERY_KIND = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP | CLONE_NEWPID


def main(argv):
    pid1, procs, log = int(argv[1]), argv[2], argv[3]
    command = argv[argv.index("--") + 1:]
    cwd = os.getcwd()
    for path in procs.split(","):
        with open(path, "w") as handle:
            handle.write("0")
    pidfd = os.pidfd_open(pid1)
    syscalls.setns(pidfd, EVERY_KIND)
    os.close(pidfd)
    os.setgroups([])
    os.setgid(0)
    os.setuid(0)
    os.chdir(cwd)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(number, signal.SIG_IGN)  # the process group's signals are for the kernel
    child = os.fork()
    if child == 0:
        run(command, log)
    exit_with(child)


def run(command, log):
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        # Nothing of the grader's: not its terminal (TIOCSTI), not its pipes.
        null = os.open("/dev/null", os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 65536)
        os.execvp(command[0], command)
    except BaseException as error:  # noqa: BLE001
        os.write(2, f"labkit sandbox: cannot start {command[0]}: {error}\n".encode())
    finally:
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv)
