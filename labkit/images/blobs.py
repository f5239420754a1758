"""Layer blobs as they travel: compressed or not, checked against the digest they
were announced with.

gzip is the format every registry and `docker save` speaks, and Python has it.
zstd is read and written only if the optional `zstandard` module is importable:
it is newer (OCI 1.1), faster, and not worth a hard dependency for a teaching lab.
bzip2 and xz are only read: a rootfs tarball or an ADD archive may come so (as Docker
takes them); no OCI layer media type names them.
"""

import bz2
import gzip
import hashlib
import io
import lzma

from labkit.errors import BadImageInput, ImageError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC = {GZIP_MAGIC: "gzip", ZSTD_MAGIC: "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
COMPRESSIONS = ("none", "gzip", "zstd")
LAYER_TYPE_FOR = {"none": "application/vnd.oci.image.layer.v1.tar",
                  "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                  "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}

try:
    import zstandard
except ImportError:
    zstandard = None


class UnpackBudget:
    """Bytes one import may unpack to, over all its layers: the class defaults' import_size
    (labkit.defaults). A gzip bomb (1 MB that inflates to 1 GiB) stops here, not at a full disk."""

    def __init__(self, limit: int | None = None, task: str = "an import", outcome: str = "nothing was imported"):
        from labkit.defaults import class_defaults

        defaults = class_defaults()
        self.limit = limit if limit is not None else defaults.default("import_size")
        self.files_limit = defaults.default("import_files")
        self.where = f"[import_size] in {defaults.path}" if defaults.path else "labkit's built-in import size"
        self.files_where = f"[import_files] in {defaults.path}" if defaults.path else "labkit's built-in limit"
        self.task, self.outcome = task, outcome   # for messages: "ADD of an archive", "nothing was built"
        self.used = 0
        self.files = 0

    def take(self, count: int, source: str) -> None:
        self.used += count
        if self.limit is not None and self.used > self.limit:
            from labkit.units import format_bytes

            raise BadImageInput(f"{source} unpacks to more than {format_bytes(self.limit)}, the most {self.task} may "
                             f"unpack to ({self.where}); {self.outcome}. A compressed archive this large "
                             "inflated is likely a decompression bomb; if it is not, raise the limit there")

    def take_file(self, source: str) -> None:
        """One more archive entry: each is an inode on disk and a name in memory, and an
        archive of empty entries (512 bytes each, compressed to a few) costs nothing else."""
        self.files += 1
        if self.files_limit is not None and self.files > self.files_limit:
            raise BadImageInput(f"{source} holds more than {self.files_limit} entries, the most {self.task} may "
                                f"unpack ({self.files_where}); {self.outcome}. If the image really is "
                                "that large, raise the limit there")


class HashingReader(io.RawIOBase):
    """Reads through to `raw`, keeping the sha256 and length of every byte read (and
    the bytes themselves in `copy_to`, a file, when given; each byte is charged to
    `budget`, when given)."""

    def __init__(self, raw, copy_to=None, budget: UnpackBudget | None = None, source: str = ""):
        self.raw = raw
        self.copy_to = copy_to
        self.hash = hashlib.sha256()
        self.size = 0
        self.budget = budget
        self.source = source

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.raw.read(len(buffer))
        count = len(data)
        buffer[:count] = data
        self.hash.update(data)
        self.size += count
        if self.copy_to is not None:
            self.copy_to.write(data)
        if self.budget is not None:
            self.budget.take(count, self.source)
        return count

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def compression_of(head: bytes) -> str:
    """'gzip', 'zstd', 'bzip2', 'xz' or 'none', from the first 6 bytes of a file."""
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), "none")


def open_decompressed(raw, source: str):
    """A reader of the uncompressed bytes of `raw`, whatever its (supported) compression."""
    buffered = io.BufferedReader(raw, 1 << 20)
    kind = compression_of(buffered.peek(6)[:6])
    if kind == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(buffered)
    if kind == "xz":
        return lzma.LZMAFile(buffered)
    if kind == "zstd":
        if zstandard is None:
            raise ImageError(f"{source} is zstd-compressed and the optional 'zstandard' module is not "
                             "installed; pip install zstandard, or export the image with gzip")
        return zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    return buffered


def open_compressor(out, compression: str):
    """A writer that compresses into `out`; deterministic (no names, no times in headers)."""
    if compression == "none":
        return _Uncloseable(out)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="")
    if compression == "zstd":
        if zstandard is None:
            raise ImageError("zstd compression needs the optional 'zstandard' module; pip install zstandard, "
                             "or use gzip")
        return zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False)
    raise ImageError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


class _Uncloseable:
    def __init__(self, out):
        self.out = out

    def write(self, data):
        return self.out.write(data)

    def close(self):
        pass
