"""Probes of images in the layer store: what a layer adds, what it deletes (a whiteout,
the character device 0:0 overlayfs uses), what the image shows as a whole, and whether a
commit kept the init layer out (/etc/hostname, /etc/hosts, /etc/resolv.conf belong to
one container, never to an image)."""

import os
import stat

from labkit.errors import ImageError
from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import current_world, value_of
from labkit.images.commit import upper_digest
from labkit.images.layers import layer_digest
from labkit.images.whiteouts import is_opaque, is_whiteout

from labkit.images.whiteouts import INIT_LAYER_FILES as INIT_FILES


def image_named(name):
    name = value_of(name)
    try:
        return current_world().image(name)
    except Exception as error:
        raise ProbeFailed(f"no image {name!r} in the store ({type(error).__name__})") from None


def inside(look):
    """A probe's look run where the store's paths are the notebook's (the world's
    read_inside: in the grader, a thread whose root is the sandbox's)."""
    return lambda: current_world().read_inside(look)


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
    return inside(look)


def top_layer_deletes(image_name, path):
    """The top layer hides `path`, which a lower layer has: a deletion, not an absence."""
    def look():
        image = image_named(image_name)
        state = layer_state(image.layer_dirs[-1], path)
        below = any(layer_state(d, path) == "added" for d in image.layer_dirs[:-1])
        if state == "deleted" and not below:
            return Observation(False, f"the top layer whites out {path}, but no lower layer has it")
        return Observation(state == "deleted" and below, f"the top layer of {image.name}: {path} {state}")
    return inside(look)


def image_contains(image_name, path):
    def look():
        image = image_named(image_name)
        seen = visible(image, path)
        return Observation(seen, f"{path} {'is' if seen else 'is not'} in {image.name}")
    return inside(look)


def image_lacks(image_name, path):
    def look():
        image = image_named(image_name)
        seen = visible(image, path)
        return Observation(not seen, f"{path} {'is' if seen else 'is not'} in {image.name}")
    return inside(look)


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
            st = os.lstat(given)        # inside: relative to the notebook's directory
        except (FileNotFoundError, NotADirectoryError):
            return Observation(False, "no file at that path")
        if not is_whiteout(st):
            return Observation(False, "that path is not a whiteout (a character device 0:0)")
        expected = [_entry(d, _relative(path)) for d in image.layer_dirs]
        same = [e is not None and (e.st_dev, e.st_ino) == (st.st_dev, st.st_ino) for e in expected]
        return Observation(any(same), "a whiteout in the image's top layer" if same[-1]
                           else "a whiteout, but not the one that hides that path in this image")
    return inside(look)


def commit_excludes_init(image_name, base_name):
    """`image_name` is `base_name` plus one layer committed from a container's read-write
    layer, and that layer has none of the init files.

    "Committed" is what the grader saw, not what the store says: the manifest's history
    names a container (anyone can write that), so the grader's watch, while the cells ran,
    took the digest a commit of that container's read-write layer would have had when the
    manifest first appeared (evidence.Watch.look_at_images); the top layer must be that,
    byte for byte, now. No such evidence (an image made before the notebook ran, by hand,
    or naming a container already removed) is a failed check."""
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
        ran, seen, upper = current_world().committed_container(made_from, image.layers[-1])
        if not ran:
            return Observation(False, f"the store says container {name}, but no such container ran here")
        if not seen:
            return Observation(False, f"{image.name} was not seen appearing as a commit of container {name} "
                                      "while the notebook ran")
        if upper is None:
            return Observation(False, f"container {name}'s read-write layer was gone when {image.name} "
                                      "appeared: its top layer was not committed from it")
        if _digest_or_none(image.layer_dirs[-1]) != upper:
            return Observation(False, f"the top layer of {image.name} is not what container {name}'s "
                                      f"read-write layer held when {image.name} appeared")
        return Observation(True, f"committed from container {name}'s read-write layer")
    return inside(look)


def committed_from(image) -> dict | None:
    """The container the image's top layer was committed from, as the store recorded it
    (a container's id is a plain name: never a path)."""
    top = image.history[-1] if image.history else {}
    container = top.get("container") if top.get("layer") == image.layers[-1] else None
    if not isinstance(container, dict) or not isinstance(container.get("id"), str):
        return None
    return container if container["id"] not in ("", ".", "..") and "/" not in container["id"] else None


def upper_digest_or_none(upper) -> str | None:
    """The digest a commit of the read-write layer `upper` would give its layer now; None
    if there is no such directory (never a symlink to one) or it cannot be read as one."""
    try:
        if not stat.S_ISDIR(os.lstat(upper).st_mode):
            return None
        return upper_digest(upper)
    except Exception:  # noqa: BLE001 — the student's files, whatever is wrong with them: no evidence
        return None


def _digest_or_none(layer_dir) -> str | None:
    try:
        return layer_digest(layer_dir)
    except (OSError, ImageError):
        return None
