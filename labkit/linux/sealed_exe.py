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
Python linked to a shared libpython, ~7 MB for Debian's static one), of the bytes a process
maps: an ELF file's sections that no process loads (debug information, the symbol table:
17 of pyenv's 23 MB libpython) stay out of it, with the section header table that names
them (`_loaded_part`); copying them cost every `labkit run` ~20 ms. The helper is started
from `/proc/PID/fd/N` of it, with argv[0] the real interpreter's path (Python finds its
prefix and a venv's pyvenv.cfg from argv[0], not from the executable's name).

A Python linked to a shared libpython (pyenv's, any --enable-shared build) runs mostly from
that library, and "text file busy" does not even cover a mapped library: a process that
reaches it (/proc/PID/map_files of a process joining a container, for one holding
CAP_SYS_ADMIN) could write the host's file while it runs. So it is sealed the same way
(`memfd:labkit-libpython`) and given to the sealed interpreter as LD_PRELOAD: the dynamic
loader then takes it for the DT_NEEDED entry of the same soname and never opens the
host's file. The sealed process drops LD_PRELOAD from its environment at once
(`adopt_preload`), so none of its own children load it.
"""

import errno
import fcntl
import os
import struct
import sys
import time

MEMFD_NAME = "labkit-python"
LIBRARY_MEMFD_NAME = "labkit-libpython"
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_copy = None     # the sealed memfd's fd in this process
_library = None  # the sealed libpython's fd, or -1: the interpreter maps none from a file


def sealed_copy(binary: str = "/proc/self/exe", name: str = MEMFD_NAME) -> int:
    """An fd of a sealed memfd holding `binary` (this process's own, by default): made
    once, close-on-exec."""
    global _copy
    if _copy is None or binary != "/proc/self/exe":
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with open(binary, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                size, header = _loaded_part(source.fileno(), size) or (size, None)
                copied = 0
                while copied < size:
                    sent = os.sendfile(fd, source.fileno(), copied, size - copied)
                    if not sent:
                        raise OSError(f"{binary} shrank while it was being copied")
                    copied += sent
            if header is not None:
                os.pwrite(fd, header, 0)
            _seal(fd)
        except BaseException:
            os.close(fd)
            raise
        if binary != "/proc/self/exe":
            return fd
        _copy = fd
    return _copy


SEAL_ATTEMPTS = 5


def _seal(fd: int) -> None:
    """F_ADD_SEALS, again while the kernel says EBUSY: sealing against writes waits (~150 ms)
    for every page of the file to be free of references beyond its own, and a page held a
    moment longer elsewhere (reclaim or a memory monitor scanning it: a fresh clone's `make
    test`, with a VM beside it, once met EBUSY here) is held no longer by the next try."""
    for attempt in range(SEAL_ATTEMPTS):
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            return
        except OSError as error:
            if error.errno != errno.EBUSY or attempt == SEAL_ATTEMPTS - 1:
                raise OSError(error.errno, f"sealing labkit's copy of the interpreter: {error.strerror}") from None
            time.sleep(0.05 * (attempt + 1))


SHF_ALLOC, SHT_NOBITS = 0x2, 8
_ELF64 = {1: "<", 2: ">"}   # EI_DATA: little-, big-endian


def _loaded_part(fd: int, size: int) -> tuple | None:
    """(length, ELF header) to copy of a 64-bit ELF file whose bytes past its loaded
    segments are nothing but sections no process maps and the section header table: the
    file's first `length` bytes, with this header (no section header table: e_shoff,
    e_shnum and e_shstrndx 0, as `sstrip` leaves a file; the loader reads program headers
    only). None: copy the whole file (not such an ELF file, or anything else past its
    segments, such as an appended archive)."""
    header = os.pread(fd, 64, 0)
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[6] != 1 or header[5] not in _ELF64:
        return None
    order = _ELF64[header[5]]
    phoff, shoff = struct.unpack_from(order + "QQ", header, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 0x36)
    if phentsize < 56 or shentsize < 64 or not phnum or not shnum or not shoff:
        return None
    programs = os.pread(fd, phentsize * phnum, phoff)
    length = phoff + phentsize * phnum
    for index in range(phnum):
        offset, _vaddr, _paddr, filesz = struct.unpack_from(order + "QQQQ", programs, index * phentsize + 8)
        length = max(length, offset + filesz)
    length = -(-length // 4096) * 4096   # a whole last page: the loader maps pages
    if length >= size:
        return None
    unloaded = [(shoff, shoff + shentsize * shnum)]
    sections = os.pread(fd, shentsize * shnum, shoff)
    for index in range(shnum):
        kind, flags, _addr, offset, section_size = struct.unpack_from(order + "IQQQQ", sections, index * shentsize + 4)
        if kind == SHT_NOBITS or not section_size:
            continue
        if flags & SHF_ALLOC:
            if offset + section_size > length:
                return None   # a section a process maps lies past the segments: not an ordinary file
        elif offset + section_size > length:
            unloaded.append((offset, offset + section_size))
    covered = length
    for start, end in sorted(unloaded):
        if start > covered + 64:   # alignment only: anything more is data no section names
            return None
        covered = max(covered, end)
    if covered < size:
        return None
    return length, header[:0x28] + bytes(8) + header[0x30:0x3C] + bytes(4)


def shared_libpython() -> str | None:
    """The libpython file this interpreter maps, when it is linked to a shared one; None for
    a static interpreter (Debian's /usr/bin/python3) or one whose library is sealed already."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and os.path.basename(fields[5]).startswith("libpython"):
                return fields[5]
    return None


def sealed_library() -> int | None:
    """An fd of a sealed memfd holding this interpreter's shared libpython (made once,
    close-on-exec), or None when there is none to seal."""
    global _library
    if _library is None:
        path = shared_libpython()
        _library = -1 if path is None else sealed_copy(path, LIBRARY_MEMFD_NAME)
    return None if _library == -1 else _library


def exec_path() -> str:
    """The path a child of this process execs to run the sealed copy (a child may exec
    its parent's fd: it needs no copy of its own)."""
    return f"/proc/{os.getpid()}/fd/{sealed_copy()}"


def exec_environment(env) -> dict:
    """`env` for a child that execs `exec_path()`: with the sealed libpython preloaded, when
    the interpreter has one."""
    library = sealed_library()
    if library is None:
        return dict(env)
    return dict(env, LD_PRELOAD=f"/proc/{os.getpid()}/fd/{library}")


def run_sealed() -> None:
    """Go on as this same program, run from the sealed copy: exec it again with the same
    arguments (nothing happens when this process already runs sealed). For a program that
    becomes the helper by forking itself (`labkit run`), before it has done anything."""
    if running_sealed():
        adopt_preload()
        return
    env = dict(os.environ)
    library = sealed_library()
    if library is not None:
        # the loader reads LD_PRELOAD after the exec, when close-on-exec fds are gone
        inherited = os.dup(library)
        os.set_inheritable(inherited, True)
        env["LD_PRELOAD"] = f"/proc/self/fd/{inherited}"
    os.execve(f"/proc/self/fd/{sealed_copy()}", [sys.executable, *sys.orig_argv[1:]], env)


def adopt_preload() -> None:
    """In a process just started from the sealed copy: LD_PRELOAD (the sealed libpython) is
    dropped from the environment, so that no program this one starts loads it; an fd of
    this process it named is kept as this process's sealed library."""
    global _library
    preload = os.environ.get("LD_PRELOAD", "")
    if not preload.startswith("/proc/"):
        return
    try:
        target = os.readlink(preload)
    except OSError:
        target = ""
    if not target.startswith(f"/memfd:{LIBRARY_MEMFD_NAME}"):
        return
    del os.environ["LD_PRELOAD"]
    own = "/proc/self/fd/"
    if preload.startswith(own) and _library is None:
        _library = int(preload[len(own):])
        os.set_inheritable(_library, False)


def running_sealed(pid: int | str = "self") -> bool:
    """Does `pid` run from a sealed copy (not from a file on a filesystem)?"""
    return os.readlink(f"/proc/{pid}/exe").startswith(f"/memfd:{MEMFD_NAME}")
