"""The last steps before the command: stdio, working directory, user, capabilities,
seccomp, exec (or `--init`'s small reaper in front of it).

Runs in the container's first process, after its root is switched (runtime/inside/
recipe.py), and in an `exec`'s last fork (runtime/supervisor/exec.py): the same end for
both, so an exec'd process gets the container's user, capabilities and seccomp filter.
"""

import errno
import fcntl   # here, not in take_terminal: the host's modules are out of reach after the root switch
import os
import signal
from termios import TIOCSCTTY

from labkit.files import read_regular
from labkit.linux import capabilities, seccomp, syscalls
from labkit.runtime.inside.mounts import ensure_dir
from labkit.runtime.step_failure import SetupError, report_failure, step


@step("attach stdin, stdout and stderr")
def attach_stdio(fds):
    for target, name in enumerate(("stdin", "stdout", "stderr")):
        fd = fds.get(name)
        if fd is None:
            fd = os.open("/dev/null", os.O_RDWR)
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)


@step("take the terminal")
def take_terminal():
    """`-t`: stdin is a pty's slave; become a session leader and make it this session's
    controlling terminal, so that ^C, ^Z and window size changes reach the foreground
    process group (a shell's job control) as on any terminal."""
    try:
        os.setsid()
    except PermissionError:
        pass   # a session leader already
    fcntl.ioctl(0, TIOCSCTTY, 0)


@step("change to the working directory")
def change_to_working_directory(process):
    try:
        ensure_dir(process.workdir)
        os.chdir(process.workdir)
    except OSError as error:   # named: `-w /proc/self/fd/9` said only "Not a directory"
        raise OSError(error.errno, f"{process.workdir}: {error.strerror}") from None


TABLE_LIMIT = 4 << 20   # bytes of /etc/passwd or /etc/group read at most


def table_lines(path) -> list:
    """The lines of the container's /etc/passwd or /etc/group; none where there is no
    regular file. The container made that file, and an `exec` reads it in the container,
    before its command, with every capability: a FIFO there held every later exec
    forever, and a link to /dev/zero would have read until memory ran out."""
    try:
        text = read_regular(path, TABLE_LIMIT)
    except FileNotFoundError:
        return []
    except OSError as error:
        if error.errno == errno.EINVAL:   # not a regular file
            return []
        raise
    return text.decode("utf-8", "replace").splitlines()


def resolve_user(user):
    """'uid[:gid]' or 'name[:group]' looked up in the container's /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")
    uid = gid = None
    if name.isdigit():
        uid = int(name)
    else:
        uid, gid = _lookup("/etc/passwd", name, "user")
    if group:
        gid = int(group) if group.isdigit() else _lookup("/etc/group", group, "group")[0]
    return uid, uid if gid is None else gid


def home_of(user):
    """The home directory /etc/passwd gives the user (by name or uid), else "/" (runc's
    default for a user without an entry)."""
    name = user.partition(":")[0]
    for line in table_lines("/etc/passwd"):
        fields = line.split(":")
        if len(fields) > 5 and name in (fields[0], fields[2]):
            return fields[5] or "/"
    return "/"


def supplementary_groups(user, gid):
    """The primary group and every group of /etc/group that lists the user by name, as
    runc gives a process (`id -G` shows the same under podman and labkit)."""
    name = user.partition(":")[0]
    groups = [gid]
    for line in table_lines("/etc/group"):
        fields = line.strip().split(":")
        if len(fields) > 3 and fields[2].isdigit() and name in fields[3].split(","):
            groups.append(int(fields[2]))
    return sorted(set(groups))


def _lookup(table, name, what):
    for line in table_lines(table):
        fields = line.strip().split(":")
        if fields[0] == name and len(fields) > 3:
            return int(fields[2]), int(fields[3])
    raise SetupError("set user", OSError(errno.ENOENT, f"no {what} named {name!r} in the container's {table}"))


@step("exec the command")
def become_user_and_exec(process):
    """`process` is the plan's ProcessPlan."""
    if process.tty:
        take_terminal()
    env = dict(item.split("=", 1) for item in process.env)
    keep_capabilities(process.security)
    user = resolve_user(process.user) if process.user else None
    # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which setuid to a
    # non-root user takes away: then it is loaded first (as runc does), and the profile
    # allows the setgroups/setgid/setuid calls that follow.
    filter_before_setuid = user is not None and not process.security.no_new_privileges
    if filter_before_setuid:
        load_seccomp_filter(process.security)
    env.setdefault("HOME", home_of(process.user or "0"))
    if user is not None:
        uid, gid = user
        os.setgroups(supplementary_groups(process.user, gid))
        os.setgid(gid)
        os.setuid(uid)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    if not filter_before_setuid:
        load_seccomp_filter(process.security)
    command = process.command
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        path = env.get("PATH", "")
        raise SetupError("exec the command", OSError(
            errno.ENOENT, f"command {command[0]!r} not found in the container (image {process.image}, PATH={path})")) from None


