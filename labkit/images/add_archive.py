"""ADD of a local archive: a tar (plain, gzip, bzip2, xz or zstd) is unpacked into the
destination, as Docker does; every other file is copied as COPY would. The archive's
entries meet the same checks as an imported layer's (labkit.images.extract), and what
they unpack to is charged to the class's import limits (an UnpackBudget: bytes inflated,
entries), so a small bomb in a build context stops there, not at a full disk."""

import tarfile
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.blobs import MAGIC, HashingReader, UnpackBudget, open_decompressed
from labkit.images.extract import extract_layer
from labkit.images.layer_io import CORRUPTION


def is_archive(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as handle:
        head = handle.read(512)
    if any(head.startswith(magic) for magic in MAGIC):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def build_budget() -> UnpackBudget:
    """What every ADD of an archive in one build may unpack to, together."""
    return UnpackBudget(task="the archives ADD unpacks in one build", outcome="nothing was built")


def unpack(path: Path, target: Path, budget: UnpackBudget, source: str) -> None:
    """Unpack the archive at `path` into the empty dir `target`, charging its inflated bytes
    and its entries to `budget`; `source` names it in messages (the recipe line)."""
    with open(path, "rb") as handle:
        try:
            plain = HashingReader(open_decompressed(handle, source), budget=budget, source=source)
            extract_layer(plain, target, source, budget=budget)
        except CORRUPTION + (OSError,) as error:
            raise ImageError(f"{source}: it looks like an archive but cannot be unpacked ({error})") from None
