"""Unpack one layer tar (OCI form) into an empty directory (overlay form), refusing
anything that could reach outside that directory or smuggle privileges in.

Refused, each with an ImageError naming the entry:
  * absolute names and names with '..' (they would land outside the layer);
  * an entry written *through* a symlink or non-directory of the same archive
    (`a -> /etc` then `a/passwd` would overwrite the host's file);
  * relative symlinks whose target climbs above the layer root, and hard links to
    anything but a regular file already unpacked from this archive; absolute
    symlinks are fine: the container resolves them inside its own root;
  * device nodes, unless allow_devices=True and we are root (containers get /dev
    from the runtime, an image needs none);
  * the same name twice (which one wins would depend on the tool).
Setuid and setgid bits are cleared on files unless keep_setuid=True; directories
keep setgid, which only makes new files inherit the group.
"""

import errno
import math
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import BadImageInput, ImageError
from labkit.images.whiteouts import OPAQUE_MARKER, WHITEOUT_PREFIX, make_opaque, make_whiteout
from labkit.linux.rootless import running_rootless

PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
NAME_MAX = 255     # bytes in one path component (Linux)
PATH_MAX = 4096    # bytes in a path a syscall takes, its NUL included (Linux)
# Deeper trees are legal, but Python's shutil.rmtree recurses once per level (its limit
# is ~1000 frames): a scratch dir that deep could not be removed after a failed import.
MAX_DEPTH = 256
ID_MOST = 2**32 - 2        # uid_t is 32 bits, and (uid_t)-1 means "no change" to chown(2)
TIME_MOST = 2**63          # time_t is 64 bits


@dataclass
class ExtractReport:
    entries: int = 0
    stripped_setuid: list = field(default_factory=list)


