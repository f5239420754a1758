"""The sandbox's first processes, run as `python -m labkit.grading.sandbox.first_process`.

Two processes, in order:

- the **keeper** (host root, host PID namespace) makes the new mount and PID namespaces,
  forks the sandbox's PID 1 and waits for it. It dies with the grader (PDEATHSIG), and
  PID 1 dies with it: the kernel then kills everything in the PID namespace, `setsid`
  daemons included.
- **PID 1** builds the sandbox's root while it is still the host's root: a read-only
  tmpfs with read-only binds of what a kernel needs (/usr, /etc, Python, labkit) and
  read-write binds of the submission's own directories, a /proc of its own PID namespace
  and a read-only /sys. Only then does it make a user namespace (root inside is an
  unprivileged host uid range) and the network, UTS, IPC, cgroup and a second mount
  namespace owned by it. Copying the mounts into that less privileged namespace *locks*
  them: the student cannot remount a read-only bind read-write nor unmount one to see
  what is below. The /proc and /sys made before the switch are what the kernel's
  "mount_too_revealing" check asks for before a user namespace may mount a fresh /proc
  or /sys, which nested containers do. Then it mounts what belongs to the new namespaces
  (sysfs of its network namespace, the delegated cgroup hierarchies, mqueue), and stays
  as the reaper of the PID namespace.
"""

import json
import os
import signal
import sys
from collections import namedtuple

from labkit.linux import syscalls
from labkit.linux.syscalls import (
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS,
    MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
)

UserMap = namedtuple("UserMap", "uid count")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
OWNED_BY_THE_USER_NAMESPACE = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP


def main(argv):
    config = json.loads(sys.stdin.read())   # not on the command line: PID 1's is readable inside
    report = int(argv[1])
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    syscalls.prctl_set_pdeathsig(signal.SIGKILL)
    if os.getppid() != config["owner"]:
        os._exit(1)  # the grader died before we could set the death signal
    try:
        join_cgroup(config["procs"])
        syscalls.unshare(CLONE_NEWNS | CLONE_NEWPID)
    except BaseException as error:  # noqa: BLE001
        fail(report, "make the mount and PID namespaces", error)
    pid1 = os.fork()
    if pid1 == 0:
        become_pid1(config, report)
    os.close(report)
    try:
        # cgroup v2: out of the sandbox's cgroup into its leaf, as PID 1 moves once its cgroup
        # namespace is rooted there. A process left in it would keep the nested containers
        # from enabling controllers below it (the "no internal processes" rule).
        join_cgroup(config["keeper_joins"])
    except OSError:
        os.kill(pid1, signal.SIGKILL)   # the sandbox would not work: its start fails, named
        raise
    keep(pid1)


