"""Thin, typed wrappers over the Linux syscalls that make a container.

Names and flags are the kernel's own (`unshare`, `pivot_root`, `MS_PRIVATE`) so that
what a student reads in `man 2` is what they see here.

Names are loaded on first use: `from labkit.linux import processes` (what `labkit ps`
and the sweep before each helper start need) must not load ctypes and the namespace table.
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("NAMESPACES", "Namespace", "available_namespaces", "namespace_inode"),
                    "labkit.linux.namespaces"),
    **dict.fromkeys(("MNT_DETACH", "MS_BIND", "MS_NODEV", "MS_NOEXEC", "MS_NOSUID", "MS_PRIVATE", "MS_RDONLY",
                     "MS_REC", "MS_REMOUNT", "mount", "pivot_root", "prctl_set_no_new_privs",
                     "prctl_set_pdeathsig", "sethostname", "setns", "umount2", "unshare"),
                    "labkit.linux.syscalls"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'labkit.linux' has no attribute {name!r}")
