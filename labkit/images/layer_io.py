"""One layer in and out of the store as a (possibly compressed) tar blob."""

import gzip
import lzma
import os
import shutil
import tarfile
import zlib

from labkit.errors import BadImageInput, ImageError
from labkit.images.blobs import HashingReader, UnpackBudget, open_compressor, open_decompressed, zstandard
from labkit.images.extract import extract_layer
from labkit.images.layers import HashingSink, layer_digest, write_canonical_tar
from labkit.images.store import LayerSource, Store

CORRUPTION = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, UnicodeDecodeError) + (
    (zstandard.ZstdError,) if zstandard else ())


def import_layer(store: Store, fileobj, source: str, blob_digest: str | None = None,
                 diff_id: str | None = None, allow_devices: bool = False, keep_setuid: bool = False,
                 media_type: str = "application/vnd.oci.image.layer.v1.tar", keep_blob: bool = True,
                 budget: UnpackBudget | None = None) -> tuple:
    """Unpack a layer blob into the store and keep the blob as received beside it;
    returns (the layer's canonical digest, its LayerSource). See StagedLayers.unpack."""
    with StagedLayers(store) as staged:
        found = staged.unpack(fileobj, source, blob_digest, diff_id, allow_devices=allow_devices,
                              keep_setuid=keep_setuid, media_type=media_type, keep_blob=keep_blob, budget=budget)
        staged.commit()
    return found


class StagedLayers:
    """The layers (and blobs) of one import, unpacked into one scratch dir and moved into
    the store only once every one is unpacked and checked: layers committed one by one
    left a refused image's first layers (and their blobs) in the store, used by nothing."""

    def __init__(self, store: Store):
        self.store = store
        self.staged = []   # (layer dir, its digest, blob file or None, blob digest)

    def __enter__(self):
        self.scratch = self.store.scratch_dir()
        return self

    def __exit__(self, *exception):
        shutil.rmtree(self.scratch, ignore_errors=True)

    def unpack(self, fileobj, source: str, blob_digest: str | None = None, diff_id: str | None = None,
               allow_devices: bool = False, keep_setuid: bool = False,
               media_type: str = "application/vnd.oci.image.layer.v1.tar", keep_blob: bool = True,
               budget: UnpackBudget | None = None) -> tuple:
        """(the layer's canonical digest, its LayerSource), staged for commit().

        `blob_digest` (of the bytes as given) and `diff_id` (of the uncompressed tar) are
        checked when known. `keep_blob=False` (a tar labkit made itself) keeps no blob, and
        the source is None. `budget`: what the whole import may still unpack to (a fresh
        one: this layer alone)."""
        budget = budget or UnpackBudget()
        work = self.scratch / str(len(self.staged))
        layer = work / "layer"
        layer.mkdir(parents=True)
        with open(work / "blob", "wb") as received:
            raw = HashingReader(fileobj, copy_to=received)
            try:
                plain = HashingReader(open_decompressed(raw, source), budget=budget, source=source)
                extract_layer(plain, layer, source, allow_devices=allow_devices, keep_setuid=keep_setuid,
                              budget=budget)
                plain.drain()  # to the end: gzip checks its CRC only there, and digests need every byte
                raw.drain()
            except CORRUPTION + (OSError,) as error:
                if isinstance(error, OSError) and error.errno is not None:
                    raise  # the disk (ENOSPC...), not the archive; bz2 says a damaged stream without an errno
                raise BadImageInput(f"{source} is not a complete layer archive ({error}): it is truncated or "
                                    "corrupt; export or download it again") from None
        if blob_digest and raw.digest != blob_digest:
            raise BadImageInput(f"{source} does not match its digest: the manifest says {blob_digest}, the "
                                f"content is {raw.digest}; the archive is corrupt or was tampered with")
        if diff_id and plain.digest != diff_id:
            raise BadImageInput(f"{source} does not match the image config: diff_id {diff_id}, uncompressed "
                                f"content {plain.digest}; the archive is corrupt or was tampered with")
        os.chmod(layer, 0o755)  # as add_layer does, before the digest: the root's mode is one value
        digest = layer_digest(layer)
        if not keep_blob:
            self.staged.append((layer, digest, None, None))
            return digest, None
        self.staged.append((layer, digest, work / "blob", raw.digest))
        return digest, LayerSource(raw.digest, plain.digest, media_type, raw.size)

    def commit(self) -> None:
        """Every staged layer and blob into the store (a layer already there is shared)."""
        for layer, digest, blob, blob_digest in self.staged:
            if blob is not None:
                self.store.add_blob(blob, blob_digest)
            self.store.add_layer(layer, digest)
        self.staged = []


def copy_blob(store: Store, source: LayerSource, out, decompress: bool = False) -> None:
    """Write the blob `source` as received (or its uncompressed tar) to `out`, checking
    it on the way: a damaged store is never exported silently."""
    path = store.blob_path(source.digest)
    with open(path, "rb") as handle:
        raw = HashingReader(handle)
        reader = HashingReader(open_decompressed(raw, str(path))) if decompress else raw
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            out.write(chunk)
        raw.drain()
    expected, got = (source.diff_id, reader.digest) if decompress else (source.digest, raw.digest)
    if got != expected:
        raise ImageError(f"the blob {source.digest} in {path} is damaged: it now hashes to {got}, not {expected}; "
                         "remove the images that use it and import them again")


def export_layer(store: Store, digest: str, out, compression: str = "gzip") -> tuple:
    """Write the layer's canonical tar, compressed, to `out`; returns (blob digest, size).

    Also re-checks the layer on disk against its digest, so a damaged store is never
    exported silently.
    """
    blob = HashingSink(out)
    compressor = open_compressor(blob, compression)
    plain = HashingSink(compressor)
    write_canonical_tar(store.layer_dir(digest), plain)
    compressor.close()
    if plain.digest != digest:
        raise ImageError(f"layer {digest} is damaged on disk: its content now hashes to {plain.digest}; "
                         "remove the images that use it and import or build them again")
    return blob.digest, blob.size
