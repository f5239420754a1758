"""A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.

Written here rather than shelling out to `cpio` because the format is a fixed
110-byte ASCII header per entry and Debian does not install `cpio` by default. Device
nodes are stored as data, so building `/dev/console` needs no root and no mknod.
"""

import stat

_TRAILER = "TRAILER!!!"


class CpioArchive:
    """Collects entries in memory; `bytes()` gives the archive."""

    def __init__(self):
        self._chunks = []
        self._inode = 1

    def directory(self, path, mode=0o755):
        self._add(path, stat.S_IFDIR | mode, b"")

    def file(self, path, data: bytes, mode=0o644):
        self._add(path, stat.S_IFREG | mode, data)

    def symlink(self, path, target):
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path, major, minor, mode=0o600):
        self._add(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def __bytes__(self):
        trailer = _entry(_TRAILER, 0, b"", inode=0, nlink=1, rdev=(0, 0))
        return b"".join(self._chunks) + trailer

    def _add(self, path, mode, data, rdev=(0, 0)):
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self._chunks.append(_entry(path.lstrip("/"), mode, data, self._inode, nlink, rdev))
        self._inode += 1


def _entry(name, mode, data, inode, nlink, rdev):
    encoded_name = name.encode() + b"\0"
    fields = [
        inode, mode, 0, 0, nlink, 0, len(data),  # ino mode uid gid nlink mtime filesize
        0, 0, rdev[0], rdev[1],                   # devmajor devminor rdevmajor rdevminor
        len(encoded_name), 0,                     # namesize check
    ]
    header = b"070701" + b"".join(b"%08X" % field for field in fields)
    # The kernel expects the name and the data each to end on a 4-byte boundary.
    return _pad4(header + encoded_name) + _pad4(data)


def _pad4(chunk: bytes) -> bytes:
    return chunk + b"\0" * (-len(chunk) % 4)
