"""COPY: files from the build context become a layer.

Sources must stay inside the context (no '..', no symlink leading out). A source
directory contributes its contents, as in Docker. Parent directories the layer has
to create take their owner and mode from the image below, so a COPY into /etc does
not change /etc's permissions.
"""

import glob
import hashlib
import os
import posixpath
import shutil
import stat
from pathlib import Path

from labkit.images.diff import find_in_stack
from labkit.images.recipe import recipe_error


def resolve_sources(instruction, context: Path) -> list:
    """[(source path, path inside the image)] for a COPY instruction."""
    context = Path(context).resolve()
    value = instruction.value
    pairs = []
    for pattern in value["sources"]:
        matches = sorted(glob.glob(str(context / pattern))) if glob.has_magic(pattern) else [str(context / pattern)]
        for match in matches:
            real = Path(match).resolve()
            if real != context and context not in real.parents:
                raise recipe_error(instruction.line, f"COPY source {pattern!r} is outside the build context {context}; "
                                                     "move it into the context directory")
            if not os.path.lexists(real):
                matches = []
                break
            pairs.append(real)
        if not matches:
            raise recipe_error(instruction.line, f"COPY source {pattern!r} does not exist in the build context {context}")
    return [(source, _destination(source, value["destination"], len(pairs) > 1)) for source in pairs]


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


def make_copy_layer(sources: list, workdir: str, layer: Path, lowers_top_first: list) -> None:
    """Write the COPY layer into the empty dir `layer`."""
    for source, destination in sources:
        inside = absolute_in_image(destination, workdir)
        _make_parents(layer, inside, lowers_top_first)
        target = layer / inside if inside else layer
        if source.is_dir():
            target.mkdir(exist_ok=True)
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True, copy_function=shutil.copyfile)
            _own_and_mode(source, target)
        else:
            shutil.copyfile(source, target)
            _own_and_mode(source, target)


def _make_parents(layer: Path, inside: str, lowers_top_first: list) -> None:
    parts = inside.split("/")[:-1] if inside else []
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        path = layer / relative
        if path.is_dir():
            continue
        path.mkdir()
        below = find_in_stack(lowers_top_first, relative)
        st = os.stat(below) if below and os.path.isdir(below) else None
        os.chmod(path, stat.S_IMODE(st.st_mode) if st else 0o755)
        os.chown(path, st.st_uid if st else 0, st.st_gid if st else 0)


def _own_and_mode(source: Path, target: Path) -> None:
    """Files in an image belong to root (as in Docker); modes come from the context."""
    for path, relative in _walk(source):
        copied = target / relative if relative else target
        os.chown(copied, 0, 0, follow_symlinks=False)
        if not os.path.islink(path):
            os.chmod(copied, stat.S_IMODE(os.lstat(path).st_mode))
