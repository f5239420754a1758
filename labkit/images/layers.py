"""Layers: a directory of files (overlay form), named by the sha256 of its canonical tar.

The canonical tar is the layer's one true byte form, so the same content gives the
same digest on every run and every machine:

  * entries are sorted by their tar name as raw bytes; a parent's name is a prefix
    of its children's, so parents always come first, and the order depends on
    nothing but the names (not on readdir order, locale or walk strategy);
  * times are zero, owner and group *names* are empty (numeric ids are kept),
    there are no extended attributes, and the format is PAX (POSIX.1-2001), which
    only adds an extended header when a field does not fit (long or non-ASCII
    names, big ids), so it too depends on content alone;
  * deletions are written in the OCI form (`.wh.` files, see whiteouts.py) so the
    tar is an ordinary OCI layer: the digest *is* the OCI `diff_id`, and export
    and re-import give the same digest;
  * hard links inside the layer become link entries to the first name in order;
  * the archive ends with two zero blocks, padded to a 10 KiB record like tar(1).
"""

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass

from labkit.errors import ImageError
from labkit.images.whiteouts import OPAQUE_MARKER, WHITEOUT_PREFIX, is_opaque, is_whiteout

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
MARKER_MODE = 0o600


@dataclass
class Entry:
    name: str                 # name in the tar (OCI form), '/'-separated, relative
    path: str | None          # the file on disk; None for an opaque marker
    st: os.stat_result | None
    kind: str                 # file, dir, symlink, whiteout, opaque, fifo, chr, blk


def canonical_entries(root) -> list:
    """Every entry of the layer at `root`, in canonical (sorted tar name) order."""
    entries = []
    pending = [("", os.fspath(root))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as listing:
            for item in listing:
                st = item.stat(follow_symlinks=False)
                name = prefix + item.name
                entry = entry_for(name, item.path, st)
                if entry is None:
                    continue
                entries.append(entry)
                if entry.kind == "dir":
                    if is_opaque(item.path):
                        entries.append(Entry(f"{name}/{OPAQUE_MARKER}", None, None, "opaque"))
                    pending.append((name + "/", item.path))
    return sort_canonically(entries)


def entry_for(name, path, st) -> Entry | None:
    """The tar entry of the file at `path`, named `name` in the layer (None for a socket)."""
    if name.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
        raise ImageError(
            f"cannot store {name!r}: names starting with '{WHITEOUT_PREFIX}' are reserved "
            "for deletion markers in OCI layers; rename the file"
        )
    mode = st.st_mode
    if is_whiteout(st):
        head, _, base = name.rpartition("/")
        return Entry((head + "/" if head else "") + WHITEOUT_PREFIX + base, path, st, "whiteout")
    for kind, test in (("file", stat.S_ISREG), ("dir", stat.S_ISDIR), ("symlink", stat.S_ISLNK),
                       ("fifo", stat.S_ISFIFO), ("chr", stat.S_ISCHR), ("blk", stat.S_ISBLK)):
        if test(mode):
            return Entry(name, path, st, kind)
    return None  # sockets cannot live in a tar; they are recreated by whoever listens


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "whiteout": tarfile.REGTYPE, "opaque": tarfile.REGTYPE}


