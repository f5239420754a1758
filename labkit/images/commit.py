"""Commit: a container's read-write layer (overlay's upper dir) becomes an image layer.

(The layer machinery, labkit.images.layers and layer_copy, is imported at the first commit:
this module comes with `labkit.images`, which `labkit run` imports for the store alone,
and tarfile, hashlib and typing would be ~10 ms of each run's start.)

The upper dir is already in overlay form (whiteouts, opaque dirs), which is how
layers are stored, so a commit keeps it as it is, minus (one rule, _Sorted, for a
copied and a moved upper dir alike):
  * the init-layer files (/etc/hostname, /etc/hosts, /etc/resolv.conf): they are
    generated for each container and must never become part of an image;
  * sockets, which a tar cannot hold (whoever listens makes them again);
  * overlay's private xattrs, which describe this upper dir's relation to its
    lowers and would be stale in a layer.
"""

import os
import shutil
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.store import Image, ImageConfig, Store, validate_name
from labkit.images.whiteouts import (
    INIT_LAYER_FILES,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    fuse_marker,
    is_opaque,
    make_opaque,
    make_whiteout,
    strip_overlay_xattrs,
    unsupported_overlay_feature,
)


def commit(upper_dir, base_image, new_name: str, store: Store | None = None,
           message: str = "", config: ImageConfig | None = None, consume: bool = False,
           container: dict | None = None) -> Image:
    """Save `base_image` plus the changes in `upper_dir` as the image `new_name`.

    `container` ({"id", "name"}) is recorded in the new layer's history entry: the layer
    is that container's read-write layer (what a graded lab asks of a commit, as against
    a layer a build made).

    `consume=True` moves the files out of `upper_dir` instead of copying them (for a
    container that is about to be removed, as in a build); the upper dir is left empty.
    """
    store = store or (base_image.store if isinstance(base_image, Image) else Store())
    validate_name(new_name)
    base = base_image if isinstance(base_image, Image) else _get_image(base_image, store)
    with store.lock():
        digest, size = _store_layer(Path(upper_dir), store, consume)
        step = message or f"labkit commit of {Path(upper_dir)}"
        entry = store.history_entry(step, digest, size)
        if container is not None:
            entry["container"] = {"id": str(container.get("id", "")), "name": str(container.get("name", ""))}
        history = list(base.history) + [entry]
        sources = [base.source(index) for index in range(len(base.layers))] + [None]  # the base's blobs stay
        return store.save_image(new_name, list(base.layers) + [digest], config or base.config, history, sources)


def commit_layer(upper_dir, store: Store, consume: bool = False) -> str:
    """Store the changes in `upper_dir` as a layer; returns its digest."""
    return _store_layer(Path(upper_dir), store, consume)[0]


def upper_digest(upper_dir) -> str:
    """The digest a commit of `upper_dir` would give its layer, storing nothing."""
    from labkit.images.layers import tar_digest

    return tar_digest(_Sorted(os.fspath(upper_dir)).kept)


def _store_layer(upper: Path, store: Store, consume: bool) -> tuple:
    """(digest, bytes of file content) of the layer made of `upper`'s changes."""
    from labkit.images.layer_copy import LayerCopy
    from labkit.images.layers import tar_digest

    if not upper.is_dir():
        raise ImageError(f"cannot commit {upper}: it is not a directory (is the container removed?)")
    with store.scratch() as scratch:
        layer = scratch / "layer"
        if consume and _same_filesystem(upper, scratch):
            os.rename(upper, layer)
            os.mkdir(upper, 0o755)  # whoever owns the upper dir still finds it, now empty
            kept = _tidy_in_place(os.fspath(layer))
            digest = tar_digest(kept)
        else:
            os.mkdir(layer, 0o755)
            kept = _Sorted(os.fspath(upper)).kept
            with LayerCopy(upper, layer) as copy:
                # Each file is read once, into a block of the canonical tar from which the
                # copy is written and which is then hashed (the tar is never stored).
                digest = tar_digest(kept, copy)
        return store.add_layer(layer, digest=digest), _content_size(kept)


class _Sorted:
    """An upper dir sorted into what a layer keeps and what it drops."""

    def __init__(self, upper: str):
        self.kept = []       # tar entries, in canonical order
        self.dropped = []    # paths, each child before its directory
        self._sort(upper, "", os.stat(upper, follow_symlinks=False))
        from labkit.images.layers import sort_canonically

        self.kept = sort_canonically(self.kept)

    def _sort(self, directory: str, prefix: str, seen: os.stat_result) -> bool:
        """The one rule of what a commit keeps: everything but the init-layer files
        and sockets (which a tar cannot hold), and a directory goes too when it held
        init-layer files and nothing kept (unless it is opaque: then it still hides
        the lower one). True if `directory` goes."""
        from labkit.images.layers import Entry, entry_for, open_as_seen

        dropped_any, kept_any = False, False
        fd = open_as_seen(directory, seen, os.O_DIRECTORY)   # never a host directory a link leads to
        try:
            with os.scandir(fd) as listing:
                items = [(item.name, item.stat(follow_symlinks=False)) for item in listing]
        finally:
            os.close(fd)
        for name, st in items:
            path = os.path.join(directory, name)
            relative = prefix + name
            if relative in INIT_LAYER_FILES:
                self.dropped.append(path)
                dropped_any = True
                continue
            marker = fuse_marker(name, st)
            if marker is not None:   # fuse-overlayfs's own form: dropped, a deletion kept in the kernel's
                self.dropped.append(path)
                if marker == "whiteout":
                    deleted = os.path.join(directory, name[len(WHITEOUT_PREFIX):])
                    self.kept.append(Entry(relative, deleted, st, "whiteout"))
                    kept_any = True
                continue
            _check(path, relative)
            entry = entry_for(relative, path, st)
            if entry is None:
                self.dropped.append(path)
                continue
            mark = len(self.kept)
            self.kept.append(entry)
            if entry.kind == "dir":
                opaque = is_opaque(path)
                if opaque:
                    self.kept.append(Entry(f"{relative}/{OPAQUE_MARKER}", None, None, "opaque"))
                if self._sort(path, relative + "/", st) and not opaque:
                    del self.kept[mark:]
                    self.dropped.append(path)
                    dropped_any = True
                    continue
            kept_any = True
        return dropped_any and not kept_any


def _tidy_in_place(layer: str) -> list:
    """Make a moved upper dir what a layer keeps of it; returns its entries."""
    contents = _Sorted(layer)
    for path in contents.dropped:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # a directory emptied by the rule, or one named like an init-layer file
        else:
            os.unlink(path)
    for entry in contents.kept:
        if entry.kind == "opaque":
            make_opaque(os.path.join(layer, entry.name.rpartition("/")[0]))  # both names: with and without userxattr
        elif entry.kind == "whiteout" and not os.path.lexists(entry.path):
            make_whiteout(entry.path)   # for fuse-overlayfs's `.wh.NAME` file, dropped above
        elif entry.kind != "symlink":
            strip_overlay_xattrs(entry.path)
    return contents.kept


def _content_size(entries) -> int:
    """What `image history` shows: bytes of regular files, each name counted (as tree_size)."""
    return sum(entry.st.st_size for entry in entries if entry.kind == "file")


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
