"""What happens inside the forked helper between "fork" and "exec": the recipe.

The supervisor (forked from the helper, still on the host) makes the new namespaces and
forks the container's first process; that process joins the cgroup, makes its mounts
private, builds its root from the overlay, mounts /proc, /dev and /sys, switches root,
sets the hostname and finally execs the command. Read `supervise` and `become_container`
top to bottom: they are the recipe of the README's "How it is built", in order.

A pool slot (runtime/pool.py) runs the first half of the same recipe ahead of time, with
no plan yet: its supervisor makes the default namespaces, its first process joins a
fresh cgroup and waits. Once its plan comes, that process goes on with
`set_up_container`, the second half, exactly as a container started here does.

Everything here runs in a single-threaded child of the helper and must end in exec or
`os._exit`: never return into the helper's loop.
"""

import dataclasses
import errno
import json
import os
import signal
import socket
import stat
import struct

from labkit.images.overlay import mount_overlay
from labkit.linux import capabilities, paths, seccomp, syscalls
from labkit.linux.namespaces import BY_NAME
from labkit.linux.syscalls import MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT
# Imported here, in the helper, not when first needed: by then the container process
# has switched root and the host's Python files are out of its sight (~0.7 ms, once).
from labkit.net import inside as network_inside

DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


class SetupError(Exception):
    """A step of the recipe failed; carries which step, for the person reading the error."""

    def __init__(self, step, error):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.errno = getattr(error, "errno", None)


def step(name):
    """Name a recipe step so that a failure says which one failed."""
    def wrap(function):
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except SetupError:
                raise
            except OSError as error:
                raise SetupError(name, error) from None
        run.__name__ = function.__name__
        run.__doc__ = function.__doc__
        return run
    return wrap


def report_failure(error_fd, error, exit_code=None):
    """Tell the helper what went wrong (through the close-on-exec error pipe), then die.
    Exit codes as a shell and Docker give them: 127 no such command, 126 not executable,
    125 the runtime itself failed."""
    if exit_code is None:
        exit_code = 125
        if isinstance(error, SetupError) and error.step == "exec the command":
            exit_code = {errno.ENOENT: 127, errno.EACCES: 126, errno.ENOEXEC: 126}.get(error.errno, 126)
    if isinstance(error, SetupError):
        payload = {"step": error.step, "message": str(error), "errno": error.errno}
    else:
        payload = {"step": "setup", "message": f"{type(error).__name__}: {error}", "errno": getattr(error, "errno", None)}
    payload["exit_code"] = exit_code
    try:
        os.write(error_fd, json.dumps(payload).encode()[:4000])
    except OSError:
        pass
    os._exit(exit_code)


# --- the supervisor: on the host, parent of the container's first process -------------

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


@step("create namespaces")
def enter_new_namespaces(plan):
    """unshare every kind but mnt and cgroup (the container's first process makes those,
    after joining its cgroup); pid and time take effect for our children.
    `plan.join` ({"net": "/proc/PID/ns/net"}) shares another container's namespaces
    instead of making new ones (`--net container:NAME`)."""
    kinds = set(plan.namespaces) - {"mnt", "cgroup"} - set(plan.join)
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


