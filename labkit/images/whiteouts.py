"""Deletion markers, in the two forms a layer can take.

Overlay form (what the kernel reads in a lowerdir and writes in an upperdir):
  * a deleted path is a *whiteout*: a character device 0:0 with the deleted name;
  * a directory that replaces (rather than merges with) the one below is *opaque*:
    it carries the xattr `trusted.overlay.opaque=y`.

OCI form (what goes in a layer tar, so that any tool can read it):
  * a deleted path `d/name` is an empty file `d/.wh.name`;
  * an opaque directory `d` holds an empty file `d/.wh..wh..opq`.

Layers are stored on disk in overlay form so that a container can mount them as
they are; tars and digests use the OCI form (see layers.py).
"""

import errno
import os
import stat

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# A mount with `userxattr` (inside a user namespace) reads user.overlay.* instead of
# trusted.overlay.*: stored layers carry both so either kind of mount sees opacity.
USER_OPAQUE_XATTR = "user.overlay.opaque"
OPAQUE_XATTRS = (OPAQUE_XATTR, USER_OPAQUE_XATTR)
# fuse-overlayfs (a rootless root where the kernel cannot: images/fuse_overlay.py) writes
# whiteouts as the kernel does, but marks an opaque directory with its own xattr and two
# entries of its own (an empty `.wh..wh..opq` file, a `.wh..opq` whiteout); where it may
# not mknod (a user namespace before Linux 5.8) a deleted NAME is an empty file `.wh.NAME`.
FUSE_OPAQUE_XATTR = "user.fuseoverlayfs.opaque"
FUSE_OPAQUE_ENTRIES = (OPAQUE_MARKER, ".wh..opq")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
INIT_LAYER_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path) -> bool:
    for name in (*OPAQUE_XATTRS, FUSE_OPAQUE_XATTR):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError as error:
            if error.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return False


def fuse_marker(name, st) -> str | None:
    """What a `.wh.` entry of an upper dir fuse-overlayfs wrote is: "opaque" (one of its
    marks of an opaque directory, which also has FUSE_OPAQUE_XATTR), "whiteout" (an empty
    `.wh.NAME`: NAME is deleted); None for any other entry."""
    if not name.startswith(WHITEOUT_PREFIX):
        return None
    if name in FUSE_OPAQUE_ENTRIES:
        return "opaque"
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return "whiteout"
    return None


def make_whiteout(path) -> None:
    """Needs CAP_MKNOD (root): overlay only honours a real 0:0 character device."""
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def make_opaque(path) -> None:
    for name in OPAQUE_XATTRS:
        try:
            os.setxattr(path, name, b"y", follow_symlinks=False)
        except PermissionError:
            # trusted.* needs the host's CAP_SYS_ADMIN: a layer made rootless carries
            # user.overlay.opaque alone, which is what its (userxattr) mounts read.
            if name != OPAQUE_XATTR:
                raise


def strip_overlay_xattrs(path) -> None:
    """Drop overlay's private bookkeeping (origin, impure, nlink...) except opacity.

    Those xattrs describe the upper dir's relation to *its* lowers; in a stored layer
    they would be stale and could confuse a later mount.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES) and name not in OPAQUE_XATTRS:
            os.removexattr(path, name, follow_symlinks=False)


def unsupported_overlay_feature(path) -> str | None:
    """The name of an overlay xattr that means the upper dir is not self-contained."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    for name in ("trusted.overlay.redirect", "trusted.overlay.metacopy",
                 "user.overlay.redirect", "user.overlay.metacopy"):
        if name in names:
            return name
    return None
