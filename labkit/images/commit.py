"""Commit: a container's read-write layer (overlay's upper dir) becomes an image layer.

The upper dir is already in overlay form (whiteouts, opaque dirs), which is how
layers are stored, so a commit copies it as it is, minus two things:
  * the init-layer files (/etc/hostname, /etc/hosts, /etc/resolv.conf): they are
    generated for each container and must never become part of an image;
  * overlay's private xattrs, which describe this upper dir's relation to its
    lowers and would be stale in a layer.
"""

import os
import stat
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.layers import Entry, HashingSink, entry_for, sort_canonically, write_canonical_tar
from labkit.images.store import Image, ImageConfig, Store, validate_name
from labkit.images.whiteouts import (
    INIT_LAYER_FILES,
    OPAQUE_MARKER,
    is_opaque,
    make_opaque,
    make_whiteout,
    strip_overlay_xattrs,
    unsupported_overlay_feature,
)


def commit(upper_dir, base_image, new_name: str, store: Store | None = None,
           message: str = "", config: ImageConfig | None = None, consume: bool = False) -> Image:
    """Save `base_image` plus the changes in `upper_dir` as the image `new_name`.

    `consume=True` moves the files out of `upper_dir` instead of copying them (for a
    container that is about to be removed, as in a build); the upper dir is left empty.
    """
    store = store or (base_image.store if isinstance(base_image, Image) else Store())
    validate_name(new_name)
    base = base_image if isinstance(base_image, Image) else _get_image(base_image, store)
    with store.lock():
        digest = commit_layer(upper_dir, store, consume=consume)
        step = message or f"labkit commit of {Path(upper_dir)}"
        history = list(base.history) + [store.history_entry(step, digest)]
        return store.save_image(new_name, list(base.layers) + [digest], config or base.config, history)


def commit_layer(upper_dir, store: Store, consume: bool = False) -> str:
    """Store the changes in `upper_dir` as a layer; returns its digest."""
    upper = Path(upper_dir)
    if not upper.is_dir():
        raise ImageError(f"cannot commit {upper}: it is not a directory (is the container removed?)")
    with store.scratch() as scratch:
        layer = scratch / "layer"
        if consume and _same_filesystem(upper, scratch):
            os.rename(upper, layer)
            os.mkdir(upper, 0o755)  # whoever owns the upper dir still finds it, now empty
            _clean_in_place(layer, "")
            return store.add_layer(layer)
        os.mkdir(layer, 0o755)
        return store.add_layer(layer, digest=_copy_and_digest(upper, layer))


def _copy_and_digest(upper: Path, layer: Path) -> str:
    """Copy the upper dir into the empty dir `layer` and digest it in the same pass: each
    file is read once, its bytes going both to the copy and into the canonical tar's
    sha256 (the tar itself is never stored)."""
    entries = []
    _kept_entries(os.fspath(upper), "", entries)
    copy = _LayerCopy(os.fspath(upper), os.fspath(layer))
    sink = HashingSink()
    write_canonical_tar(layer, sink, sort_canonically(entries), copy=copy)
    copy.finish()
    return sink.digest


def _kept_entries(directory: str, prefix: str, entries: list) -> bool:
    """Append the tar entries of the upper dir below `directory` that belong in a layer:
    all but the init-layer files. True if the directory ended up empty only because of
    what was dropped (so it goes too), as _clean_in_place decides for a moved upper dir."""
    dropped_any, kept_any = False, False
    with os.scandir(directory) as listing:
        items = list(listing)
    for item in items:
        relative = prefix + item.name
        if relative in INIT_LAYER_FILES:
            dropped_any = True
            continue
        _check(item.path, relative)
        entry = entry_for(relative, item.path, item.stat(follow_symlinks=False))
        if entry is None:
            continue  # a socket: nothing to keep
        mark = len(entries)
        entries.append(entry)
        if entry.kind == "dir":
            opaque = is_opaque(item.path)
            if opaque:
                entries.append(Entry(f"{relative}/{OPAQUE_MARKER}", None, None, "opaque"))
            if _kept_entries(item.path, relative + "/", entries) and not opaque:
                del entries[mark:]
                dropped_any = True
                continue
        kept_any = True
    return dropped_any and not kept_any


class _LayerCopy:
    """Makes each entry of the upper dir again under the layer dir, in tar order (a
    parent before its children). Owners, modes and times are set at the end in reverse
    order: a directory's after its children are made (which changes its times), and
    a read-only directory's after it has been filled."""

    def __init__(self, source: str, target: str):
        self.skip = len(source) + 1
        self.target = target
        self.first_copy = {}    # (dev, inode) of a hard-linked source -> its first copy
        self.fixups = []        # (copy, stat of the source), in creation order

    def __call__(self, entry, hardlink_to):
        if entry.kind == "opaque":
            make_opaque(os.path.join(self.target, entry.name.rpartition("/")[0]))
            return None
        st = entry.st
        destination = os.path.join(self.target, entry.path[self.skip:])
        inode = (st.st_dev, st.st_ino)
        if hardlink_to is not None:
            os.link(self.first_copy[inode], destination)
            return None
        self.fixups.append((destination, st))
        if entry.kind == "file":
            if st.st_nlink > 1:
                self.first_copy[inode] = destination
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            return open(fd, "wb", buffering=0)
        if entry.kind == "dir":
            os.mkdir(destination, 0o700)
        elif entry.kind == "symlink":
            os.symlink(os.readlink(entry.path), destination)
        elif entry.kind == "whiteout":
            make_whiteout(destination)
        elif entry.kind == "fifo":
            os.mkfifo(destination)
        else:
            os.mknod(destination, st.st_mode, st.st_rdev)
        return None

    def finish(self):
        for destination, st in reversed(self.fixups):
            _copy_metadata(destination, st)


def _get_image(name, store):
    from labkit.images.named import get_image

    return get_image(name, store)


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _check(path, relative):
    feature = unsupported_overlay_feature(path)
    if feature:
        raise ImageError(
            f"cannot commit /{relative}: overlay marked it with {feature}, so its content still "
            "lives in a lower layer; mount overlays with redirect_dir=off,metacopy=off "
            "(labkit.images.overlay does) and run the container again"
        )


def _clean_in_place(directory: Path, prefix: str) -> bool:
    """Drop init-layer files and overlay bookkeeping; True if the dir ended up empty
    only because of what was dropped (so it can go too)."""
    dropped_any, kept_any = False, False
    with os.scandir(directory) as listing:
        entries = list(listing)
    for entry in entries:
        relative = prefix + entry.name
        if relative in INIT_LAYER_FILES:
            os.unlink(entry.path)
            dropped_any = True
            continue
        _check(entry.path, relative)
        if entry.is_dir(follow_symlinks=False):
            strip_overlay_xattrs(entry.path)
            if is_opaque(entry.path):
                make_opaque(entry.path)  # both xattr names, for mounts with and without userxattr
            if _clean_in_place(Path(entry.path), relative + "/") and not is_opaque(entry.path):
                os.rmdir(entry.path)
                dropped_any = True
                continue
        elif not entry.is_symlink():
            strip_overlay_xattrs(entry.path)
        kept_any = True
    return dropped_any and not kept_any


def _copy_metadata(destination, st) -> None:
    os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(destination, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
    os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