def unshare_user_namespace(flags, user_map, before_mapping=lambda: None):
    """A new user namespace needs its uid/gid map written from the parent namespace:
    a short-lived child that stays outside writes it for us.

    `before_mapping` runs right after the unshare, while we still are the host's root
    by uid: once we setuid into the new namespace the kernel marks us non-dumpable and
    our own /proc/self files (timens_offsets among them) stop being ours to write."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    parent = os.getpid()
    mapper = os.fork()
    if mapper == 0:
        os.close(ready_w)
        os.close(done_r)
        os.read(ready_r, 1)
        try:
            line = f"0 {user_map.uid} {user_map.count}\n"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{parent}/{name}", "w") as handle:
                    handle.write(line)
            os.write(done_w, b"k")
        finally:
            os._exit(0)
    os.close(ready_r)
    os.close(done_w)
    try:
        syscalls.unshare(flags)
        before_mapping()
    finally:
        os.write(ready_w, b"g")
        os.close(ready_w)
        answer = os.read(done_r, 1)
        os.close(done_r)
        os.waitpid(mapper, 0)
    if answer != b"k":
        raise OSError(errno.EPERM, "could not write the user namespace's uid/gid map")
    os.setgid(0)  # become root of the new namespace (host uid user_map.uid)
    os.setuid(0)


def set_time_offsets(offsets):
    lines = "".join(f"{clock} {int(seconds)} 0\n" for clock, seconds in offsets.items() if seconds)
    if lines:
        with open("/proc/self/timens_offsets", "w") as handle:
            handle.write(lines)


# --- the container's first process ---------------------------------------------------

def become_container(plan, fds):
    """PID 1 of the new PID namespace. Ends in exec (or in the init loop)."""
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)  # supervisor gone: the whole container goes
        if "user" not in plan.namespaces:
            join_cgroup(plan.cgroup.procs_files)
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)
    set_up_container(plan, fds)


def set_up_container(plan, fds):
    """From the container's own mount namespace to exec: in its cgroup already, and in
    every namespace its supervisor made. A pool slot's first process starts here too."""
    try:
        enter_cgroup_and_mount_namespaces(plan)
        make_mounts_private(plan)
        rootfs = plan.rootfs
        mount_root_filesystem(plan)
        mount_kernel_filesystems(plan, rootfs)
        mount_volumes(plan, rootfs)
        mount_tmpfs(plan, rootfs)
        make_root_read_only(plan, rootfs)
        protect_kernel_paths(plan, rootfs)
        switch_root(rootfs)
        set_hostname(plan)
        if "net" in plan.namespaces:
            bring_up_loopback()
        wait_until_released(plan, fds)
        attach_stdio(fds)
        os.chdir(working_directory(plan.process))
        if plan.init:
            run_as_init(plan.process, fds["error"])
        become_user_and_exec(plan.process)
    except BaseException as error:  # noqa: BLE001
        report_failure(fds["error"], error)


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


@step("make mounts private")
def make_mounts_private(plan):
    # Without this, mounts made below would propagate back to the host (shared subtrees).
    if "mnt" not in plan.namespaces:
        raise OSError(errno.EINVAL, "a container needs its own mount namespace for its root filesystem")
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)


def in_a_user_namespace(plan) -> bool:
    """In the container's own user namespace, or labkit itself in a non-initial user
    namespace (a grading sandbox): root there may not mknod nor set trusted.* xattrs."""
    from labkit.linux.namespaces import in_initial_user_namespace

    return "user" in plan.namespaces or not in_initial_user_namespace()


@step("mount the overlay root (image layers + init layer + read-write layer)")
def mount_root_filesystem(plan):
    mount_overlay(plan.rootfs, plan.lower, plan.upper, plan.work,
                  in_user_namespace=in_a_user_namespace(plan))


