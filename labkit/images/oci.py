"""OCI image layouts (https://github.com/opencontainers/image-spec/blob/main/image-layout.md):

    oci-layout                {"imageLayoutVersion": "1.0.0"}
    index.json                the images in the layout, each a manifest descriptor
    blobs/sha256/<hex>        manifests, configs and layer tars, named by their digest

Every blob read is checked against the digest and size it was announced with; a
layer's uncompressed content is also checked against the config's diff_ids.
"""

import hashlib
import json
import os
import re
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.bundles import OutputDirectory, canonical_json, read_json
from labkit.images.layer_io import export_layer, import_layer
from labkit.images.store import Image, ImageConfig, Store, validate_name

LAYOUT_VERSION = "1.0.0"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
CONFIG_TYPES = {"application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json"}
LAYER_TYPES = {"application/vnd.oci.image.layer.v1.tar",
               "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.oci.image.layer.v1.tar+zstd",
               "application/vnd.docker.image.rootfs.diff.tar.gzip"}
LAYER_TYPE_FOR = {"none": "application/vnd.oci.image.layer.v1.tar",
                  "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                  "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
BLOB_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


# -- image config, shared with docker-save archives ------------------------------------

def oci_config(image: Image, diff_ids: list) -> dict:
    config = {"Env": image.config.env, "WorkingDir": image.config.workdir, "Cmd": image.config.cmd}
    if image.config.labels:
        config["Labels"] = image.config.labels
    history = [{key: value for key, value in (("created", entry.get("created")),
                                              ("created_by", entry.get("created_by")),
                                              ("empty_layer", entry.get("empty_layer"))) if value}
               for entry in image.history]
    machine = os.uname().machine
    return {"architecture": ARCHITECTURES.get(machine, machine), "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}


def config_from_oci(document: dict, source: str) -> tuple:
    """(ImageConfig, diff_ids, history) from an OCI or Docker image config."""
    try:
        diff_ids = list(document["rootfs"]["diff_ids"])
    except (KeyError, TypeError):
        raise ImageError(f"{source}: the image config has no rootfs.diff_ids; it is not an image config") from None
    settings = document.get("config") or {}
    cmd = (settings.get("Entrypoint") or []) + (settings.get("Cmd") or [])
    config = ImageConfig(env=list(settings.get("Env") or ImageConfig().env),
                         workdir=settings.get("WorkingDir") or "/",
                         cmd=cmd or ["sh"], labels=dict(settings.get("Labels") or {}))
    return config, diff_ids, list(document.get("history") or [])


def merge_history(source_history: list, layers: list, store: Store, origin: str) -> list:
    """Our history (step, time, layer, size) from the source's, one layer per non-empty step."""
    history, remaining = [], list(layers)
    for entry in source_history:
        step = entry.get("created_by") or entry.get("comment") or origin
        if entry.get("empty_layer") or not remaining:
            history.append({"created_by": step, "created": entry.get("created", ""), "empty_layer": True, "size": 0})
            continue
        record = store.history_entry(step, remaining.pop(0))
        record["created"] = entry.get("created") or record["created"]
        history.append(record)
    history.extend(store.history_entry(origin, digest) for digest in remaining)
    return history


# -- reading a layout -------------------------------------------------------------------

def blob_name(descriptor: dict, source: str) -> str:
    digest = descriptor.get("digest", "")
    match = BLOB_DIGEST.fullmatch(digest)
    if not match:
        raise ImageError(f"{source}: unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return f"blobs/sha256/{match.group(1)}"


def read_checked_json(bundle, descriptor: dict):
    name = blob_name(descriptor, bundle.source)
    with bundle.open(name) as handle:
        data = handle.read(16 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != descriptor["digest"] or ("size" in descriptor and descriptor["size"] != len(data)):
        raise ImageError(f"{bundle.source}: {name} does not match its descriptor (digest {descriptor['digest']}, "
                         f"size {descriptor.get('size')}; content {digest}, {len(data)} bytes): corrupt or tampered")
    try:
        return json.loads(data)
    except ValueError as error:
        raise ImageError(f"{bundle.source}: {name} is not valid JSON ({error})") from None


def check_media_type(descriptor: dict, allowed: set, what: str, source: str) -> None:
    media_type = descriptor.get("mediaType")
    if media_type not in allowed:
        raise ImageError(f"{source}: unknown media type {media_type!r} for {what}; labkit reads "
                         f"{', '.join(sorted(allowed))}")


def pick_manifest(bundle, index: dict, wanted: str | None) -> tuple:
    """(descriptor, ref name) of the manifest to import."""
    candidates = []
    for descriptor in index.get("manifests") or []:
        if descriptor.get("mediaType") in INDEX_TYPES:
            nested = read_checked_json(bundle, descriptor)
            candidates.extend((inner, descriptor.get("annotations", {}).get(REF_ANNOTATION))
                              for inner in nested.get("manifests") or [] if _is_this_platform(inner))
        else:
            candidates.append((descriptor, descriptor.get("annotations", {}).get(REF_ANNOTATION)))
    if wanted:
        named = [c for c in candidates if c[1] in (wanted, f"{wanted}:latest")]
        candidates = named or candidates
    if len(candidates) != 1:
        refs = ", ".join(str(ref) for _, ref in candidates) or "none"
        raise ImageError(f"{bundle.source} holds {len(candidates)} images matching (refs: {refs}); "
                         "say which one with --ref")
    return candidates[0]


def _is_this_platform(descriptor: dict) -> bool:
    platform = descriptor.get("platform") or {}
    machine = os.uname().machine
    return platform.get("architecture") in (None, ARCHITECTURES.get(machine, machine))


def import_oci(bundle, store: Store, name: str | None = None, ref: str | None = None, **options) -> Image:
    layout = read_json(bundle, "oci-layout")
    if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise ImageError(f"{bundle.source}: OCI layout version {layout.get('imageLayoutVersion')!r} is not "
                         f"{LAYOUT_VERSION!r}, the only one labkit reads")
    descriptor, ref_name = pick_manifest(bundle, read_json(bundle, "index.json"), ref or name)
    check_media_type(descriptor, MANIFEST_TYPES, "the image manifest", bundle.source)
    manifest = read_checked_json(bundle, descriptor)
    check_media_type(manifest.get("config", {}), CONFIG_TYPES, "the image config", bundle.source)
    for layer in manifest.get("layers", []):
        check_media_type(layer, LAYER_TYPES, f"layer {layer.get('digest')}", bundle.source)
    config, diff_ids, source_history = config_from_oci(read_checked_json(bundle, manifest["config"]), bundle.source)
    if len(diff_ids) != len(manifest.get("layers", [])):
        raise ImageError(f"{bundle.source}: the manifest lists {len(manifest.get('layers', []))} layers but the "
                         f"config {len(diff_ids)} diff_ids; the image is inconsistent")
    name = validate_name(name or (ref_name or "").rsplit("/", 1)[-1] or "imported")
    with store.lock():
        layers = []
        for descriptor, diff_id in zip(manifest["layers"], diff_ids):
            blob = blob_name(descriptor, bundle.source)
            with bundle.open(blob) as handle:
                layers.append(import_layer(store, handle, f"{bundle.source}: {blob}", descriptor["digest"],
                                           diff_id, **options))
        history = merge_history(source_history, layers, store, f"imported from {bundle.source}")
        return store.save_image(name, layers, config, history)


# -- writing a layout ---------------------------------------------------------------------

def export_oci(image: Image, destination: Path, compression: str = "gzip") -> Path:
    """Write `image` as an OCI layout: a directory, or a tar if the name ends in .tar."""
    output = OutputDirectory(destination)
    try:
        blobs = output.work / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_descriptors = [_write_layer(image, digest, blobs, compression) for digest in image.layers]
        config = _write_blob(blobs, canonical_json(oci_config(image, list(image.layers))),
                             "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": layer_descriptors}
        manifest_descriptor = _write_blob(blobs, canonical_json(manifest), manifest["mediaType"])
        manifest_descriptor["annotations"] = {REF_ANNOTATION: image.name}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [manifest_descriptor]}
        (output.work / "index.json").write_bytes(canonical_json(index))
        (output.work / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        if str(destination).endswith(".tar"):
            output.publish_tar()
        else:
            output.publish_directory()
    except BaseException:
        output.discard()
        raise
    return Path(destination)


def _write_blob(blobs: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _write_layer(image: Image, digest: str, blobs: Path, compression: str) -> dict:
    partial = blobs / f".{digest[7:]}.partial"
    with open(partial, "wb") as out:
        blob_digest, size = export_layer(image.store, digest, out, compression)
    os.rename(partial, blobs / blob_digest[7:])
    return {"mediaType": LAYER_TYPE_FOR[compression], "digest": blob_digest, "size": size}
