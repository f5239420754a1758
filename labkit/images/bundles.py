"""Reading and writing a set of named files that arrives as a directory or as a tar
(an OCI image layout, a `docker save` archive)."""

import errno
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path

from labkit.errors import BadImageInput
from labkit.images.blobs import UnpackBudget, compression_of, open_decompressed
from labkit.images.extract import each_member


class DirectoryBundle:
    """An unpacked archive. Its files are opened from an fd of the directory, one name at
    a time and never through a link (O_NOFOLLOW), and only a regular file is read: a
    manifest.json linked to /etc/shadow was read and parsed, and a FIFO as a layer.tar held
    the import (and the store lock) forever. A tar's links are no member either."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.source = str(root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _parts(self, name: str) -> list:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or not parts:
            raise BadImageInput(f"{self.source}: refusing to read {name!r}: it points outside the archive")
        return parts

    def _lookup(self, name: str) -> tuple:
        """(fd of the directory `name` is in, its last part, its lstat); FileNotFoundError
        where it is not there."""
        parts = self._parts(name)
        directory = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                    dir_fd=directory)
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.ENOTDIR):
                        self._refuse(name, f"{part!r} on its way is not a directory (a link is not followed)")
                    raise
                os.close(directory)
                directory = inner
            return directory, parts[-1], os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        except BaseException:
            os.close(directory)
            raise

    def _refuse(self, name: str, why: str):
        raise BadImageInput(f"{self.source}: refusing to read {name}: {why}; an image directory holds "
                            "regular files only")

    def exists(self, name: str) -> bool:
        """Anything by that name, a link included: what is not a regular file is refused when read."""
        try:
            directory, _, _ = self._lookup(name)
        except FileNotFoundError:
            return False
        os.close(directory)
        return True

    def open(self, name: str):
        try:
            directory, last, found = self._lookup(name)
        except FileNotFoundError:
            raise BadImageInput(f"{self.source}: {name} is missing; the archive is incomplete") from None
        try:
            if not stat.S_ISREG(found.st_mode):
                self._refuse(name, f"it is a {_kind(found.st_mode)}, not a regular file")
            # O_NONBLOCK: were it swapped for a FIFO since the stat, the open would not wait
            fd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except OSError as error:
            self._refuse(name, f"it cannot be opened ({error.strerror})")
        finally:
            os.close(directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self._refuse(name, "it is not a regular file")
        return open(fd, "rb")

    def close(self):
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None


def _kind(mode: int) -> str:
    return {stat.S_IFLNK: "symbolic link", stat.S_IFIFO: "FIFO", stat.S_IFDIR: "directory",
            stat.S_IFCHR: "device", stat.S_IFBLK: "device", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), "special file")


# An image archive holds a few files per layer (overlayfs stacks at most 500 layers); a tar
# with more is a root filesystem, or a bomb of empty entries, and is not listed further.
BUNDLE_FILES = 10_000
BUNDLE_MARKERS = ("oci-layout", "manifest.json")


class TarBundle:
    """A tar (plain, gzip, bzip2 or xz) read as named files. `spill_dir`: where a compressed
    one is inflated to (an unnamed file, gone when closed), through the import size: listing
    a compressed tar means inflating it, and opening its members in another order than
    they come would inflate it again from the start for each."""

    def __init__(self, path: Path, spill_dir: Path | None = None):
        self.source = str(path)
        self.complete = True
        try:
            self.archive, self.spill = _open_tar(Path(path), spill_dir)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
            # tarfile's own text lists each compression it tried, one line each.
            raise BadImageInput(f"{path} is not a readable tar archive (plain, gzip, bzip2 or xz): "
                                f"{_first_line(error)}; check the file") from None
        except OSError as error:
            if error.errno is not None:
                raise
            raise BadImageInput(f"{path} is not a readable tar archive ({error}); check the file") from None
        try:
            self.members = self._list(path)
        except BaseException:
            self.close()
            raise

    def _list(self, path) -> dict:
        members = {}
        try:
            for count, member in enumerate(each_member(self.archive), 1):
                name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                if count > BUNDLE_FILES:
                    if any(marker in members for marker in BUNDLE_MARKERS):
                        raise BadImageInput(
                            f"{path} holds more than {BUNDLE_FILES} entries, and an image archive holds a few "
                            "per layer (at most 500 layers); it is not an image labkit can load")
                    self.complete = False  # not an image archive: nothing in it is read by name
                    return {}
                if name in members and member.isfile():
                    raise BadImageInput(f"{path}: {name!r} appears twice in the archive; refusing to guess which "
                                        "to use")
                if member.isfile():
                    members[name] = member
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            # zlib.error: gzip data damaged past its header, found while seeking to a member
            raise BadImageInput(f"{path} is not a readable tar archive ({error}); check the file") from None
        return members

    def exists(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str):
        if name not in self.members:
            raise BadImageInput(f"{self.source}: {name} is missing; the archive is incomplete")
        return self.archive.extractfile(self.members[name])

    def close(self):
        self.archive.close()
        if self.spill is not None:
            self.spill.close()


def _open_tar(path: Path, spill_dir: Path | None):
    with open(path, "rb") as probe:
        compressed = compression_of(probe.read(6)) != "none"
    if not compressed:
        return tarfile.open(path, "r:"), None
    budget = UnpackBudget()
    plain = tempfile.TemporaryFile(dir=spill_dir)
    try:
        with open(path, "rb") as raw:
            inflated = open_decompressed(raw, str(path))
            while chunk := inflated.read(1 << 20):
                budget.take(len(chunk), str(path))
                plain.write(chunk)
        plain.seek(0)
        return tarfile.open(fileobj=plain, mode="r:"), plain
    except BaseException:
        plain.close()
        raise


def _first_line(error) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def open_bundle(path: Path):
    path = Path(path)
    if path.is_dir():
        return DirectoryBundle(path)
    if path.is_file():
        return TarBundle(path)
    raise BadImageInput(f"{path} does not exist; give a directory or a tar archive")


def read_json(bundle, name: str, limit: int = 16 << 20):
    with bundle.open(name) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadImageInput(f"{bundle.source}: {name} is larger than {limit} bytes; it is not a manifest")
    try:
        return json.loads(data)
    except ValueError as error:
        raise BadImageInput(f"{bundle.source}: {name} is not valid JSON ({error})") from None


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def refuse_existing(destination: Path) -> None:
    """An export never replaces what is there (a link included: it is not followed)."""
    if os.path.lexists(destination) and not (destination.is_dir() and not destination.is_symlink()
                                             and not any(destination.iterdir())):
        raise BadImageInput(f"{destination} already exists; remove it or choose another path")


def partial_file(destination: Path):
    """(fd, path) of a new file beside `destination`, under a name no one can guess ahead:
    mkstemp opens with O_CREAT|O_EXCL|O_NOFOLLOW, so a link planted in a shared directory
    (/tmp) is never written through."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    os.fchmod(fd, 0o644)  # an export is for sharing, as a file open() made would be
    return fd, Path(path)


