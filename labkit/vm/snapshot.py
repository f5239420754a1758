"""The VM kernel's saved guest: booted once with the kernel's modules imported, restored
for every kernel start after that.

QEMU refuses to save a guest that has a 9p export mounted, and the guest's root is the
host's `/` over 9p. So the guest that is saved boots with its root in memory: a copy of
the files the warm agent reads (`hot_files`: every module the kernel's imports load, and
the runtime helper's, the shared libraries mapped, the interpreter, busybox for the base
image), copied off the host's root by stage 1, which then unmounts it
(guest.stage1_init(hot=True)). After the restore that copy stays the top layer of the
guest's root, over the host's: a process started later (the runtime's helper) reads
those files from guest memory too. Once the
agent has imported the kernel's modules and built the base image, the host stops the
guest, migrates it into a file (`migrate exec:cat > FILE` on QMP) and lets it run on.
Every later start with the same key restores that file (`-incoming`) instead of booting.
In both cases the agent's `resume` then mounts the host's root and the notebooks'
directory and makes the guest fresh (token, clock, random pool, hostname).

A snapshot is keyed by content: the bytes of every hot file, the initramfs and the
scripts that built the guest, the QEMU binary, the guest's memory, CPUs and
acceleration. A change to labkit, the venv or Python changes the key, so a stale guest
is never restored; the store keeps only the newest snapshot.

    LABKIT_HOME/vm/snapshots/<key>/state        the migration stream (guest memory)
    LABKIT_HOME/vm/snapshots/<key>/initrd.cpio  the initramfs it booted from
    LABKIT_HOME/vm/snapshots/<key>/token        its agent's token, replaced on resume
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import HostError
from labkit.vm import cache, guest
from labkit.vm.agent import LATER_MODULES, WARM_MODULES

SNAPSHOT_VARIABLE = "LABKIT_VM_SNAPSHOT"   # "off": boot every kernel's guest as before
PARTIAL_PREFIX = ".partial-"
# What a kernel's start needs before its first import from the host's root: the modules
# the agent preloads, the base image's builder, and what they load.
_LIST_HOT_FILES = r"""
import importlib, importlib.util, json, os, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        if name in sys.argv[1:1 + int(os.environ["LABKIT_REQUIRED"])]:
            raise
files = {sys.executable, os.path.join(sys.prefix, "pyvenv.cfg")}
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if not path:
        continue
    files.add(path)
    if path.endswith(".py"):
        files.add(importlib.util.cache_from_source(path))
with open("/proc/self/maps") as maps:
    files.update(line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6
                 and line.split(None, 5)[5].startswith("/"))
for directory in sys.path:
    if os.path.isdir(directory):
        files.update(os.path.join(directory, name) for name in os.listdir(directory)
                     if name.endswith(".pth") or name.startswith("__editable__"))
from labkit.images.busybox import find_static_busybox
files.add(str(find_static_busybox()))
print(json.dumps(sorted(files)))
"""


def elf_interpreter(path) -> str | None:
    """The dynamic loader a 64-bit little-endian ELF executable names (PT_INTERP), or None:
    /proc/PID/maps shows it by its real path, the kernel looks it up by this one."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return None
        table, = struct.unpack_from("<Q", header, 32)
        entry_size, entries = struct.unpack_from("<HH", header, 54)
        for index in range(entries):
            handle.seek(table + index * entry_size)
            entry = handle.read(entry_size)
            if struct.unpack_from("<I", entry)[0] == 3:   # PT_INTERP
                offset, = struct.unpack_from("<Q", entry, 8)
                size, = struct.unpack_from("<Q", entry, 32)
                handle.seek(offset)
                return handle.read(size).rstrip(b"\0").decode()
    return None


def enabled() -> bool:
    return os.environ.get(SNAPSHOT_VARIABLE, "on") != "off"


