"""Thin, typed wrappers over the Linux syscalls that make a container.

Names and flags are the kernel's own (`unshare`, `pivot_root`, `MS_PRIVATE`) so that
what a student reads in `man 2` is what they see here.
"""

from labkit.linux.namespaces import NAMESPACES, Namespace, available_namespaces, namespace_inode
from labkit.linux.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    pivot_root,
    prctl_set_no_new_privs,
    prctl_set_pdeathsig,
    sethostname,
    setns,
    umount2,
    unshare,
)

__all__ = [
    "NAMESPACES", "Namespace", "available_namespaces", "namespace_inode",
    "MNT_DETACH", "MS_BIND", "MS_NODEV", "MS_NOEXEC", "MS_NOSUID", "MS_PRIVATE",
    "MS_RDONLY", "MS_REC", "MS_REMOUNT",
    "mount", "pivot_root", "prctl_set_no_new_privs", "prctl_set_pdeathsig",
    "sethostname", "setns", "umount2", "unshare",
]
