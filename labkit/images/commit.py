"""Commit: a container's read-write layer (overlay's upper dir) becomes an image layer.

The upper dir is already in overlay form (whiteouts, opaque dirs), which is how
layers are stored, so a commit copies it as it is, minus two things:
  * the init-layer files (/etc/hostname, /etc/hosts, /etc/resolv.conf): they are
    generated for each container and must never become part of an image;
  * overlay's private xattrs, which describe this upper dir's relation to its
    lowers and would be stale in a layer.
"""

import os
import shutil
import stat
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.store import Image, ImageConfig, Store, validate_name
from labkit.images.whiteouts import (
    INIT_LAYER_FILES,
    is_opaque,
    is_whiteout,
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
        else:
            os.mkdir(layer, 0o755)
            _copy_tree(upper, layer, "", {})
        return store.add_layer(layer)


def _get_image(name, store):
    from labkit.images import get_image  # the package imports this module

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


def _copy_tree(source: Path, target: Path, prefix: str, inodes: dict) -> bool:
    """Copy the upper dir `source` into the empty dir `target`, keeping whiteouts,
    opacity, modes, owners and hard links; same return value as _clean_in_place."""
    dropped_any, kept_any = False, False
    with os.scandir(source) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        relative = prefix + entry.name
        if relative in INIT_LAYER_FILES:
            dropped_any = True
            continue
        _check(entry.path, relative)
        st = entry.stat(follow_symlinks=False)
        destination = os.path.join(target, entry.name)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(destination, 0o700)
            if _copy_tree(Path(entry.path), Path(destination), relative + "/", inodes) and not is_opaque(entry.path):
                os.rmdir(destination)
                dropped_any = True
                continue
            if is_opaque(entry.path):
                make_opaque(destination)
        elif not _copy_node(entry.path, destination, st, inodes):
            continue
        _copy_metadata(destination, st)
        kept_any = True
    return dropped_any and not kept_any


def _copy_node(path, destination, st, inodes) -> bool:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        first = inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first:
            os.link(first, destination)
        else:
            shutil.copyfile(path, destination)  # sendfile(2): the kernel copies, not Python
            inodes[(st.st_dev, st.st_ino)] = destination
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(path), destination)
    elif is_whiteout(st):
        make_whiteout(destination)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(destination)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(destination, mode, st.st_rdev)
    else:
        return False  # a socket: nothing to keep
    return True


def _copy_metadata(destination, st) -> None:
    os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(destination, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
    os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

