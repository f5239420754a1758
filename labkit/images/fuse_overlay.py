"""A container's root served by fuse-overlayfs, where the kernel's overlay cannot be
mounted in a user namespace (images/rootless_overlay.py decides).

The FUSE daemon must not live in the container: in its PID namespace `ps` would show
it and its root would be pivoted into the very mount it serves. So the daemon is split
from the mount, as libfuse allows (a mountpoint `/dev/fd/N` is a /dev/fuse descriptor
mounted by someone else): the container's supervisor opens /dev/fuse and starts
fuse-overlayfs on it (`start_daemon`), outside the container's namespaces; the
container's first process mounts that descriptor in its own mount namespace
(`mount_served_root`), where the kernel overlay would have gone. The kernel wants the
descriptor opened in the user namespace that mounts it: labkit's, which the supervisor
of an ordinary container shares.

The daemon ends with the mount: once the container's mount namespace is gone, the kernel
aborts the FUSE connection and the daemon's read of /dev/fuse fails (ENODEV), so it
exits; the supervisor reaps it (`stop_daemon`, which kills it if it does not), and its
death signal takes it when the supervisor is killed.
"""

import os
import shutil
import signal
import time
from dataclasses import dataclass

from labkit.errors import ImageError
from labkit.images.overlay import layer_options
from labkit.images.rootless_overlay import FUSE_DEVICE, FUSE_PROGRAM
from labkit.linux import syscalls

EXIT_WAIT_SECONDS = 2.0   # after the mount is gone, the daemon exits at once; then it is killed


@dataclass
class FuseDaemon:
    pid: int
    device: int            # the /dev/fuse descriptor it serves; the container's first process mounts it
    mounted: int           # the write end on which that process says so (the daemon waits for it)


def start_daemon(lower_top_first, upper, work, volatile=False) -> FuseDaemon:
    """A child that runs fuse-overlayfs on a fresh /dev/fuse descriptor once that is
    mounted: the kernel refuses a read (EPERM, fatal to libfuse) of a descriptor nothing
    has mounted yet. The child leaves without a daemon where the mount never comes."""
    program = shutil.which(FUSE_PROGRAM)
    if program is None:
        raise ImageError(f"{FUSE_PROGRAM} is not installed (Debian: apt-get install fuse-overlayfs); "
                         "see labkit doctor")
    # fuse-overlayfs takes its options on the command line: no page limit as for mount(2).
    options = layer_options([os.fspath(path) for path in lower_top_first], upper, work) + (",fsync=0" if volatile else "")
    argv = [program, "-f", "-o", options]
    device = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    mounted_r, mounted_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except BaseException:
        for fd in (device, mounted_r, mounted_w):
            os.close(fd)
        raise
    if pid == 0:
        _exec_once_mounted(argv, device, mounted_r)
    os.close(mounted_r)
    return FuseDaemon(pid, device, mounted_w)


def _exec_once_mounted(argv, device, mounted_r):
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)   # the supervisor killed: so are we
        # Nothing of the supervisor's (the container's stdio pipes) is held while waiting.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        low, high = sorted((device, mounted_r))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
        if os.read(mounted_r, 1) != b"m":
            os._exit(0)   # the container failed before its mount
        os.close(mounted_r)
        os.set_inheritable(device, True)
        os.execv(argv[0], [*argv, f"/dev/fd/{device}"])
    finally:
        os._exit(127)


def mount_served_root(target, device, mounted) -> None:
    """The daemon's union at `target`, in this process's mount namespace (its user
    namespace's root is the owner: root there sees its own files as root's); then the
    daemon may start serving."""
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
    syscalls.mount(FUSE_PROGRAM, target, f"fuse.{FUSE_PROGRAM}", 0, options)
    os.close(device)
    os.write(mounted, b"m")
    os.close(mounted)


def stop_daemon(daemon: FuseDaemon, mounted=True) -> None:
    """Reap the daemon once its mount is gone (it exits by itself then); kill it if it
    still runs after EXIT_WAIT_SECONDS, or at once where it was never `mounted`."""
    deadline = time.monotonic() + (EXIT_WAIT_SECONDS if mounted else 0)
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(daemon.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        time.sleep(0.005)
    try:
        os.kill(daemon.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(daemon.pid, 0)
