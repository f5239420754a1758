"""Plain root filesystems (a tarball or a directory) in and out: one layer in, the
image's merged view (all layers applied, deletions done) out."""

import os
import shutil
import stat
import tarfile
import threading
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.blobs import LAYER_TYPE_FOR, compression_of, open_compressor
from labkit.images.bundles import OutputDirectory, partial_file, publish_file, refuse_existing
from labkit.images.layer_io import import_layer
from labkit.images.layers import write_canonical_tar
from labkit.images.store import Image, ImageConfig, Store, validate_name
from labkit.images.whiteouts import is_opaque, is_whiteout


def import_rootfs(path: Path, store: Store, name: str, **options) -> Image:
    """A one-layer image from a rootfs tarball (any supported compression) or directory."""
    path = Path(path)
    validate_name(name)
    with store.lock():
        if path.is_dir():
            digest, source = _import_directory(path, store, **options), None
        else:
            with open(path, "rb") as handle:
                media_type = LAYER_TYPE_FOR.get(compression_of(handle.read(6)))
                handle.seek(0)
                # the tarball is kept as it came: exported, its layer has the digest
                # `podman import` gives the same file; bzip2 and xz have no OCI layer type
                # to be kept under, and are exported as labkit writes a layer
                digest, source = import_layer(store, handle, str(path), media_type=media_type,
                                              keep_blob=media_type is not None, **options)
        history = [store.history_entry(f"imported rootfs {path}", digest)]
        return store.save_image(name, [digest], ImageConfig(), history, [source])


def _import_directory(path: Path, store: Store, **options) -> str:
    """Through a pipe as a tar, so a directory meets exactly the checks a tarball does."""
    read_end, write_end = os.pipe()
    failure = []

    def produce():
        try:
            with open(write_end, "wb") as sink:
                write_canonical_tar(path, sink)
        except BrokenPipeError:
            pass  # the reader refused an entry and stopped reading
        except BaseException as error:  # reported by the reader's side
            failure.append(error)

    writer = threading.Thread(target=produce, name="rootfs-tar", daemon=True)
    writer.start()
    try:
        with open(read_end, "rb") as source:
            digest, _ = import_layer(store, source, str(path), keep_blob=False, **options)
    finally:
        writer.join()
    if failure:
        raise failure[0]
    return digest


def flatten(image: Image, target: Path, link: bool) -> None:
    """Apply the image's layers, bottom first, into the empty dir `target`.

    With link=True files are hard links into the layers (fast; only for reading,
    e.g. to tar them); otherwise they are copies the caller may change.
    """
    copies = {}  # layer inode -> first copy, so hard links stay hard links in copies too
    for layer in image.layer_dirs:
        _apply(Path(layer), Path(target), link, copies)
    os.chmod(target, 0o755)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _apply(layer: Path, target: Path, link: bool, copies: dict) -> None:
    with os.scandir(layer) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        destination = os.path.join(target, entry.name)
        st = entry.stat(follow_symlinks=False)
        if is_whiteout(st):
            _remove(destination)
            continue
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(destination) and (is_opaque(entry.path) or not os.path.isdir(destination)
                                                 or os.path.islink(destination)):
                _remove(destination)
            if not os.path.lexists(destination):
                os.mkdir(destination, 0o700)
            _apply(Path(entry.path), Path(destination), link, copies)
            os.chown(destination, st.st_uid, st.st_gid)
            os.chmod(destination, stat.S_IMODE(st.st_mode))
            continue
        _remove(destination)
        if stat.S_ISREG(st.st_mode) and link:
            os.link(entry.path, destination)
            continue  # same inode: owner and mode are already right
        inode = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and os.path.exists(copies.get(inode, "")):
            os.link(copies[inode], destination)
            continue
        if stat.S_ISREG(st.st_mode):
            shutil.copyfile(entry.path, destination)
            copies[inode] = destination
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), destination)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(destination)
        else:
            os.mknod(destination, st.st_mode, st.st_rdev)
        os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(destination, stat.S_IMODE(st.st_mode))


def export_rootfs(image: Image, destination: Path) -> Path:
    """The merged root filesystem as a tarball (.tar, .tar.gz, .tgz) or, for any other
    name, a directory."""
    destination = Path(destination)
    name = destination.name
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        compression = "none" if name.endswith(".tar") else "gzip"
        refuse_existing(destination)
        with image.store.scratch() as scratch:
            tree = scratch / "rootfs"
            tree.mkdir()
            flatten(image, tree, link=True)
            fd, partial = partial_file(destination)
            try:
                with open(fd, "wb") as out:
                    compressor = open_compressor(out, compression)
                    write_canonical_tar(tree, compressor)
                    compressor.close()
                publish_file(partial, destination)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        return destination
    output = OutputDirectory(destination)
    try:
        flatten(image, output.work, link=False)
        output.publish_directory()
    except BaseException:
        output.discard()
        raise
    return destination


def is_rootfs_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error}") from None
