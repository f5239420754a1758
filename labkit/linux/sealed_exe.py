"""The interpreter, copied into a sealed memfd: what a container reaches through /proc/self/exe.

Every process that becomes or joins a container runs labkit's Python until its last
exec. Inside, `/proc/self/exe` (and `/proc/PID/exe` of such a process) leads to the file
it was started from: with the host's interpreter, a file on the host's own writable
filesystem. An image whose command is a symlink to `/proc/self/exe` then runs the host's
interpreter and may read it; only the kernel's "text file busy" rule stands between it
and overwriting it, for as long as something still runs that file (CVE-2019-5736, where
runc was overwritten that way). runc 1.0-1.1 answered by running from a copy in a memfd
sealed against writes (nsenter/cloned_binary.c; 1.2 uses a private read-only overlay
mount). labkit does the same: the helper, and so every process forked from it, runs
from `memfd:labkit-python`, whose seals refuse a write whatever runs it.

The copy is made once per process that starts helpers (the binary only: a few KiB for a
Python linked to a shared libpython, ~7 MB for Debian's static one); the helper is started
from `/proc/PID/fd/N` of it, with argv[0] the real interpreter's path (Python finds its
prefix and a venv's pyvenv.cfg from argv[0], not from the executable's name).
"""

import fcntl
import os
import sys

MEMFD_NAME = "labkit-python"
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_copy = None   # the sealed memfd's fd in this process


def sealed_copy(binary: str = "/proc/self/exe") -> int:
    """An fd of a sealed memfd holding `binary` (this process's own, by default): made
    once, close-on-exec."""
    global _copy
    if _copy is None or binary != "/proc/self/exe":
        fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with open(binary, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                copied = 0
                while copied < size:
                    sent = os.sendfile(fd, source.fileno(), copied, size - copied)
                    if not sent:
                        raise OSError(f"{binary} shrank while it was being copied")
                    copied += sent
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
        if binary != "/proc/self/exe":
            return fd
        _copy = fd
    return _copy


def exec_path() -> str:
    """The path a child of this process execs to run the sealed copy (a child may exec
    its parent's fd: it needs no copy of its own)."""
    return f"/proc/{os.getpid()}/fd/{sealed_copy()}"


def run_sealed() -> None:
    """Go on as this same program, run from the sealed copy: exec it again with the same
    arguments (nothing happens when this process already runs sealed). For a program that
    becomes the helper by forking itself (`labkit run`), before it has done anything."""
    if not running_sealed():
        os.execv(f"/proc/self/fd/{sealed_copy()}", [sys.executable, *sys.orig_argv[1:]])


def running_sealed(pid: int | str = "self") -> bool:
    """Does `pid` run from a sealed copy (not from a file on a filesystem)?"""
    return os.readlink(f"/proc/{pid}/exe").startswith(f"/memfd:{MEMFD_NAME}")
