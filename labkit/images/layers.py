"""Layers: a directory of files, named by the sha256 of its canonical tar.

The canonical tar lists entries in sorted path order with times, owners' names and
other per-machine noise zeroed, so the same content gives the same digest on every
run and every machine.
"""

import hashlib
import io
import os
import stat
import tarfile


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uname = ""
    info.gname = ""
    info.pax_headers = {}
    return info


def walk_sorted(root):
    """Every path below `root` (relative, '/'-separated), parents before children, sorted."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        relative_dir = os.path.relpath(directory, root)
        names = sorted(dirs + files)
        for name in names:
            yield name if relative_dir == "." else f"{relative_dir}/{name}"
        # os.walk descends into dirs in the order left in `dirs` (sorted above); files and
        # directories of one folder are emitted together, then each subfolder's contents.


def write_canonical_tar(root, fileobj) -> None:
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for relative in walk_sorted(root):
            path = os.path.join(root, relative)
            info = _normalise(archive.gettarinfo(path, arcname=relative))
            if info.isreg():
                with open(path, "rb") as content:
                    archive.addfile(info, content)
            else:
                archive.addfile(info)


class _HashWriter(io.RawIOBase):
    def __init__(self):
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def layer_digest(root) -> str:
    """'sha256:<hex>' of the canonical tar of the directory `root`."""
    sink = _HashWriter()
    write_canonical_tar(root, sink)
    return "sha256:" + sink.hash.hexdigest()


def tree_size(root) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
