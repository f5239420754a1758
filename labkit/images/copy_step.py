"""COPY: files from the build context become a layer.

Sources must stay inside the context (no '..', no symlink leading out). A source
directory contributes its contents, as in Docker. Parent directories the layer has
to create take their owner and mode from the image below, so a COPY into /etc does
not change /etc's permissions. The layer is written through fds resolved inside it
(labkit.linux.paths): a link one source brings is never written through by the next.
"""

import glob
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.diff import find_in_stack
from labkit.images.recipe import recipe_error
from labkit.linux import paths


def resolve_sources(line: int, patterns: list, destination: str, context: Path, shown: str = "",
                    links_inside: bool = False) -> list:
    """[(source path, path inside the image)] for a COPY of `patterns` from `context`
    (a build context, or the root of a stage for COPY --from); `shown` names it in errors.
    `links_inside`: `context` is an image's root, whose links (absolute ones too) point
    inside it, as they do in the container."""
    context = Path(context).resolve()
    shown = shown or str(context)
    pairs = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(str(context / pattern.lstrip("/"))))
        elif links_inside:
            matches = [str(resolve_in_root(context, pattern, line))]
        else:
            matches = [str(context / pattern.lstrip("/"))]
        for match in matches:
            real = Path(match).resolve()
            if real != context and context not in real.parents:
                raise recipe_error(line, f"COPY source {pattern!r} is outside the build context {shown}; "
                                         "move it into the context directory")
            if not os.path.lexists(real):
                matches = []
                break
            pairs.append(real)
        if not matches:
            raise recipe_error(line, f"COPY source {pattern!r} does not exist in {shown}"
                                     " (or .dockerignore leaves it out)")
    return [(source, _destination(source, destination, len(pairs) > 1)) for source in pairs]


def resolve_in_root(root: Path, path: str, line: int, hops: int = 40) -> Path:
    """`path` inside `root` with every link on the way resolved as if `root` were '/'."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    current = root
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        hops -= 1
        if hops < 0:
            raise recipe_error(line, f"COPY --from source {path!r}: too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = root
        parts[:0] = [piece for piece in target.split("/") if piece not in ("", ".")]
    return current


def _destination(source: Path, destination: str, several: bool) -> str:
    into_directory = destination.endswith("/") or several
    if source.is_dir():
        return destination.rstrip("/") or "/"
    return posixpath.join(destination, source.name) if into_directory else destination


def absolute_in_image(destination: str, workdir: str) -> str:
    return posixpath.normpath(posixpath.join(workdir or "/", destination)).lstrip("/")


def content_key(sources: list) -> str:
    """A hash of names, modes, link targets and bytes of everything COPY would take."""
    digest = hashlib.sha256()
    for source, destination in sources:
        for path, relative in _walk(source):
            st = os.lstat(path)
            digest.update(f"{destination}\0{relative}\0{st.st_mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as content:
                    for chunk in iter(lambda: content.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()


def _walk(source: Path):
    yield str(source), ""
    if source.is_dir():
        for directory, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(directory, name)
                yield path, os.path.relpath(path, source)


@dataclass(frozen=True)
class Ownership:
    """Who owns what COPY writes, and its mode: root and the context's modes by default
    (as Docker); `owner` (uid, gid) for --chown; `keep` the source's owner (ADD of an
    archive keeps the archive's); `mode` for --chmod."""

    owner: tuple | None = None
    keep: bool = False
    mode: int | None = None

    def apply(self, fd: int, source: Path) -> None:
        st = os.lstat(source)
        uid, gid = (st.st_uid, st.st_gid) if self.keep else (self.owner or (0, 0))
        os.fchown(fd, uid, gid)  # first: chown clears setuid and setgid bits
        os.fchmod(fd, self.mode if self.mode is not None else stat.S_IMODE(st.st_mode))

    def link_owner(self, source: Path) -> tuple:
        st = os.lstat(source)
        return (st.st_uid, st.st_gid) if self.keep else (self.owner or (0, 0))


ROOT_OWNED = Ownership()


