"""The kept copy of a commit, written from the blocks of the layer's canonical tar.

A commit that keeps its container must copy the upper dir (the container may write on)
and digest it. Each file is read once, into a block of the tar (layers.tar_blocks);
the copy is written from that block and the digest computed over it, so the digest
always names what was stored, however the upper dir changes meanwhile.
"""

import os
import stat
import tarfile

from labkit.images.whiteouts import make_opaque, make_whiteout


class LayerCopy:
    """Makes again, under the empty dir `target`, the entries of `source` that reach it
    as TarBlocks, in tar order (a parent before its children). Use as a context
    manager: leaving it sets the directories' owners, modes and times (at the end, as
    making a child changes its directory's times and a read-only one must be filled
    first), or, on a failure, closes the file being written."""

    def __init__(self, source, target):
        self.skip = len(os.fspath(source)) + 1
        self.target = os.fspath(target)
        self.file = None          # (fd, stat of the source) of the file being written
        self.first_copy = {}      # (dev, inode) of a hard-linked source -> its first copy
        self.directories = []     # (copy, stat of the source), in creation order

    def __enter__(self):
        return self

    def __exit__(self, failure, *_):
        if failure is not None:
            if self.file is not None:
                os.close(self.file[0])  # the copy goes with the scratch dir it is in
            return
        self._close_file()
        for destination, st in reversed(self.directories):  # children before their parent
            _copy_metadata(destination, st)

    def copy(self, block) -> None:
        for entry, info, content in block.pieces:
            if entry is not None:
                self._close_file()
                self._make(entry, info)
            if content is not None:
                while content:
                    content = content[os.write(self.file[0], content):]

    def _make(self, entry, info):
        if entry.kind == "opaque":
            make_opaque(os.path.join(self.target, entry.name.rpartition("/")[0]))
            return
        st = entry.st
        destination = os.path.join(self.target, entry.path[self.skip:])
        if info.type == tarfile.LNKTYPE:
            os.link(self.first_copy[(st.st_dev, st.st_ino)], destination)
        elif entry.kind == "file":
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self.file = (fd, st)
            if st.st_nlink > 1:
                self.first_copy[(st.st_dev, st.st_ino)] = destination
        elif entry.kind == "dir":
            os.mkdir(destination, 0o700)
            self.directories.append((destination, st))
        else:
            if entry.kind == "symlink":
                os.symlink(info.linkname, destination)  # the target the digest saw
            elif entry.kind == "whiteout":
                make_whiteout(destination)
            elif entry.kind == "fifo":
                os.mkfifo(destination)
            else:
                os.mknod(destination, st.st_mode, st.st_rdev)
            _copy_metadata(destination, st)

    def _close_file(self):
        if self.file is None:
            return
        fd, st = self.file
        self.file = None
        try:
            _copy_metadata(fd, st)
        finally:
            os.close(fd)


def _copy_metadata(destination, st) -> None:
    """Owner, mode and times of `st` onto `destination`: a path (a symlink is not
    followed) or the fd of a file being written."""
    follow = not isinstance(destination, str)
    os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=follow)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(destination, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
    os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=follow)
