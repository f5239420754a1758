"""A layer's canonical tar written the slow, obvious way, by Python's tarfile from
`os.lstat` alone: the reference labkit's own tar writer (and so every layer digest) is
held byte-equal to. It shares no code with labkit.images.layers on purpose."""

import hashlib
import io
import os
import stat
import tarfile


def reference_tar(root, leave_out=()) -> bytes:
    """The canonical tar of the overlay-form layer at `root`, without the paths (relative,
    '/'-separated) in `leave_out`: sorted by name as bytes, times zero, no owner names,
    PAX format, whiteouts as `.wh.` files, opaque dirs with a `.wh..wh..opq` file."""
    members = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative not in leave_out and not stat.S_ISSOCK(os.lstat(path).st_mode):
                members.extend(_members(path, relative))
    members.sort(key=lambda member: os.fsencode(member[0].name))
    out = io.BytesIO()
    first_name = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for info, path, st in members:
            if info.type == tarfile.REGTYPE and path is not None and st.st_nlink > 1:
                inode = (st.st_dev, st.st_ino)
                if inode in first_name:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, first_name[inode], 0
                else:
                    first_name[inode] = info.name
            if info.type == tarfile.REGTYPE and info.size:
                with open(path, "rb") as content:
                    archive.addfile(info, content)
            else:
                archive.addfile(info)
    return out.getvalue()


def reference_digest(root, leave_out=()) -> str:
    return "sha256:" + hashlib.sha256(reference_tar(root, leave_out)).hexdigest()


def _marker(name):
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o600, 0
    return info


def _members(path, relative):
    st = os.lstat(path)
    head, _, base = relative.rpartition("/")
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return [(_marker(f"{head}/.wh.{base}" if head else f".wh.{base}"), None, st)]
    info = tarfile.TarInfo(relative)
    info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0
    found = [(info, path, st)]
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        if _opaque(path):
            found.append((_marker(f"{relative}/.wh..wh..opq"), None, st))
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        info.size = st.st_size
    return found


def _opaque(path) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False