@step("drop capabilities")
def keep_capabilities(security):
    """Only the container's capabilities stay in the bounding set (Docker's 14 by
    default); `no-new-privileges` also sets no_new_privs before anything is exec'd."""
    capabilities.drop_bounding_set(set(security.capabilities))
    if security.no_new_privileges:
        syscalls.prctl_set_no_new_privs()


@step("load the seccomp filter")
def load_seccomp_filter(security):
    """The last step before exec: from here on the kernel checks every syscall against
    the profile the helper compiled (labkit.linux.seccomp)."""
    if security.seccomp_program:
        seccomp.load_filter(security.seccomp_program)


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def run_as_init(process, error_fd):
    """`--init`: PID 1 stays a tiny reaper that forwards signals to the command."""
    # Named before the fork: the command runs as soon as it is forked, and one that reads
    # /proc/1/comm must not see the helper's name (a race a busy host loses).
    syscalls.prctl_set_name("labkit-init")
    # Blocked from before the fork until the handlers are set: a signal sent to PID 1 while
    # it has no handler is dropped (the kernel's rule for init), and one can come as soon
    # as the command runs (a fresh clone's `make test` under load lost a SIGTERM so). A
    # blocked signal waits, and reaches the handler when unblocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    # The command waits until the reaper holds nothing but its stdio and is inside the
    # container's profile, as Docker's tini is (runc applies the profile before it execs
    # it): else, under load, the command could run while PID 1 still held the error pipe
    # and every capability (a fresh clone's `make test` saw /proc/1/fd/10 so).
    released_r, released_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(released_w)
        os.read(released_r, 1)   # EOF: the reaper is ready (or gone, and this container with it)
        os.close(released_r)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)   # the command's mask, as without --init
    if child:
        os.close(released_r)
        os.close(error_fd)  # the command's exec closes its copy; EOF then means "started"
        # The reaper stays inside the container's profile too: the bounding set, and its own
        # capabilities (it never execs, so the bounding set alone would leave it all it had),
        # then the filter (no_new_privs lets it load without CAP_SYS_ADMIN; the reaper
        # starts nothing after the command, so it changes nothing else).
        keep_capabilities(process.security)
        syscalls.prctl_set_no_new_privs()
        capabilities.keep_only_own(process.security.capabilities)
        # It never execs, so its memory is the helper's: the helper's environment (the
        # owner's: a Jupyter kernel's holds JUPYTER_TOKEN), its command line, and what
        # is left of other containers' plans. With the container's uid and capabilities,
        # the container's root could read all of it (/proc/1/environ, /proc/1/mem) and
        # ptrace it, had an audit not found it. Not dumpable: CAP_SYS_PTRACE needed.
        syscalls.prctl_set_not_dumpable()
        load_seccomp_filter(process.security)
        def forward(number, _frame):
            try:
                os.kill(child, number)
            except OSError:
                pass   # gone, or (--user with CAP_KILL dropped) not ours to signal: as if it had ended
        for number in FORWARDED:
            signal.signal(number, forward)
        os.close(released_w)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
            if pid == child:
                os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    try:
        become_user_and_exec(process)
    except BaseException as error:  # noqa: BLE001
        report_failure(error_fd, error)
