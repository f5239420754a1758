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

import contextlib
import errno
import hashlib
import os
import queue
import stat
import struct
import tarfile
import threading
from dataclasses import dataclass
from typing import NamedTuple

from labkit.errors import ImageError
from labkit.images.whiteouts import OPAQUE_MARKER, WHITEOUT_PREFIX, is_opaque, is_whiteout

BLOCK = 512
RECORD = 20 * BLOCK
BLOCK_SIZE = 1 << 20   # of the tar, as it is hashed, written and copied
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
    root = os.fspath(root)
    pending = [("", root, os.stat(root, follow_symlinks=False))]
    while pending:
        prefix, directory, seen = pending.pop()
        fd = open_as_seen(directory, seen, os.O_DIRECTORY)
        try:
            with os.scandir(fd) as listing:
                for item in listing:
                    st = item.stat(follow_symlinks=False)
                    name = prefix + item.name
                    path = os.path.join(directory, item.name)
                    entry = entry_for(name, path, st)
                    if entry is None:
                        continue
                    entries.append(entry)
                    if entry.kind == "dir":
                        if is_opaque(path):
                            entries.append(Entry(f"{name}/{OPAQUE_MARKER}", None, None, "opaque"))
                        pending.append((name + "/", path, st))
        finally:
            os.close(fd)
    return sort_canonically(entries)


def open_as_seen(path, seen: os.stat_result, flags=0) -> int:
    """Open `path` for reading only if it is still the very file the walk saw.

    A layer is often read while its container runs (`commit` of a running container),
    and that container may swap a file or a directory of its upper dir for a symlink
    between the walk and the read: followed on the host, `upper/etc -> /etc` would put
    the host's files into the layer. O_NOFOLLOW refuses a link as the last component;
    a link further up lands on another inode, which the fstat check refuses. Each
    directory the walk lists was opened this way, so every entry comes from inside."""
    why = "it is another file now"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            raise
        fd, why = None, error.strerror   # a link now, or gone
    if fd is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino):
            return fd
        os.close(fd)
    raise ImageError(f"{path} changed while it was being stored ({why}): is its container still running? "
                     "Nothing was stored; stop the container or commit again")


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


# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic+version, (empty
# owner names), device numbers, (empty prefix and padding): POSIX.1-1988 ustar.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s64x16s167x")
_OCTAL_7 = 8 ** 7


def _ustar_block(info: tarfile.TarInfo) -> bytes | None:
    try:
        name, link = info.name.encode("ascii"), info.linkname.encode("ascii")
    except UnicodeEncodeError:
        return None  # needs a pax "path"/"linkpath" record
    if info.type == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"  # as tarfile (and tar(1)) name directories
    if len(name) > 100 or len(link) > 100 or info.uname or info.gname or info.mtime \
            or not (0 <= info.uid < _OCTAL_7 and 0 <= info.gid < _OCTAL_7 and 0 <= info.size < 8 ** 11
                    and 0 <= info.devmajor < _OCTAL_7 and 0 <= info.devminor < _OCTAL_7):
        return None
    device = info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE)
    block = _USTAR.pack(
        name, b"%07o" % (info.mode & 0o7777), b"%07o" % info.uid, b"%07o" % info.gid, b"%011o" % info.size,
        b"%011o" % 0, b" " * 8, info.type, link, tarfile.POSIX_MAGIC,
        b"%07o\0%07o" % (info.devmajor, info.devminor) if device else b"",
    )
    # The sum of all 512 bytes, with the checksum field as eight spaces, as the format
    # says; summed where bytes can be non-zero (the rest is padding), ~3 us less a header.
    checksum = sum(name) + sum(block[100:157]) + sum(link) + sum(block[257:265]) + sum(block[329:345])
    return block[:148] + b"%06o\0" % checksum + block[155:]


def sort_canonically(entries) -> list:
    return sorted(entries, key=lambda entry: os.fsencode(entry.name))


def write_canonical_tar(root, sink, entries=None) -> int:
    """Write the canonical tar of the layer at `root` (or of `entries`, already in
    canonical order) to `sink` (anything with write()); returns its size in bytes."""
    written = 0
    for block in tar_blocks(canonical_entries(root) if entries is None else entries):
        sink.write(block.data)
        written += len(block.data)
    return written


class TarBlock(NamedTuple):
    data: memoryview    # the next len(data) bytes of the tar
    pieces: list        # (entry, header, content) in tar order, see tar_blocks
    buffer: bytearray   # what `data` is a view of


