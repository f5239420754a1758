"""ADD of a local archive: a tar (plain, gzip, bzip2, xz or zstd) is unpacked into the
destination, as Docker does; every other file is copied as COPY would. The archive's
entries meet the same checks as an imported layer's (labkit.images.extract)."""

import lzma
import tarfile
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.blobs import MAGIC, open_decompressed
from labkit.images.extract import extract_layer


def is_archive(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as handle:
        head = handle.read(512)
    if any(head.startswith(magic) for magic in MAGIC):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def unpack(path: Path, target: Path) -> None:
    """Unpack the archive at `path` into the empty dir `target`."""
    with open(path, "rb") as handle:
        try:
            extract_layer(open_decompressed(handle, str(path)), target, f"ADD {path.name}")
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as error:
            raise ImageError(f"ADD {path.name}: it looks like an archive but cannot be unpacked ({error})") from None
