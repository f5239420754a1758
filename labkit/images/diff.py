"""What a layer (or a container's upper dir) changes relative to the layers below it."""

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from labkit.images.whiteouts import WHITEOUT_PREFIX, fuse_marker, is_opaque, is_whiteout


@dataclass
class Diff:
    added: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    deleted: list = field(default_factory=list)

    def lines(self) -> list:
        """`docker diff` style: 'A /path', 'C /path', 'D /path', in path order."""
        marked = [("A", p) for p in self.added] + [("C", p) for p in self.changed] + [("D", p) for p in self.deleted]
        return [f"{mark} {path}" for mark, path in sorted(marked, key=lambda item: item[1])]


def diff(layer_or_upper, lower=(), store=None) -> Diff:
    """Paths added, changed and deleted by `layer_or_upper` (a directory in overlay
    form, or a layer digest) on top of `lower` (layer dirs or digests, bottom first;
    or an Image)."""
    top = _as_dir(layer_or_upper, store)
    lower = getattr(lower, "layer_dirs", lower)
    lowers_top_first = [_as_dir(layer, store) for layer in reversed(list(lower))]
    result = Diff()
    _walk(top, "", lowers_top_first, result)
    for names in (result.added, result.changed, result.deleted):
        names.sort()
    return result


def _as_dir(layer, store) -> Path:
    if isinstance(layer, str) and layer.startswith("sha256:"):
        from labkit.images.store import Store

        return (store or Store()).layer_dir(layer)
    return Path(layer)


def _walk(directory: Path, prefix: str, lowers, result: Diff) -> None:
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        relative = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        marker = fuse_marker(entry.name, st)   # fuse-overlayfs's own marks (rootless, images/fuse_overlay.py)
        if marker == "whiteout":
            result.deleted.append("/" + prefix + entry.name[len(WHITEOUT_PREFIX):])
        if marker is not None:
            continue
        if is_whiteout(st):
            result.deleted.append("/" + relative)
            continue
        below = exists_below(lowers, relative)
        (result.changed if below else result.added).append("/" + relative)
        if stat.S_ISDIR(st.st_mode):
            if below and is_opaque(entry.path):
                present = {child.name for child in os.scandir(entry.path)}
                for name in sorted(merged_names(lowers, relative) - present):
                    result.deleted.append(f"/{relative}/{name}")
            _walk(Path(entry.path), relative + "/", lowers, result)


def exists_below(lowers_top_first, relative: str) -> bool:
    """Whether `relative` is visible in the union of the given layers."""
    parts = relative.split("/")
    for layer in lowers_top_first:
        try:
            st = os.lstat(os.path.join(layer, relative))
            return not is_whiteout(st)
        except FileNotFoundError:
            pass
        if _hidden_below(layer, parts):
            return False
    return False


def _hidden_below(layer, parts) -> bool:
    """True if this layer ends the lookup of `parts`: an ancestor is deleted, opaque
    or not a directory here."""
    for depth in range(1, len(parts)):
        ancestor = os.path.join(layer, *parts[:depth])
        try:
            st = os.lstat(ancestor)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode) or is_opaque(ancestor):
            return True
    return False


def merged_names(lowers_top_first, relative_dir: str) -> set:
    """Names visible in the union of the given layers inside `relative_dir`."""
    visible, hidden = set(), set()
    parts = relative_dir.split("/")
    for layer in lowers_top_first:
        path = os.path.join(layer, relative_dir)
        if os.path.isdir(path) and not os.path.islink(path):
            for child in os.scandir(path):
                if child.name in hidden or child.name in visible:
                    continue
                if is_whiteout(child.stat(follow_symlinks=False)):
                    hidden.add(child.name)
                else:
                    visible.add(child.name)
            if is_opaque(path):
                break
        elif os.path.lexists(path) or _hidden_below(layer, parts):
            break
    return visible


def find_in_stack(lowers_top_first, relative: str):
    """The path of the layer file that shows at `relative` in the union, or None."""
    parts = relative.split("/")
    for layer in lowers_top_first:
        path = os.path.join(layer, relative)
        try:
            st = os.lstat(path)
            return None if is_whiteout(st) else path
        except FileNotFoundError:
            pass
        if _hidden_below(layer, parts):
            return None
    return None