@step("mount /proc, /dev and /sys")
def mount_kernel_filesystems(plan, rootfs):
    in_user_ns = in_a_user_namespace(plan)
    ensure_dir(f"{rootfs}/proc")
    try:
        syscalls.mount("proc", f"{rootfs}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if not in_user_ns:
            raise
        # A user namespace may mount a fresh /proc only for a PID namespace it owns;
        # sharing the host's PID namespace, borrow the host's /proc.
        syscalls.mount("/proc", f"{rootfs}/proc", None, MS_BIND | MS_REC)
    mount_dev(f"{rootfs}/dev", bind_devices=in_user_ns)
    ensure_dir(f"{rootfs}/sys")
    try:
        syscalls.mount("sysfs", f"{rootfs}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if not in_user_ns:
            raise
        # A user namespace may not mount a fresh sysfs for a network namespace it does
        # not own; fall back to a read-only view of the host's.
        syscalls.mount("/sys", f"{rootfs}/sys", None, MS_BIND | MS_REC)
        return
    mount_cgroup_filesystem(plan, f"{rootfs}/sys/fs/cgroup")


def mount_dev(dev, bind_devices):
    ensure_dir(dev)
    syscalls.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        path = f"{dev}/{name}"
        if bind_devices:
            # mknod is refused inside a user namespace; borrow the host's nodes instead.
            open(path, "w").close()
            syscalls.mount(f"/dev/{name}", path, None, MS_BIND)
        else:
            os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(path, 0o666)
    os.mkdir(f"{dev}/pts")
    syscalls.mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    syscalls.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue")
    try:
        syscalls.mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if not bind_devices:
            raise
        # In a user namespace sharing the host's IPC namespace, the host's queues are not
        # ours to mount: leave /dev/mqueue empty.
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")


def mount_cgroup_filesystem(plan, target):
    """The container's own cgroup, seen from inside its cgroup namespace as the root."""
    if "cgroup" not in plan.namespaces:
        return
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY
    if plan.cgroup.version == 2:
        syscalls.mount("cgroup2", target, "cgroup2", flags)
        return
    syscalls.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k")
    for directory_name, controllers in plan.cgroup.v1_mounts:
        directory = f"{target}/{directory_name}"
        os.mkdir(directory)
        syscalls.mount("cgroup", directory, "cgroup", flags, controllers)
    syscalls.mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_BIND)


@step("bind-mount volumes")
def mount_volumes(plan, rootfs):
    """Each target is resolved inside the container's root (a link in the image such as
    /cfg -> /tmp/x leads to the image's /tmp/x, never the host's) and mounted on through
    the fd that resolution gave."""
    if not plan.volumes:
        return
    root = paths.open_root(rootfs)
    try:
        for volume in plan.volumes:
            target = _volume_target(root, volume)
            try:
                syscalls.mount(volume.source, paths.fd_path(target), None, MS_BIND | MS_REC)
            finally:
                os.close(target)
            if volume.readonly:
                # The target's fd still names the directory under the new mount: look it up again.
                mounted = paths.open_in_root(root, volume.target, os.O_PATH)
                try:
                    syscalls.mount(None, paths.fd_path(mounted), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                finally:
                    os.close(mounted)
    finally:
        os.close(root)


def _volume_target(root, volume):
    """An O_PATH fd of the mount point inside the root, made (a directory, or an empty
    file for a file volume) when the image lacks it."""
    target = volume.target
    try:
        if os.path.isdir(volume.source):
            return paths.make_dirs_in_root(root, target)
        os.close(paths.make_dirs_in_root(root, os.path.dirname(target.rstrip("/")) or "/"))
        try:
            return paths.open_in_root(root, target, os.O_PATH)
        except FileNotFoundError:
            os.close(paths.open_in_root(root, target, os.O_CREAT | os.O_WRONLY | os.O_NONBLOCK, 0o644))
            return paths.open_in_root(root, target, os.O_PATH)
    except OSError as error:
        raise OSError(error.errno, f"volume target {target}: {error.strerror}") from None


@step("mount tmpfs")
def mount_tmpfs(plan, rootfs):
    """`--tmpfs PATH`: a writable, memory-backed directory (also on a read-only root)."""
    if not plan.tmpfs:
        return
    root = paths.open_root(rootfs)  # resolved inside the root, as the volumes are
    try:
        for path in plan.tmpfs:
            target = paths.make_dirs_in_root(root, path)
            try:
                syscalls.mount("tmpfs", paths.fd_path(target), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
            finally:
                os.close(target)
    finally:
        os.close(root)


@step("make the root filesystem read-only")
def make_root_read_only(plan, rootfs):
    """`--read-only`: only the root mount itself; /proc, /dev, volumes and tmpfs are
    mounts of their own and keep their flags (a bind remount without MS_REC)."""
    if plan.read_only:
        syscalls.mount(None, rootfs, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


_ST_LOCKED = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC}


@step("mask /proc and /sys paths, make kernel settings read-only")
def protect_kernel_paths(plan, rootfs):
    """After the volumes, so that no volume can uncover a masked path. The container lacks
    CAP_SYS_ADMIN, so it cannot unmount what is mounted here.

    The paths are the kernel's own, below the /proc and /sys just mounted; only those two
    come from the image. Where the image made one a link (`/proc -> /etc`) it is skipped:
    the container has no kernel filesystem there, and the link's target is the host's."""
    real = {}
    for paths_list, protect in ((plan.masked_paths, mask_path), (plan.readonly_paths, make_read_only)):
        for path in paths_list:
            top = path.lstrip("/").partition("/")[0]
            if top not in real:
                real[top] = _is_real_directory(f"{rootfs}/{top}")
            if real[top]:
                protect(rootfs + path)


def _is_real_directory(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def mask_path(path):
    """/dev/null over a file, an empty read-only tmpfs over a directory; a path this
    host lacks (or a link: nothing to mask) is skipped."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        syscalls.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")
    elif not stat.S_ISLNK(mode):
        syscalls.mount("/dev/null", path, None, MS_BIND)


def make_read_only(path):
    """A bind of the path onto itself, remounted read-only. The remount must repeat the
    nosuid/nodev/noexec the mount already has: in a user namespace they are locked."""
    try:
        flags = os.statvfs(path).f_flag
    except FileNotFoundError:
        return
    if flags & os.ST_RDONLY:
        return
    syscalls.mount(path, path, None, MS_BIND | MS_REC)
    keep = 0
    for st_flag, ms_flag in _ST_LOCKED.items():
        if flags & st_flag:
            keep |= ms_flag
    syscalls.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


@step("pivot_root into the container's root")
def switch_root(rootfs):
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    # removes the old root without needing a directory for it inside the image.
    os.chdir(rootfs)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", MNT_DETACH)
    os.chdir("/")


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


@step("attach stdin, stdout and stderr")
def attach_stdio(fds):
    for target, name in enumerate(("stdin", "stdout", "stderr")):
        fd = fds.get(name)
        if fd is None:
            fd = os.open("/dev/null", os.O_RDWR)
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)


@step("change to the working directory")
def working_directory(process):
    ensure_dir(process.workdir)
    return process.workdir


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
    try:
        with open("/etc/passwd") as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 5 and name in (fields[0], fields[2]):
                    return fields[5] or "/"
    except FileNotFoundError:
        pass
    return "/"


def supplementary_groups(user, gid):
    """The primary group and every group of /etc/group that lists the user by name, as
    runc gives a process (`id -G` shows the same under podman and labkit)."""
    name = user.partition(":")[0]
    groups = [gid]
    try:
        with open("/etc/group") as handle:
            for line in handle:
                fields = line.strip().split(":")
                if len(fields) > 3 and fields[2].isdigit() and name in fields[3].split(","):
                    groups.append(int(fields[2]))
    except FileNotFoundError:
        pass
    return sorted(set(groups))


def _lookup(table, name, what):
    try:
        with open(table) as handle:
            for line in handle:
                fields = line.strip().split(":")
                if fields[0] == name and len(fields) > 3:
                    return int(fields[2]), int(fields[3])
    except FileNotFoundError:
        pass
    raise SetupError("set user", OSError(errno.ENOENT, f"no {what} named {name!r} in the container's {table}"))


@step("exec the command")
def become_user_and_exec(process):
    """`process` is the plan's ProcessPlan."""
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


def run_as_init(process, error_fd):
    """`--init`: PID 1 stays a tiny reaper that forwards signals to the command."""
    # Named before the fork: the command runs as soon as it is forked, and one that reads
    # /proc/1/comm must not see the helper's name (a race a busy host loses).
    syscalls.prctl_set_name("labkit-init")
    child = os.fork()
    if child:
        os.close(error_fd)  # the command's exec closes its copy; EOF then means "started"
        keep_capabilities(process.security)  # the reaper stays inside the container's profile too
        load_seccomp_filter(process.security)
        forward = lambda number, _frame: os.kill(child, number)  # noqa: E731
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
            signal.signal(number, forward)
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


def ensure_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        pass
