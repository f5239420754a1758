"""Which overlay a rootless container's root is: the kernel's, or fuse-overlayfs.

Root of a user namespace may mount the kernel's overlayfs since Linux 5.11 (with
`userxattr`); older kernels refuse, and some distributions' kernels turn it off. There,
as rootless podman does, the root is served by fuse-overlayfs (Debian package
`fuse-overlayfs`), a FUSE daemon that reads the same layers and writes the same
read-write layer (runtime/inside/fuse_overlay.py runs it). Whether the kernel can is
not read from its version: a tiny overlay is really mounted in a scratch user and
mount namespace, as podman's storage probes; its answer is kept in LABKIT_HOME for the
rest of the boot (PROBE_FILE: remove it to probe again), and each process decides once
(the helper, for every container it starts). `LABKIT_OVERLAY=fuse` (or `kernel`) chooses instead of the
probe, so the FUSE path can be tried where the kernel could, and a user can pick it.
Root keeps the kernel's overlay always.
"""

import errno
import os
import shutil
from dataclasses import dataclass

from labkit.errors import ConfigError, HostError

KERNEL, FUSE = "kernel", "fuse"
SETTING = "LABKIT_OVERLAY"       # auto (the default), kernel or fuse
FUSE_PROGRAM = "fuse-overlayfs"
FUSE_DEVICE = "/dev/fuse"


@dataclass(frozen=True)
class OverlayChoice:
    kind: str          # KERNEL or FUSE
    why: str           # one line, for labkit doctor


def asked_for() -> str:
    """What LABKIT_OVERLAY asks for: "auto", "kernel" or "fuse"."""
    value = os.environ.get(SETTING, "").strip().lower() or "auto"
    if value not in ("auto", KERNEL, FUSE):
        raise ConfigError(f"{SETTING}={os.environ[SETTING]!r}: give auto (the default: the kernel's "
                          f"overlay where it mounts in a user namespace, else fuse-overlayfs), kernel or fuse")
    return value


def decide(asked: str, kernel_refusal, fuse_missing) -> OverlayChoice:
    """The choice, from what was asked and what the host can: `kernel_refusal()` is None
    where the kernel mounts overlay in a user namespace (else why not), `fuse_missing()`
    None where fuse-overlayfs can run (else what is missing and how to get it). Each is
    called only when the answer depends on it."""
    if asked == KERNEL:
        return OverlayChoice(KERNEL, f"the kernel's overlay ({SETTING}=kernel)")
    if asked == FUSE:
        missing = fuse_missing()
        if missing:
            raise HostError(f"{SETTING}=fuse, but {missing}")
        return OverlayChoice(FUSE, f"fuse-overlayfs ({SETTING}=fuse)")
    refusal = kernel_refusal()
    if refusal is None:
        return OverlayChoice(KERNEL, "the kernel's overlay: it mounts in a user namespace here")
    missing = fuse_missing()
    if missing:
        raise HostError(f"rootless containers need an overlay for their root: the kernel refuses one in a "
                        f"user namespace ({refusal}; Linux 5.11 or later allows it), and {missing}")
    return OverlayChoice(FUSE, f"fuse-overlayfs: the kernel refuses overlay in a user namespace ({refusal})")


_chosen = None


def rootless_overlay(directory=None) -> OverlayChoice:
    """The choice for this process, made once. `directory`: where to probe, on the
    filesystem of the containers' read-write layers (LABKIT_HOME), which also keeps the
    kernel's answer for the rest of this boot (PROBE_FILE)."""
    global _chosen
    if _chosen is None:
        _chosen = decide(asked_for(), lambda: remembered_refusal(directory), fuse_overlay_missing)
    return _chosen


PROBE_FILE = "overlay-probe"   # in LABKIT_HOME: "<boot id> <kernel release>\n<refusal, or nothing>"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def remembered_refusal(directory=None) -> str | None:
    """`kernel_overlay_refusal`, probed once per boot and kernel: the probe's unmount
    waits for the kernel's RCU grace periods (tens to hundreds of ms on a loaded host),
    which a helper's first start must not pay each time."""
    if directory is None:
        return kernel_overlay_refusal()
    with open(BOOT_ID) as boot:
        this_boot = f"{boot.read().strip()} {os.uname().release}"
    remembered = os.path.join(directory, PROBE_FILE)
    try:
        with open(remembered) as handle:
            boot, _, refusal = handle.read().partition("\n")
        if boot == this_boot:
            return refusal or None
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    refusal = kernel_overlay_refusal(directory)
    import tempfile   # rootless only: not on the path of every helper's start

    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{PROBE_FILE}-", delete=False) as handle:
        handle.write(f"{this_boot}\n{refusal or ''}")
    os.replace(handle.name, remembered)
    return refusal


def fuse_overlay_missing() -> str | None:
    """None where fuse-overlayfs can serve a container's root; else what is missing and the fix."""
    if shutil.which(FUSE_PROGRAM) is None:
        return f"{FUSE_PROGRAM} is not installed (Debian: apt-get install fuse-overlayfs)"
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as error:
        return (f"{FUSE_DEVICE} cannot be opened ({error.strerror}): load the fuse module (modprobe fuse) "
                f"and let users open it (mode 0666, as Debian makes it)")
    return None


def kernel_overlay_refusal(directory=None) -> str | None:
    """None if the kernel mounts an overlay (with `userxattr`) as root of a user namespace;
    else its error. Probed for real in a forked child, in a scratch directory under
    `directory` (default: the temp dir), which it leaves empty and this function removes."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix=".overlay-probe-", dir=directory)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _probe_in_child(scratch)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    if code < 0:
        return f"the probe was killed by signal {-code}"
    return f"mount: {os.strerror(code)}"


def _probe_in_child(scratch) -> int:
    """0 if the mount worked, else its errno. Runs in a fork: changes its own namespaces."""
    from labkit.images.overlay import mount_overlay
    from labkit.linux import syscalls
    from labkit.linux.namespaces import BY_NAME, in_initial_user_namespace
    from labkit.linux.rootless import IdMap, write_own_maps

    paths = {name: os.path.join(scratch, name) for name in ("lower", "upper", "work", "merged")}
    try:
        if in_initial_user_namespace():
            uid, gid = os.geteuid(), os.getegid()
            syscalls.unshare(BY_NAME["user"].flag)
            write_own_maps(IdMap("uid", ((0, uid, 1),)), IdMap("gid", ((0, gid, 1),)))
        syscalls.unshare(BY_NAME["mnt"].flag)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        for path in paths.values():
            os.mkdir(path)
        open(os.path.join(paths["lower"], "file"), "w").close()
        mount_overlay(paths["merged"], [paths["lower"]], paths["upper"], paths["work"], in_user_namespace=True)
        syscalls.umount2(paths["merged"], syscalls.MNT_DETACH)
        return 0
    except OSError as error:
        return error.errno or errno.EIO
    finally:
        # Root of the scratch namespace may enter the 000 work/work the kernel made: the
        # caller outside may not.
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)

