"""One layer in and out of the store as a (possibly compressed) tar blob."""

import gzip
import lzma
import tarfile
import zlib

from labkit.errors import BadImageInput, ImageError
from labkit.images.blobs import HashingReader, UnpackBudget, open_compressor, open_decompressed, zstandard
from labkit.images.extract import extract_layer
from labkit.images.layers import HashingSink, write_canonical_tar
from labkit.images.store import LayerSource, Store

CORRUPTION = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, UnicodeDecodeError) + (
    (zstandard.ZstdError,) if zstandard else ())


def import_layer(store: Store, fileobj, source: str, blob_digest: str | None = None,
                 diff_id: str | None = None, allow_devices: bool = False, keep_setuid: bool = False,
                 media_type: str = "application/vnd.oci.image.layer.v1.tar", keep_blob: bool = True,
                 budget: UnpackBudget | None = None) -> tuple:
    """Unpack a layer blob into the store and keep the blob as received beside it;
    returns (the layer's canonical digest, its LayerSource).

    `blob_digest` (of the bytes as given) and `diff_id` (of the uncompressed tar) are
    checked when known; on any failure nothing is left in the store. `keep_blob=False`
    (a tar labkit made itself) keeps no blob, and the source is None. `budget`: what the
    whole import may still unpack to (a fresh one: this layer alone).
    """
    budget = budget or UnpackBudget()
    with store.scratch() as scratch, open(scratch / "blob", "wb") as received:
        raw = HashingReader(fileobj, copy_to=received)
        layer = scratch / "layer"
        layer.mkdir()
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
        received.close()
        if not keep_blob:
            return store.add_layer(layer), None
        store.add_blob(scratch / "blob", raw.digest)
        return store.add_layer(layer), LayerSource(raw.digest, plain.digest, media_type, raw.size)


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