class _Extraction:
    def __init__(self, target: Path, source: str, allow_devices: bool, keep_setuid: bool):
        if allow_devices and running_rootless():
            raise ImageError(f"{source}: allow_devices needs root (only the host's root may create device "
                             "nodes; rootless labkit, root of a user namespace, may not mknod)")
        self.target = Path(target)
        self.source = source
        self.allow_devices = allow_devices
        self.keep_setuid = keep_setuid
        self.as_root = os.geteuid() == 0
        self.kinds = {}           # name -> 'dir', 'file', 'link', 'other' (explicit entries)
        self.implicit_dirs = set()
        self.whiteouts = []       # names deleted by this layer
        self.opaque = []          # directories this layer makes opaque
        self.dir_modes = []
        self.report = ExtractReport()

    def refuse(self, name, why, what_to_do="it is not a safe image; do not use it"):
        shown = repr(name) if len(name) <= 100 else f"{name[:60]!r}… ({len(name)} characters)"
        raise BadImageInput(f"{self.source}: refusing entry {shown}: {why}; {what_to_do}")

    def clean_name(self, raw: str, what: str = "its name") -> str:
        if raw.startswith("/"):
            self.refuse(raw, f"{what} is an absolute path")
        parts = [part for part in raw.split("/") if part not in ("", ".")]
        if ".." in parts:
            self.refuse(raw, f"{what} contains '..'")
        longest = max((len(os.fsencode(part)) for part in parts), default=0)
        if longest > NAME_MAX:
            self.refuse(raw, f"{what} has a part of {longest} bytes, and Linux takes at most {NAME_MAX}",
                        "no file system here could hold it")
        if len(parts) > MAX_DEPTH:
            self.refuse(raw, f"{what} is {len(parts)} directories deep; labkit unpacks at most {MAX_DEPTH}")
        name = "/".join(parts)
        if len(os.fsencode(self.path(name))) >= PATH_MAX:
            self.refuse(raw, f"{what} makes a path longer than Linux's {PATH_MAX - 1} bytes",
                        "no program could open it")
        return name

    def path(self, name: str) -> str:
        return os.path.join(self.target, name)

    def make_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            ancestor = "/".join(parts[:depth])
            try:
                st = os.lstat(self.path(ancestor))
            except FileNotFoundError:
                os.mkdir(self.path(ancestor), 0o755)
                self.implicit_dirs.add(ancestor)
                continue
            if not stat.S_ISDIR(st.st_mode):
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
                self.refuse(name, f"it would be written through {ancestor!r}, a {kind} in this archive",
                            "an archive that writes through its own links could overwrite host files")

    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        name = self.clean_name(member.name)
        self.report.entries += 1
        if not name:
            return  # the root directory itself: the layer root's mode is fixed by the store
        base = name.rsplit("/", 1)[-1]
        if base == OPAQUE_MARKER:
            self.make_parents(name)
            self.opaque.append(name.rpartition("/")[0])
            return
        if base.startswith(WHITEOUT_PREFIX):
            head = name.rpartition("/")[0]
            self.check_whiteout(name, base[len(WHITEOUT_PREFIX):])
            self.make_parents(name)
            deleted = (head + "/" if head else "") + base[len(WHITEOUT_PREFIX):]
            if deleted in self.whiteouts:
                self.refuse(name, "it appears twice in the archive", "which copy wins depends on the tool")
            self.whiteouts.append(deleted)
            return
        self.check_numbers(name, member)
        if name in self.kinds:
            self.refuse(name, "it appears twice in the archive", "which copy wins depends on the tool")
        if name in self.implicit_dirs and not member.isdir():
            self.refuse(name, "it is a directory earlier in the archive and a file here")
        self.make_parents(name)
        self.kinds[name] = self.create(name, member, archive)

    def check_numbers(self, name, member) -> None:
        """A PAX header can say any number: chown(2) takes a 32-bit id (-1 meaning "leave it")
        and utime(2) a finite time_t, and Python raised OverflowError or ValueError past them."""
        for what, value in (("uid", member.uid), ("gid", member.gid)):
            if not isinstance(value, int) or not 0 <= value <= ID_MOST:
                self.refuse(name, f"its {what} {value!r} is not an id Linux has (0 to {ID_MOST})")
        mtime = member.mtime
        if not isinstance(mtime, (int, float)) or not (math.isfinite(mtime) and -TIME_MOST <= mtime < TIME_MOST):
            self.refuse(name, f"its modification time {mtime!r} is not a time a file can have")

    def check_whiteout(self, name, deleted) -> None:
        """A whiteout deletes one name of the layers below: '' , '.' and '..' name none (the
        directory itself, its parent), and a marker's own name is never a file below."""
        if deleted in ("", ".", ".."):
            self.refuse(name, f"it is a whiteout of {deleted!r}, which names no file",
                        "a whiteout is '.wh.' followed by the name of the file it deletes")
        if deleted.startswith(WHITEOUT_PREFIX):
            self.refuse(name, f"it is a whiteout of {deleted!r}, itself a whiteout's name",
                        "a layer cannot hold a file by that name to delete")

    def create(self, name, member, archive) -> str:
        path = self.path(name)
        if member.isdir():
            if name not in self.implicit_dirs:
                os.mkdir(path, 0o755)
            self.dir_modes.append((path, member.mode & 0o7777))
            self.set_owner(path, member)
            return "dir"
        if member.isreg():
            self.write_file(path, member, archive)
            return "file"
        if member.issym():
            self.check_symlink(name, member.linkname)
            os.symlink(member.linkname, path)
            self.set_owner(path, member)
            return "link"
        if member.islnk():
            existing = self.clean_name(member.linkname, "its link target")
            if self.kinds.get(existing) != "file":
                self.refuse(name, f"it is a hard link to {member.linkname!r}, which is not a regular file "
                                  "unpacked earlier from this archive")
            os.link(self.path(existing), path, follow_symlinks=False)
            return "file"
        if member.isfifo():
            os.mkfifo(path, 0o600)
            self.set_owner(path, member)
            os.chmod(path, member.mode & 0o777)
            return "other"
        if member.ischr() or member.isblk():
            if not self.allow_devices:
                self.refuse(name, f"it is a device node ({member.devmajor}:{member.devminor})",
                            "images need none (the runtime provides /dev); import with allow_devices=True "
                            "as root if you really want it")
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.set_owner(path, member)
            os.chmod(path, member.mode & 0o777)
            return "other"
        self.refuse(name, f"its tar type {member.type!r} is not a file, directory, link, fifo or device")

    def check_symlink(self, name, target) -> None:
        if len(os.fsencode(target)) >= PATH_MAX:
            self.refuse(name, f"it is a symlink to a target longer than Linux's {PATH_MAX - 1} bytes")
        if target.startswith("/"):
            return
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            self.refuse(name, f"it is a symlink to {target!r}, which climbs out of the image root")

    def write_file(self, path, member, archive) -> None:
        mode = member.mode & 0o7777
        if mode & PRIVILEGE_BITS and not self.keep_setuid:
            mode &= ~PRIVILEGE_BITS
            self.report.stripped_setuid.append(member.name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(descriptor, "wb") as out:
            content = archive.extractfile(member)
            shutil.copyfileobj(content, out, 1 << 20)
            if self.as_root:
                self.chown(member, os.fchown, out.fileno())
            os.fchmod(out.fileno(), mode)  # after chown, which would clear setuid
        os.utime(path, (member.mtime, member.mtime))

    def set_owner(self, path, member) -> None:
        if self.as_root:
            self.chown(member, os.chown, path, follow_symlinks=False)

    def chown(self, member, change, target, **how) -> None:
        try:
            change(target, member.uid, member.gid, **how)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            # Rootless: an id outside the user namespace's map has no file owner to be.
            self.refuse(member.name, f"it belongs to uid {member.uid} gid {member.gid}, which rootless labkit "
                        "cannot give a file: its user namespace maps only the ids /etc/subuid and /etc/subgid grant",
                        "ask for a larger range in /etc/subuid and /etc/subgid (usermod --add-subuids), or run as root")

    def finish(self) -> None:
        """Deletion markers last: a name both deleted and present in one layer means
        'replace what is below', which overlay says with an opaque dir (or nothing,
        for a file)."""
        for name in self.whiteouts:
            kind = self.kinds.get(name) or ("dir" if name in self.implicit_dirs else None)
            if kind == "dir":
                self.opaque.append(name)
            elif kind is None:
                make_whiteout(self.path(name))
        for name in self.opaque:
            if name:  # an opaque layer root means nothing below shows: overlay cannot say that
                make_opaque(self.path(name))
        for path, mode in reversed(self.dir_modes):
            os.chmod(path, mode)


def extract_layer(stream, target, source: str = "layer", allow_devices: bool = False,
                  keep_setuid: bool = False, budget=None) -> ExtractReport:
    """Unpack the uncompressed tar read from `stream` into the empty dir `target`; each
    entry is charged to `budget` (an UnpackBudget), when given."""
    extraction = _Extraction(Path(target), source, allow_devices, keep_setuid)
    with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as archive:
        for member in each_member(archive):
            if budget is not None:
                budget.take_file(source)
                budget.take(holes_of(member), source)
            extraction.add(member, archive)
    extraction.finish()
    return extraction.report


def holes_of(member: tarfile.TarInfo) -> int:
    """Bytes of a sparse member that are not in the tar: the budget is charged on the tar's
    bytes as they are read, and tarfile writes a hole out as zeros (300 MiB from 10 KiB)."""
    if not member.sparse:
        return 0
    return max(0, member.size - sum(size for _offset, size in member.sparse))


def each_member(archive: tarfile.TarFile):
    """The archive's members one by one, none kept: TarFile keeps every member it has read
    (half a KiB each), and an archive of a million empty entries is a few MB compressed."""
    while (member := archive.next()) is not None:
        archive.members.clear()
        yield member
