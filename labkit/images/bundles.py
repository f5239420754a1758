"""Reading and writing a set of named files that arrives as a directory or as a tar
(an OCI image layout, a `docker save` archive)."""

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from labkit.errors import BadImageInput
from labkit.images.blobs import GZIP_MAGIC, UnpackBudget


class DirectoryBundle:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.source = str(root)

    def _path(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise BadImageInput(f"{self.source}: refusing to read {name!r}: it points outside the archive")
        return self.root.joinpath(*parts)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str):
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise BadImageInput(f"{self.source}: {name} is missing; the archive is incomplete") from None

    def close(self):
        pass


class TarBundle:
    def __init__(self, path: Path):
        self.source = str(path)
        try:
            self.archive = _open_tar(Path(path))
        except (tarfile.TarError, EOFError, OSError, zlib.error):
            # tarfile's own text lists each compression it tried, one line each.
            raise BadImageInput(f"{path} is not a readable tar archive (plain, gzip, bzip2 or xz); "
                                "check the file") from None
        try:
            members = self.archive.getmembers()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            # zlib.error: gzip data damaged past its header, found while seeking to a member
            self.archive.close()
            raise BadImageInput(f"{path} is not a readable tar archive ({error}); check the file") from None
        self.members = {}
        for member in members:
            name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
            if name in self.members and member.isfile():
                raise BadImageInput(f"{path}: {name!r} appears twice in the archive; refusing to guess which to use")
            if member.isfile():
                self.members[name] = member

    def exists(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str):
        if name not in self.members:
            raise BadImageInput(f"{self.source}: {name} is missing; the archive is incomplete")
        return self.archive.extractfile(self.members[name])

    def close(self):
        self.archive.close()


def _open_tar(path: Path):
    """A gzip-compressed archive is read through the import size (UnpackBudget): listing
    its members inflates it whole, and a bomb must stop at the limit here too."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    if not compressed:
        return tarfile.open(path, "r:*")
    inflated = gzip.GzipFile(path, "rb")
    return tarfile.open(fileobj=_Budgeted(inflated, UnpackBudget(), str(path)), mode="r:")


class _Budgeted:
    """A seekable reader that charges each byte it reaches beyond the furthest one so far
    (re-reading after a seek back is free: it is the same content)."""

    def __init__(self, fileobj, budget, source):
        self.fileobj, self.budget, self.source = fileobj, budget, source
        self.name = source
        self.furthest = 0

    def read(self, size=-1):
        data = self.fileobj.read(size)
        self._charge()
        return data

    def seek(self, offset, whence=0):
        if whence == 0 and offset > self.furthest:  # inflating on the way: a chunk at a time, charged
            self.fileobj.seek(self.furthest)
            while self.fileobj.tell() < offset and self.read(min(1 << 20, offset - self.fileobj.tell())):
                pass
        position = self.fileobj.seek(offset, whence)
        self._charge()
        return position

    def tell(self):
        return self.fileobj.tell()

    def close(self):
        self.fileobj.close()

    def _charge(self):
        position = self.fileobj.tell()
        if position > self.furthest:
            self.budget.take(position - self.furthest, self.source)
            self.furthest = position


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


class OutputDirectory:
    """Build an export next to its destination and move it there only when complete."""

    def __init__(self, destination: Path):
        self.destination = Path(destination)
        if self.destination.exists() and not (self.destination.is_dir() and not any(self.destination.iterdir())):
            raise BadImageInput(f"{self.destination} already exists; remove it or choose another path")
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=self.destination.parent))

    def publish_directory(self) -> None:
        if self.destination.is_dir():
            self.destination.rmdir()
        os.rename(self.work, self.destination)

    def publish_tar(self) -> None:
        """Tar the work dir into the destination file, deterministically."""
        partial = self.work.with_suffix(".tar")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(_files(self.work)):
                info = archive.gettarinfo(self.work / name, arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(self.work / name, "rb") as content:
                    archive.addfile(info, content)
        os.rename(partial, self.destination)
        shutil.rmtree(self.work)

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.with_suffix(".tar").unlink(missing_ok=True)


def _files(root: Path):
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield os.path.relpath(os.path.join(directory, name), root)