def make_copy_layer(sources: list, workdir: str, layer: Path, lowers_top_first: list,
                    ownership: Ownership = ROOT_OWNED) -> None:
    """Write the COPY layer into the empty dir `layer`.

    Every write goes through an fd of `layer` (labkit.linux.paths): a link that an
    earlier source planted in the layer is followed only inside it, for parents, or
    replaced, for what this COPY brings (as Docker's untar does), never written through."""
    root = paths.open_root(layer)
    try:
        for source, destination in sources:
            inside = absolute_in_image(destination, workdir)
            _make_parents(root, inside, lowers_top_first)
            if not inside:  # COPY dir / : the contents go into the layer's root
                top = paths.open_in_root(root, "", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _copy_children(source, top, ownership)
                    ownership.apply(top, source)
                finally:
                    os.close(top)
                continue
            parent = paths.open_in_root(root, posixpath.dirname(inside), os.O_PATH | os.O_DIRECTORY)
            try:
                _copy_entry(source, parent, posixpath.basename(inside), "/" + inside, ownership)
            finally:
                os.close(parent)
    finally:
        os.close(root)


def _make_parents(root: int, inside: str, lowers_top_first: list) -> None:
    parts = inside.split("/")[:-1] if inside else []
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        try:
            os.close(paths.open_in_root(root, relative, os.O_PATH | os.O_DIRECTORY))
            continue
        except FileNotFoundError:
            pass
        parent = paths.open_in_root(root, posixpath.dirname(relative), os.O_PATH | os.O_DIRECTORY)
        try:
            os.mkdir(parts[depth - 1], 0o700, dir_fd=parent)
            made = os.open(parts[depth - 1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        st = _directory_below(lowers_top_first, relative)
        try:
            os.fchown(made, st.st_uid if st else 0, st.st_gid if st else 0)
            os.fchmod(made, stat.S_IMODE(st.st_mode) if st else 0o755)
        finally:
            os.close(made)


def is_directory_in_image(lowers_top_first: list, destination: str, workdir: str) -> bool:
    """Does `destination` name a directory: '.', '..', a trailing '/' or '/.', or a
    directory the image already has (Docker copies into it, not over it)?"""
    if destination in (".", "..") or destination.endswith(("/", "/.", "/..")):
        return True
    inside = absolute_in_image(destination, workdir)
    return not inside or _directory_below(lowers_top_first, inside) is not None


def _directory_below(lowers_top_first: list, relative: str):
    """The stat of the plain directory the image below shows at `relative`, or None.
    A link on the way (in the layer, `etc -> /somewhere`) is not followed: its target
    would be read on the host."""
    below = find_in_stack(lowers_top_first, relative)
    if below is None:
        return None
    layer = below[:-len(relative)].rstrip("/")
    if os.path.realpath(below) != os.path.join(os.path.realpath(layer), relative):
        return None
    st = os.lstat(below)
    return st if stat.S_ISDIR(st.st_mode) else None


def _copy_entry(source: Path, parent: int, name: str, shown: str, ownership: Ownership) -> None:
    """Copy `source` to `name` in the directory `parent` (an fd), never following a link there."""
    st = os.lstat(source)
    existing = _lstat_at(parent, name)
    if existing and not (stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(st.st_mode)):
        if stat.S_ISDIR(existing.st_mode):
            raise ImageError(f"COPY would replace the directory {shown} with {source}, which is not a directory")
        os.unlink(name, dir_fd=parent)  # a file or a link, perhaps planted by an earlier source
        existing = None
    if stat.S_ISDIR(st.st_mode):
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        directory = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            _copy_children(source, directory, ownership, shown)
            ownership.apply(directory, source)
        finally:
            os.close(directory)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), name, dir_fd=parent)
        os.chown(name, *ownership.link_owner(source), dir_fd=parent, follow_symlinks=False)
    elif stat.S_ISREG(st.st_mode):
        copy = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            with open(source, "rb") as content:
                for chunk in iter(lambda: content.read(1 << 20), b""):
                    _write_all(copy, chunk)
            ownership.apply(copy, source)
        finally:
            os.close(copy)
    else:
        raise ImageError(f"COPY cannot copy {source}: only files, directories and symbolic links can be copied")


def _copy_children(source: Path, directory: int, ownership: Ownership, shown: str = "") -> None:
    for name in sorted(os.listdir(source)):
        _copy_entry(Path(source) / name, directory, name, f"{shown}/{name}", ownership)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _lstat_at(directory: int, name: str):
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