def hot_files(python, agent: Path) -> list[str]:
    """Every path the warm agent in the guest reads, with each symlink on the way to it."""
    required = ("labkit.vm.agent", *WARM_MODULES, "labkit.images.busybox")
    # The runtime's helper is a process of its own, started by the first container cell.
    optional = (*LATER_MODULES, "labkit.runtime.helper.zygote")
    result = subprocess.run([python, "-I", "-c", _LIST_HOT_FILES, *required, *optional], capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={**os.environ, "LABKIT_REQUIRED": str(len(required))})
    if result.returncode != 0:
        raise HostError(f"could not list the VM kernel's files with {python}: {result.stderr.strip()[-2000:]}")
    paths = set(json.loads(result.stdout)) | {str(agent)}
    paths |= {loader for path in list(paths) if os.path.isfile(path) and os.access(path, os.X_OK)
              and (loader := elf_interpreter(path))}
    # /proc/PID/maps names a library by its real path; the loader opens it by its soname,
    # a link next to it (libffi.so.8 -> libffi.so.8.1.2).
    for directory in {os.path.dirname(path) for path in paths if ".so" in os.path.basename(path)}:
        for entry in os.scandir(directory):
            if entry.is_symlink() and os.path.realpath(entry.path) in paths:
                paths.add(entry.path)
    listed = set()
    for path in paths:
        listed.update(_with_links(Path(path)))
    return sorted(str(path) for path in listed if path.exists() or path.is_symlink())


def _with_links(path: Path) -> set[Path]:
    """`path` and every symlink on the way to it, each link's target followed the same way."""
    found = set()

    def visit(path: Path, depth=0):
        current = Path(path.parts[0])
        for index, part in enumerate(path.parts[1:], 1):
            current = current / part
            if current.is_symlink() and depth < 40:
                found.add(current)
                target = Path(os.path.normpath(current.parent / os.readlink(current)))
                visit(target.joinpath(*path.parts[index + 1:]), depth + 1)
                return
        found.add(current)

    visit(Path(os.path.abspath(path)))
    return found


def key(files, *, initramfs: bytes, qemu_argv, memory_mib, cpus, accel, extra="") -> str:
    """A digest of everything a saved guest was made of (see the module's docstring): the
    bytes of every file in `files`, and the names in their directories (a package added
    next to them, a new .pth, changes what the same imports load)."""
    digest = hashlib.sha256()
    for value in (guest.RESUME, json.dumps([str(word) for word in qemu_argv]), str(memory_mib), str(cpus), accel,
                  extra):
        digest.update(value.encode() + b"\0")
    digest.update(hashlib.sha256(initramfs).digest())
    for directory in sorted({os.path.dirname(path) for path in files}):
        try:
            digest.update(f"{directory}: {sorted(os.listdir(directory))}".encode())
        except OSError:
            digest.update(f"{directory}: missing".encode())
    for path in [qemu_argv[0], *files]:
        digest.update(str(path).encode() + b"\0")
        if os.path.islink(path):
            digest.update(b"-> " + os.readlink(path).encode())
        elif os.path.isfile(path):
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Snapshot:
    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.cpio"

    @property
    def token(self) -> str:
        return (self.directory / "token").read_text().strip()

    @property
    def files(self) -> list[str]:
        return json.loads((self.directory / "files.json").read_text())


def store() -> Path:
    return cache.vm_home() / "snapshots"


def newest() -> Snapshot | None:
    """The snapshot in the store (commit keeps one), if it is complete."""
    try:
        candidates = [path for path in store().iterdir() if not path.name.startswith(PARTIAL_PREFIX)]
    except OSError:
        return None
    for directory in sorted(candidates, key=lambda path: path.stat().st_mtime, reverse=True):
        found = Snapshot(directory)
        if all((directory / name).is_file() for name in ("state", "initrd.cpio", "token", "files.json")):
            return found
    return None


def new_partial(initrd: Path, token: str, files) -> Snapshot:
    """A private directory in the store for a snapshot being written; `commit` or `discard` it."""
    store().mkdir(mode=0o700, parents=True, exist_ok=True)
    _sweep_partials_of_dead_owners()
    directory = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=store()))
    shutil.copyfile(initrd, directory / "initrd.cpio")
    (directory / "token").write_text(token)
    (directory / "files.json").write_text(json.dumps(list(files)))
    return Snapshot(directory)


def commit(partial: Snapshot, snapshot_key) -> Snapshot:
    """Put a written snapshot under its key, and drop every other (older) one."""
    final = store() / snapshot_key
    try:
        partial.directory.rename(final)
    except OSError:   # another kernel saved the same key first: theirs is as good
        discard(partial)
    for other in store().iterdir():
        if other != final and not other.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(other, ignore_errors=True)
    return Snapshot(final)


def discard(snapshot: Snapshot | None):
    if snapshot is not None:
        shutil.rmtree(snapshot.directory, ignore_errors=True)


def _sweep_partials_of_dead_owners():
    for directory in store().glob(f"{PARTIAL_PREFIX}*"):
        owner = directory.name.removeprefix(PARTIAL_PREFIX).split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(directory, ignore_errors=True)
