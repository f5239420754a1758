"""ADD of a local archive: a tar (plain, gzip, bzip2, xz or zstd) is unpacked into the
destination, as Docker does; every other file is copied as COPY would. The archive's
entries meet the same checks as an imported layer's (labkit.images.extract)."""

import bz2
import lzma
import tarfile
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.blobs import open_decompressed
from labkit.images.extract import extract_layer

MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


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
        head = handle.read(6)
        handle.seek(0)
        if head.startswith(b"BZh"):
            stream = bz2.BZ2File(handle)
        elif head.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(handle)
        else:
            stream = open_decompressed(handle, str(path))
        try:
            extract_layer(stream, target, f"ADD {path.name}")
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as error:
            raise ImageError(f"ADD {path.name}: it looks like an archive but cannot be unpacked ({error})") from None