def keep(pid1):
    """Wait for PID 1; pass SIGTERM on as SIGKILL (a PID namespace ends when its PID 1 does)."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid1, signal.SIGKILL))
    exit_with(pid1)


def exit_with(child):
    """Wait for `child` and exit with its status (the keeper, and the kernel's launcher)."""
    while True:
        try:
            _, status = os.waitpid(child, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(0)


def become_pid1(config, report):
    stage = "start"
    try:
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)
        stage = "build the root filesystem"
        build_root(config)
        stage = "make the user namespace and the namespaces it owns"
        enter_user_namespace(config["uid"], config["count"])
        # Changing our uid cleared the death signal: set it again. (A keeper killed in the
        # few instructions between leaves us to the next sweep, which kills by cgroup.)
        syscalls.prctl_set_pdeathsig(signal.SIGKILL)
        stage = "mount what belongs to the new namespaces"
        mount_own_filesystems(config)
        stage = "set the hostname, bring up loopback"
        syscalls.sethostname(config["hostname"])
        bring_up_loopback()
        stage = "enter the submission's directory"
        os.chdir(config["scratch"])
    except BaseException as error:  # noqa: BLE001
        fail(report, stage, error)
    os.write(report, b"ready\n")
    os.close(report)
    reap_forever()


def join_cgroup(procs_files):
    for procs in procs_files:
        with open(procs, "w") as handle:
            handle.write("0")


def build_root(config):
    root = config["root"]
    owner = config["uid"]
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The root tmpfs and every directory made on it belong to the sandbox's root (host
    # `owner`), not to the host's root, whom the user namespace does not map (it would
    # show as nobody): labkit inside refuses a LABKIT_HOME below a directory another
    # user owns (labkit/home.py). Read-only and locked, the root's own can change nothing.
    syscalls.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=755,size=16m,uid={owner},gid={owner}")
    for path, target in config["symlinks"].items():
        make_parents(root + path, owner)
        os.symlink(target, root + path)
    for path, mode in (("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/run", 0o755), ("/root", 0o700)):
        make_dir(root + path, owner)
        syscalls.mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o},size=64m")
        os.chown(root + path, config["uid"], config["uid"])
    # After the tmpfs mounts: the submission's directories may be below /tmp.
    for path in config["read_only"]:
        bind(path, root + path, read_only=True, owner=owner)
    for path in config["read_write"]:
        bind(path, root + path, read_only=False, owner=owner)
    make_dir(root + "/proc", owner)
    syscalls.mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dir(root + "/sys", owner)
    syscalls.mount("sysfs", root + "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount_dev(root + "/dev", owner)
    os.mkdir(root + "/.old")
    syscalls.pivot_root(root, root + "/.old")
    os.chdir("/")
    syscalls.umount2("/.old", MNT_DETACH)
    os.rmdir("/.old")
    # Read-only from now on, and locked so once the user namespace copies this mount.
    syscalls.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def bind(source, target, read_only, owner=None):
    if os.path.isdir(source):
        make_dir(target, owner)
    else:
        make_parents(target, owner)
        open(target, "a").close()
    syscalls.mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    syscalls.mount(None, target, None, flags)


def mount_dev(dev, owner=None):
    make_dir(dev, owner)
    syscalls.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for name in DEVICES:
        # The host's nodes, bound: a user namespace may not mknod, and the sandbox's
        # devices cgroup decides which nodes open anyway.
        open(f"{dev}/{name}", "w").close()
        syscalls.mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{name}")
    syscalls.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")


def enter_user_namespace(uid, count):
    """unshare the user namespace and the kinds it will own, with the runtime's own
    mapper (a child left outside writes the uid/gid map), then drop the host's groups."""
    from labkit.linux.namespaces import unshare_user_namespace

    unshare_user_namespace(OWNED_BY_THE_USER_NAMESPACE, UserMap(uid, count))
    os.setgroups([])


def mount_own_filesystems(config):
    # sysfs of our own network namespace; read-only as the locked one it covers.
    syscalls.mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    syscalls.mount("tmpfs", "/sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
    for point, options, fstype in config["cgroup_mounts"]:
        make_dir(point)
        syscalls.mount("cgroup", point, fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC, options or None)
    if config["init_cgroup"]:
        # cgroup v2: the namespace's root is the delegated cgroup; processes live in a
        # leaf below it so that nested containers may enable controllers (no internal processes).
        join_cgroup([config["init_cgroup"]])
    syscalls.mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    syscalls.mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")


def bring_up_loopback():
    import fcntl
    import socket
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # noqa: N806
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def reap_forever():
    """PID 1 of the sandbox: reap whatever is reparented to us, until killed from outside."""
    syscalls.prctl_set_name("labkit-sandbox")
    signal.signal(signal.SIGCHLD, lambda *_: None)  # so that pause() returns when a child ends
    while True:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()
        except InterruptedError:
            continue


def make_dir(path, owner=None):
    """`path` and the directories missing above it, 0755 (owned by host uid `owner`)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for made in reversed(missing):
        os.mkdir(made, 0o755)
        if owner is not None:
            os.chown(made, owner, owner)


def make_parents(path, owner=None):
    make_dir(os.path.dirname(path), owner)


def fail(report, stage, error):
    try:
        os.write(report, f"error {stage}: {error}\n".encode())
    finally:
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv)