def tar_blocks(entries, next_buffer=None):
    """The canonical tar of `entries` as consecutive TarBlocks, each filling one buffer
    from `next_buffer()` (by default one BLOCK_SIZE buffer, reused once the consumer
    asks for the next block): sha256 and writes work on large blocks, however small
    the files, and each file's bytes are read once, into the block itself.

    A block's pieces say what it holds, for a consumer that copies the layer from
    the same bytes: `(entry, its TarInfo, None)` where an entry's header ends, then
    `(None, None, content)` for each part of that entry's content in this block.
    """
    layout = _Layout(next_buffer or _one_buffer())
    first_name_of_inode = {}
    for entry in entries:
        hardlink_to = None
        if entry.kind == "file" and entry.st.st_nlink > 1:
            inode = (entry.st.st_dev, entry.st.st_ino)
            hardlink_to = first_name_of_inode.get(inode)
            first_name_of_inode.setdefault(inode, entry.name)
        info = header(entry, hardlink_to)
        yield from layout.put(header_block(info))
        layout.note(entry, info)
        if info.type == tarfile.REGTYPE and info.size:
            yield from layout.content(entry, info.size)
            yield from layout.put(bytes(-info.size % BLOCK))
    end = 2 * BLOCK
    yield from layout.put(bytes(end + -(layout.total + end) % RECORD))
    if layout.used:
        yield layout.finish_block()


def _one_buffer():
    buffer = bytearray(BLOCK_SIZE)
    return lambda: buffer


class _Layout:
    """Lays the tar out in buffers, yielding each block as soon as it is full."""

    def __init__(self, next_buffer):
        self.next_buffer = next_buffer
        self.buffer = None
        self.total = 0   # bytes of the tar laid out so far

    def _room(self) -> int:
        if self.buffer is None:
            self.buffer = self.next_buffer()
            self.view = memoryview(self.buffer)
            self.used, self.pieces = 0, []
        return len(self.buffer) - self.used

    def _advance(self, count):
        self.used += count
        self.total += count
        if self.used == len(self.buffer):
            yield self.finish_block()

    def finish_block(self) -> TarBlock:
        block = TarBlock(self.view[:self.used], self.pieces, self.buffer)
        self.buffer = self.view = None
        self.used = 0
        return block

    def put(self, data):
        data = memoryview(data)
        while data:
            count = min(self._room(), len(data))
            self.view[self.used:self.used + count] = data[:count]
            data = data[count:]
            yield from self._advance(count)

    def note(self, entry, info):
        self._room()
        self.pieces.append((entry, info, None))

    def content(self, entry, size):
        path = entry.path
        fd = open_as_seen(path, entry.st)
        try:
            done = 0
            while done < size:
                room = self._room()
                part = self.view[self.used:self.used + min(room, size - done)]
                count = os.preadv(fd, [part], done)
                if not count:
                    raise ImageError(f"{path} shrank while it was being stored; is a container still writing to it?")
                self.pieces.append((None, None, part[:count]))
                done += count
                yield from self._advance(count)
        finally:
            os.close(fd)


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
    return tar_digest(canonical_entries(root))


def tar_digest(entries, copy=None) -> str:
    """'sha256:<hex>' of the canonical tar of `entries`, passing each block to
    `copy.copy(block)` first when given (a commit's kept copy, see layer_copy.py)."""
    with _DigestThread() as digest, contextlib.closing(tar_blocks(entries, digest.next_buffer)) as blocks:
        for block in blocks:  # closing: a failure closes the file being read at once
            if copy is not None:
                copy.copy(block)
            digest.add(block)
    return "sha256:" + digest.hash.hexdigest()


class _DigestThread:
    """Hashes blocks on a second thread while the caller reads (and copies) the next:
    OpenSSL releases the GIL on large buffers, so on two cores a digest costs about
    its reads, not its reads plus its hashing. Only whole blocks cross (about 100 for
    100 MiB): handing small pieces between Python threads costs more than it saves,
    as each is a wake-up of the other thread for the GIL."""

    BUFFERS = 3   # one being filled, one being hashed, one to spare

    def __init__(self):
        self.hash = hashlib.sha256()
        self.free = queue.SimpleQueue()
        self.made = 0
        self.blocks = queue.SimpleQueue()
        self.error = None
        self.thread = threading.Thread(target=self._run, name="labkit-digest")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, failure, *_):
        self.blocks.put(None)
        self.thread.join()  # on an error or interrupt too: no thread outlives the digest
        if self.error is not None and failure is None:
            raise self.error

    def next_buffer(self) -> bytearray:
        """A buffer the digest is done with (the thread hands each one back)."""
        if self.made < self.BUFFERS and self.free.empty():
            self.made += 1  # made as needed: a small layer needs one
            return bytearray(BLOCK_SIZE)
        return self.free.get()

    def add(self, block) -> None:
        self.blocks.put(block)

    def _run(self):
        while (block := self.blocks.get()) is not None:
            try:
                if self.error is None:
                    self.hash.update(block.data)
            except BaseException as error:  # raised in the caller's thread on leaving
                self.error = error
            finally:
                self.free.put(block.buffer)


def tree_size(root) -> int:
    """Bytes of regular file content in the layer (what `image history` shows)."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
