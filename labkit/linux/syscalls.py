"""ctypes wrappers over libc; every failure is an OSError naming what was attempted.

`libc` here is labkit's one handle on the C library: other modules that call into it
(seccomp's filter load, cgroup v2's bpf) take it from here rather than opening it again.

Kept free of heavy imports: the container helper process imports this module and
forks once per container, so everything here must be cheap to have in memory.
"""

import ctypes
import os
import sys

from labkit.errors import HostError


def _linked_libc():
    """The C library this interpreter is already linked against (glibc's libc.so.6,
    musl's libc.so): dlopen(NULL) finds it with no name to guess. Not
    ctypes.util.find_library, which runs `ldconfig -p` as a subprocess (10-50 ms) in
    every process that imports this module, `labkit run` included."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):
        raise HostError(f"the C library linked into {sys.executable} has no unshare(2): labkit needs "
                        "Linux with glibc or musl")
    return libc


libc = _linked_libc()

# clone(2) / unshare(2) flags
CLONE_NEWTIME = 0x00000080
CLONE_FS = 0x00000200          # not a namespace: a private root and working directory (unshare in a thread)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

# umount2(2) flags
MNT_DETACH = 2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAPBSET_READ = 23
PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4

SYS_pivot_root = 155  # x86_64; aarch64 uses 41
if os.uname().machine in ("aarch64", "arm64"):
    SYS_pivot_root = 41


def _check(result, what):
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _bytes(path):
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    """unshare(2): move the caller into new namespaces of the kinds in `flags`."""
    _check(libc.unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that `fd` (an open /proc/PID/ns/* file) refers to."""
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd {fd}, 0x{nstype:x})")


def mount(source, target, fstype=None, flags: int = 0, data=None) -> None:
    """mount(2)."""
    _check(
        libc.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)),
        f"mount {source!r} on {target!r} (type {fstype}, flags 0x{flags:x}, {data or 'no options'})",
    )


def umount2(target, flags: int = 0) -> None:
    """umount2(2)."""
    _check(libc.umount2(_bytes(target), ctypes.c_int(flags)), f"umount {target!r}")


def pivot_root(new_root, put_old) -> None:
    """pivot_root(2): make `new_root` the root of this mount namespace, the old root at `put_old`."""
    _check(
        libc.syscall(ctypes.c_long(SYS_pivot_root), _bytes(new_root), _bytes(put_old)),
        f"pivot_root({new_root!r}, {put_old!r})",
    )


def sethostname(name: str) -> None:
    """sethostname(2), inside the caller's UTS namespace."""
    raw = name.encode()
    _check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option}, {arg2})",
    )


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """The calling thread's capability sets (64-bit masks), as capset(2) takes them."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                                 effective >> 32, permitted >> 32, inheritable >> 32)
    _check(libc.capset(header, data), "capset")


def prctl_set_pdeathsig(signal_number: int) -> None:
    """Ask the kernel to send `signal_number` to the caller when its parent dies."""
    prctl(PR_SET_PDEATHSIG, signal_number)


def prctl_set_no_new_privs() -> None:
    """execve can no longer grant privileges (setuid bits, file capabilities)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def prctl_set_not_dumpable() -> None:
    """Nothing of the caller's memory (/proc/PID/environ, mem, maps, fd) is open to a
    process without CAP_SYS_PTRACE, even one with the caller's uid and capabilities, nor
    may it ptrace the caller."""
    prctl(PR_SET_DUMPABLE, 0)


def prctl_set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to the caller rather than to init."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def prctl_set_name(name: str) -> None:
    """The `comm` shown by ps (at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(libc.prctl(ctypes.c_int(PR_SET_NAME), buffer, 0, 0, 0), f"prctl(PR_SET_NAME, {name!r})")