def header(entry: Entry, hardlink_to: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mtime = 0
    info.uname = info.gname = ""
    info.type = _TYPES[entry.kind]
    if entry.kind in ("whiteout", "opaque"):
        info.mode = MARKER_MODE
        return info
    st = entry.st
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    if hardlink_to is not None:
        info.type, info.linkname = tarfile.LNKTYPE, hardlink_to
    elif entry.kind == "file":
        info.size = st.st_size
    elif entry.kind == "symlink":
        info.linkname = os.readlink(entry.path)
    elif entry.kind in ("chr", "blk"):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


def header_block(info: tarfile.TarInfo) -> bytes:
    """`info` as tarfile writes it in PAX format: built directly when it fits a plain
    ustar header (the common case; tarfile's general path costs ~0.2 ms an entry,
    more than hashing a small file), through tarfile otherwise."""
    block = _ustar_block(info)
    return block if block is not None else info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _ustar_block(info: tarfile.TarInfo) -> bytes | None:
    try:
        name, link = info.name.encode("ascii"), info.linkname.encode("ascii")
    except UnicodeEncodeError:
        return None  # needs a pax "path"/"linkpath" record
    if info.type == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"  # as tarfile (and tar(1)) name directories
    device = info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE)
    numbers = (info.uid, info.gid, info.devmajor, info.devminor)
    if len(name) > 100 or len(link) > 100 or info.uname or info.gname or info.mtime \
            or not all(0 <= number < 8 ** 7 for number in numbers) or not 0 <= info.size < 8 ** 11:
        return None
    block = b"".join((
        name.ljust(100, b"\0"), b"%07o\0" % (info.mode & 0o7777), b"%07o\0" % info.uid, b"%07o\0" % info.gid,
        b"%011o\0" % info.size, b"%011o\0" % 0, b" " * 8, info.type, link.ljust(100, b"\0"),
        tarfile.POSIX_MAGIC, bytes(64),
        b"%07o\0%07o\0" % (info.devmajor, info.devminor) if device else bytes(16),
    )).ljust(BLOCK, b"\0")
    checksum = 256 + sum(block[:148]) + sum(block[156:])  # the checksum field counts as spaces
    return block[:148] + b"%06o\0" % checksum + block[155:]


def sort_canonically(entries) -> list:
    return sorted(entries, key=lambda entry: os.fsencode(entry.name))


def write_canonical_tar(root, sink, entries=None, copy=None) -> int:
    """Write the canonical tar of the layer at `root` to `sink` (anything with write()).

    `copy(entry, hardlink_to)`, when given, is called for every entry in tar order and
    may return a raw file to which the entry's content is also written as it streams
    through: a commit copies and digests a layer in one read of each file.
    Returns the number of bytes written.
    """
    entries = canonical_entries(root) if entries is None else entries
    written = 0
    first_name_of_inode = {}
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for entry in entries:
        hardlink_to = None
        if entry.kind == "file" and entry.st.st_nlink > 1:
            inode = (entry.st.st_dev, entry.st.st_ino)
            hardlink_to = first_name_of_inode.get(inode)
            first_name_of_inode.setdefault(inode, entry.name)
        info = header(entry, hardlink_to)
        block = header_block(info)
        sink.write(block)
        written += len(block)
        also = copy(entry, hardlink_to) if copy is not None else None
        try:
            if info.type == tarfile.REGTYPE and info.size:
                written += _write_content(entry.path, info.size, sink, view, also)
        finally:
            if also is not None:
                also.close()
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    sink.write(bytes(end))
    return written + end


def _write_content(path, size, sink, view, also=None) -> int:
    copied = 0
    with open(path, "rb", buffering=0) as content:
        while copied < size:
            count = content.readinto(view[: min(CHUNK, size - copied)])
            if not count:
                raise ImageError(f"{path} shrank while it was being stored; is a container still writing to it?")
            sink.write(view[:count])
            if also is not None:
                also.write(view[:count])  # a raw file: writes all of a regular file's bytes
            copied += count
    padding = -size % BLOCK
    if padding:
        sink.write(bytes(padding))
    return copied + padding


class HashingSink:
    """A write-only sink that keeps the sha256 and length of what went through it,
    optionally passing the bytes on to `downstream`."""

    def __init__(self, downstream=None):
        self.hash = hashlib.sha256()
        self.size = 0
        self.downstream = downstream

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        if self.downstream is not None:
            self.downstream.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def layer_digest(root) -> str:
    """'sha256:<hex>' of the canonical tar of the layer directory `root`."""
    sink = HashingSink()
    write_canonical_tar(root, sink)
    return sink.digest


def tree_size(root) -> int:
    """Bytes of regular file content in the layer (what `image history` shows)."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
