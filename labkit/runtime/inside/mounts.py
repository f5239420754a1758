"""The container's root filesystem, as its first process builds it: the overlay, /proc,
/dev, /sys, volumes, tmpfs, the read-only and masked paths, and the switch of root.

Runs in the container's first process (PID 1 of its PID namespace), in its own mount
namespace, before exec: the steps of runtime/inside/recipe.py from "make mounts private"
to "pivot_root", in that order.
"""

import errno
import glob
import os
import stat

from labkit.images.overlay import mount_overlay
from labkit.linux import paths, syscalls
from labkit.linux.syscalls import MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT
from labkit.runtime.step_failure import step

DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


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
    # A container removed when it ends keeps nothing through a crash: its upper is never
    # synced (at its unmount, an ext4 journal commit and a cache flush, milliseconds to
    # tens of them on a busy disk). A container that may be committed keeps the sync.
    if plan.fuse_fds is not None:
        # Rootless with fuse-overlayfs only: imported here, still on the host's root,
        # rather than in every helper's start-up.
        from labkit.images.fuse_overlay import mount_served_root

        mount_served_root(plan.rootfs, *plan.fuse_fds)   # fuse-overlayfs, run by the supervisor
        return
    mount_overlay(plan.rootfs, plan.lower, plan.upper, plan.work,
                  in_user_namespace=in_a_user_namespace(plan), volatile=plan.auto_remove)


@step("bind-mount /etc/hostname, /etc/hosts and /etc/resolv.conf from the container's directory")
def bind_etc_files(plan, rootfs):
    """As Docker does: the init layer holds only empty placeholders, and the container's
    own files (LABKIT_HOME/containers/<id>/hosts, ...) are bound over them. An edit inside
    goes to that file, never to the read-write layer (so never into a commit), and the
    runtime updates hosts for bridge peers there, never in a lower layer of the mounted
    overlay (which overlayfs.rst leaves undefined)."""
    for name in plan.init_files:
        syscalls.mount(os.path.join(plan.dir, name), f"{rootfs}/etc/{name}", None, MS_BIND)


@step("mount /proc, /dev and /sys")
def mount_kernel_filesystems(plan, rootfs):
    in_user_ns = in_a_user_namespace(plan)
    for name in ("proc", "dev", "sys"):
        ordinary_directory(rootfs, name)
    try:
        syscalls.mount("proc", f"{rootfs}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if not in_user_ns:
            raise
        # A user namespace may mount a fresh /proc only for a PID namespace it owns;
        # sharing the host's PID namespace, borrow the host's /proc.
        syscalls.mount("/proc", f"{rootfs}/proc", None, MS_BIND | MS_REC)
    mount_dev(f"{rootfs}/dev", bind_devices=in_user_ns)
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


def ordinary_directory(rootfs, name) -> None:
    """`rootfs/name`, made if the image lacks it; refused unless it is an ordinary
    directory, as runc refuses to mount proc or sysfs anywhere else. The mounts here go
    by path: through a link, even one that stays in the root (`proc -> myproc`), the
    kernel's filesystem would land where the masked and read-only paths are not applied,
    and through an absolute one on a path of the host's (in this mount namespace)."""
    path = f"{rootfs}/{name}"
    try:
        os.mkdir(path, 0o755)
        return
    except FileExistsError:
        pass
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        what = f"a link to {os.readlink(path)!r}" if stat.S_ISLNK(mode) else "not a directory"
        raise OSError(errno.ENOTDIR, f"the image's /{name} is {what}: /{name} must be an ordinary directory "
                                     f"(runc refuses the same), or the kernel's filesystem would not be where "
                                     f"its masks apply")


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
    """`--tmpfs PATH[:OPTIONS]`: a memory-backed directory (also on a read-only root), with
    the mount flags and tmpfs data spec.parse_tmpfs made of the options."""
    if not plan.tmpfs:
        return
    root = paths.open_root(rootfs)  # resolved inside the root, as the volumes are
    try:
        for path, flags, data in plan.tmpfs:
            target = paths.make_dirs_in_root(root, path)
            try:
                syscalls.mount("tmpfs", paths.fd_path(target), "tmpfs", flags, data or None)
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

    The paths are the kernel's own, below the /proc and /sys just mounted, which are
    ordinary directories of the root (`ordinary_directory`: an image cannot make either
    a link that takes the kernel's filesystem elsewhere).

    A path may be a pattern (`/sys/devices/system/cpu/cpu*/thermal_throttle`): it stands
    for what matches in the container's own /proc or /sys, which may be nothing."""
    for paths_list, protect in ((plan.masked_paths, mask_path), (plan.readonly_paths, make_read_only)):
        for path in paths_list:
            for found in _matches(rootfs, path):
                protect(found)


def _matches(rootfs, path):
    """`rootfs + path`, or with a pattern every path under rootfs it matches (sorted)."""
    if not any(char in path for char in "*?["):
        return [rootfs + path]
    return sorted(glob.glob(glob.escape(rootfs) + path))


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


def ensure_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        pass
