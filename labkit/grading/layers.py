"""Probes of images in the layer store: what a layer adds, what it deletes (a whiteout,
the character device 0:0 overlayfs uses), what the image shows as a whole, and whether a
commit kept the init layer out (/etc/hostname, /etc/hosts, /etc/resolv.conf belong to
one container, never to an image)."""

import os
import stat

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import current_world, value_of
from labkit.images.whiteouts import is_opaque, is_whiteout

from labkit.images.whiteouts import INIT_LAYER_FILES as INIT_FILES


def image_named(name):
    from labkit.images import get_image

    name = value_of(name)
    try:
        return get_image(name, store=current_world().store())
    except Exception as error:
        raise ProbeFailed(f"no image {name!r} in the store ({type(error).__name__})") from None


def _relative(path: str) -> str:
    return os.path.normpath(path).lstrip("/")


def _entry(layer_dir, relative):
    try:
        return os.lstat(os.path.join(layer_dir, relative))
    except (FileNotFoundError, NotADirectoryError):
        return None


def layer_state(layer_dir, path) -> str:
    """In one layer: 'added' (an entry), 'deleted' (a whiteout, or an opaque parent
    hides it), or 'untouched'."""
    relative = _relative(path)
    st = _entry(layer_dir, relative)
    if st is not None:
        return "deleted" if is_whiteout(st) else "added"
    parent = os.path.dirname(relative)
    while parent:
        parent_st = _entry(layer_dir, parent)
        if parent_st is not None and (is_whiteout(parent_st) or not stat.S_ISDIR(parent_st.st_mode)):
            return "deleted"
        if parent_st is not None and is_opaque(os.path.join(layer_dir, parent)):
            return "deleted"
        parent = os.path.dirname(parent)
    return "untouched"


def visible(image, path) -> bool:
    """Does `path` exist in the image's merged view (top layer first, as overlayfs reads)?"""
    for layer_dir in reversed(image.layer_dirs):
        state = layer_state(layer_dir, path)
        if state != "untouched":
            return state == "added"
    return False


def top_layer_adds(image_name, path):
    def look():
        image = image_named(image_name)
        state = layer_state(image.layer_dirs[-1], path)
        return Observation(state == "added", f"the top layer of {image.name}: {path} {state}")
    return look


def top_layer_deletes(image_name, path):
    """The top layer hides `path`, which a lower layer has: a deletion, not an absence."""
    def look():
        image = image_named(image_name)
        state = layer_state(image.layer_dirs[-1], path)
        below = any(layer_state(d, path) == "added" for d in image.layer_dirs[:-1])
        if state == "deleted" and not below:
            return Observation(False, f"the top layer whites out {path}, but no lower layer has it")
        return Observation(state == "deleted" and below, f"the top layer of {image.name}: {path} {state}")
    return look


def image_contains(image_name, path):
    def look():
        image = image_named(image_name)
        seen = visible(image, path)
        return Observation(seen, f"{path} {'is' if seen else 'is not'} in {image.name}")
    return look


def image_lacks(image_name, path):
    def look():
        image = image_named(image_name)
        seen = visible(image, path)
        return Observation(not seen, f"{path} {'is' if seen else 'is not'} in {image.name}")
    return look


def is_whiteout_of(answer, image_name, path):
    """`answer` is the path of the whiteout that hides `path` in one of the image's layers
    (compared by inode: the path may be the one the notebook sees)."""
    def look():
        image = image_named(image_name)
        given = value_of(answer)
        if isinstance(given, os.PathLike):
            given = os.fspath(given)
        if not isinstance(given, str):
            raise ProbeFailed(f"the answer {given!r} is not a path")
        try:
            st = os.lstat(current_world().host_path(given))
        except (FileNotFoundError, NotADirectoryError):
            return Observation(False, "no file at that path")
        if not is_whiteout(st):
            return Observation(False, "that path is not a whiteout (a character device 0:0)")
        expected = [_entry(d, _relative(path)) for d in image.layer_dirs]
        same = [e is not None and (e.st_dev, e.st_ino) == (st.st_dev, st.st_ino) for e in expected]
        return Observation(any(same), "a whiteout in the image's top layer" if same[-1]
                           else "a whiteout, but not the one that hides that path in this image")
    return look


def commit_excludes_init(image_name, base_name):
    """`image_name` is `base_name` plus one layer committed from a container's read-write
    layer (the store records which container at commit time; that container ran here, and
    while its read-write layer is still there, the layer's files are its files), and that
    layer has none of the init files."""
    def look():
        image, base = image_named(image_name), image_named(base_name)
        if image.layers[:-1] != base.layers or len(image.layers) != len(base.layers) + 1:
            return Observation(False, f"{image.name} is not {base.name} plus one committed layer")
        kept = [f"/{name}" for name in INIT_FILES if layer_state(image.layer_dirs[-1], name) == "added"]
        if kept:
            return Observation(False, "the committed layer holds " + ", ".join(kept))
        made_from = committed_from(image)
        if made_from is None:
            return Observation(False, f"the top layer of {image.name} was not committed from a container")
        name = made_from.get("name") or made_from.get("id")
        ran, upper = current_world().committed_container(made_from)
        if not ran:
            return Observation(False, f"the store says container {name}, but no such container ran here")
        differs = layer_matches_upper(image.layer_dirs[-1], upper) if upper else None
        if differs:
            return Observation(False, f"committed from container {name}, but {differs} is not its file")
        return Observation(True, f"committed from container {name}'s read-write layer")
    return look


def committed_from(image) -> dict | None:
    """The container the image's top layer was committed from, as the store recorded it."""
    top = image.history[-1] if image.history else {}
    container = top.get("container") if top.get("layer") == image.layers[-1] else None
    return container if isinstance(container, dict) and container.get("id") else None


def layer_matches_upper(layer_dir, upper_dir) -> str | None:
    """None if every file of the layer is the same file in the container's read-write
    layer (same type, same bytes); else the first path that differs."""
    for directory, dirs, files in os.walk(layer_dir):
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, layer_dir)
            mine, theirs = os.lstat(path), _entry(upper_dir, relative)
            if theirs is None or stat.S_IFMT(mine.st_mode) != stat.S_IFMT(theirs.st_mode):
                return "/" + relative
            if stat.S_ISREG(mine.st_mode) and not _same_bytes(path, os.path.join(upper_dir, relative)):
                return "/" + relative
    return None


def _same_bytes(first, second) -> bool:
    try:
        with open(first, "rb") as a, open(second, "rb") as b:
            while True:
                x, y = a.read(1 << 16), b.read(1 << 16)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False