def publish_file(partial: Path, destination: Path) -> None:
    """Move the finished `partial` to `destination`, which must not exist by then: link(2)
    never replaces a name (rename(2) would replace whatever appeared there meanwhile)."""
    try:
        os.link(partial, destination, follow_symlinks=False)
    except FileExistsError:
        raise BadImageInput(f"{destination} already exists; remove it or choose another path") from None
    os.unlink(partial)


class OutputDirectory:
    """Build an export next to its destination and move it there only when complete."""

    def __init__(self, destination: Path):
        self.destination = Path(destination)
        refuse_existing(self.destination)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=self.destination.parent))
        self.partial = None

    def publish_directory(self) -> None:
        if self.destination.is_dir() and not self.destination.is_symlink():
            self.destination.rmdir()
        os.rename(self.work, self.destination)

    def publish_tar(self) -> None:
        """Tar the work dir into the destination file, deterministically."""
        fd, self.partial = partial_file(self.destination)
        with open(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(_files(self.work)):
                info = archive.gettarinfo(self.work / name, arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(self.work / name, "rb") as content:
                    archive.addfile(info, content)
        publish_file(self.partial, self.destination)
        shutil.rmtree(self.work)

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)


def _files(root: Path):
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield os.path.relpath(os.path.join(directory, name), root)
