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

from labkit.errors import BadImageInput, ImageError
from labkit.images.blobs import LAYER_TYPE_FOR, UnpackBudget
from labkit.images.bundles import OutputDirectory, canonical_json, read_json
from labkit.images.json_shapes import mapping, mappings, reading, string, strings
from labkit.images.layer_io import StagedLayers, copy_blob, export_layer
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
               "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "application/vnd.docker.image.rootfs.diff.tar"}
DOCKER_TO_OCI = {"application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar"}
BLOB_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


# -- image config, shared with docker-save archives ------------------------------------

# Docker's config keys and ImageConfig's fields, one to one (ExposedPorts and Volumes are
# objects whose keys are the values).
CONFIG_KEYS = (("Env", "env"), ("Cmd", "cmd"), ("Entrypoint", "entrypoint"), ("WorkingDir", "workdir"),
               ("User", "user"), ("Labels", "labels"), ("StopSignal", "stop_signal"),
               ("ExposedPorts", "exposed_ports"), ("Volumes", "volumes"))
SET_KEYS = ("ExposedPorts", "Volumes")


def oci_config(image: Image, diff_ids: list) -> dict:
    config = dict(image.config.other)
    for key, attribute in CONFIG_KEYS:
        value = getattr(image.config, attribute)
        if key in SET_KEYS:
            value = {item: {} for item in value}
        if value or (key == "Cmd" and value is not None and image.config.entrypoint is None):
            config[key] = value
    history = [{key: value for key, value in (("created", entry.get("created")),
                                              ("created_by", entry.get("created_by")),
                                              ("empty_layer", entry.get("empty_layer"))) if value}
               for entry in image.history]
    machine = os.uname().machine
    return {"architecture": ARCHITECTURES.get(machine, machine), "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}


def config_from_oci(document, source: str, name: str = "the image config") -> tuple:
    """(ImageConfig, diff_ids, history) from an OCI or Docker image config."""
    with reading(source, name):
        rootfs = document.get("rootfs") if isinstance(document, dict) else None
        if not isinstance(rootfs, dict) or "diff_ids" not in rootfs:
            raise BadImageInput(f"{source}: the image config has no rootfs.diff_ids; it is not an image config")
        diff_ids = strings(rootfs["diff_ids"], source, f"{name}'s rootfs.diff_ids")
        settings = dict(mapping(document.get("config"), source, f"{name}'s config", optional=True))
        values = {attribute: _setting(settings.pop(key, None), key, source, name) for key, attribute in CONFIG_KEYS}
        shell = strings(settings.pop("Shell", None), source, f"{name}'s config.Shell", optional=True)
        for key in SET_KEYS:
            values[dict(CONFIG_KEYS)[key]] = sorted(values[dict(CONFIG_KEYS)[key]] or {})
        config = ImageConfig(env=list(values["env"] or ImageConfig().env), workdir=values["workdir"] or "/",
                             cmd=values["cmd"], entrypoint=values["entrypoint"], user=values["user"] or "",
                             labels=dict(values["labels"] or {}), stop_signal=values["stop_signal"] or "",
                             exposed_ports=values["exposed_ports"], volumes=values["volumes"],
                             shell=shell or ImageConfig().shell, other=settings)
        history = mappings(document.get("history"), source, f"{name}'s history", optional=True)
        for index, entry in enumerate(history):
            for key in ("created_by", "comment", "created"):
                string(entry.get(key), source, f"{name}'s history[{index}].{key}", optional=True)
        return config, diff_ids, list(history)


# What each config key holds, as Docker's own Go types say (Cmd is []string, Labels
# map[string]string, ExposedPorts and Volumes map[string]struct{}).
LIST_KEYS = ("Env", "Cmd", "Entrypoint")
STRING_KEYS = ("WorkingDir", "User", "StopSignal")


def _setting(value, key: str, source: str, name: str):
    what = f"{name}'s config.{key}"
    if key in LIST_KEYS:
        return strings(value, source, what, optional=True)
    if key in STRING_KEYS:
        return string(value, source, what, optional=True)
    found = mapping(value, source, what, optional=True)
    if key == "Labels":
        for label, text in found.items():
            string(text, source, f"{what}[{label!r}]")
    return found


def image_config_blob(image: Image) -> bytes | None:
    """The config as it was received, for an imported image whose every layer is still
    the blob it came as: exported unchanged, so the image ID (its digest) is kept."""
    if not image.config_blob or not all(image.source(i) for i in range(len(image.layers))):
        return None
    path = image.store.blob_path(image.config_blob)
    data = path.read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != image.config_blob:
        raise ImageError(f"the image config {image.config_blob} in {path} is damaged; import the image again")
    return data


def diff_ids_of(image: Image) -> list:
    return [image.source(i).diff_id if image.source(i) else digest for i, digest in enumerate(image.layers)]


def keep_config_blob(store: Store, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with store.scratch() as scratch:
        (scratch / "config").write_bytes(data)
        store.add_blob(scratch / "config", digest)
    return digest


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
    digest = mapping(descriptor, source, "a descriptor").get("digest", "")
    match = BLOB_DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not match:
        raise BadImageInput(f"{source}: unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return f"blobs/sha256/{match.group(1)}"


def read_checked_json(bundle, descriptor: dict):
    return parse_json(read_checked_bytes(bundle, descriptor), bundle.source, blob_name(descriptor, bundle.source))


def parse_json(data: bytes, source: str, name: str):
    try:
        return json.loads(data)
    except ValueError as error:
        raise BadImageInput(f"{source}: {name} is not valid JSON ({error})") from None


def read_checked_bytes(bundle, descriptor: dict) -> bytes:
    name = blob_name(descriptor, bundle.source)
    with bundle.open(name) as handle:
        data = handle.read(16 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != descriptor["digest"] or ("size" in descriptor and descriptor["size"] != len(data)):
        raise BadImageInput(f"{bundle.source}: {name} does not match its descriptor (digest {descriptor['digest']}, "
                            f"size {descriptor.get('size')}; content {digest}, {len(data)} bytes): corrupt or tampered")
    return data


def check_media_type(descriptor: dict, allowed: set, what: str, source: str) -> None:
    media_type = mapping(descriptor, source, what).get("mediaType")
    if not isinstance(media_type, str) or media_type not in allowed:
        raise BadImageInput(f"{source}: unknown media type {media_type!r} for {what}; labkit reads "
                            f"{', '.join(sorted(allowed))}")


def pick_manifest(bundle, index: dict, wanted: str | None) -> tuple:
    """(descriptor, ref name) of the manifest to import."""
    candidates = []
    index = mapping(index, bundle.source, "index.json")
    for descriptor in mappings(index.get("manifests"), bundle.source, "index.json's manifests", optional=True):
        if descriptor.get("mediaType") in INDEX_TYPES:
            name = blob_name(descriptor, bundle.source)
            nested = mapping(read_checked_json(bundle, descriptor), bundle.source, name)
            candidates.extend((inner, _ref_name(descriptor, bundle.source))
                              for inner in mappings(nested.get("manifests"), bundle.source, f"{name}'s manifests",
                                                    optional=True)
                              if _is_this_platform(inner, bundle.source))
        else:
            candidates.append((descriptor, _ref_name(descriptor, bundle.source)))
    if wanted:
        named = [c for c in candidates if c[1] in (wanted, f"{wanted}:latest")]
        candidates = named or candidates
    if len(candidates) != 1:
        refs = ", ".join(str(ref) for _, ref in candidates) or "none"
        raise BadImageInput(f"{bundle.source} holds {len(candidates)} images matching (refs: {refs}); "
                            "say which one with --ref")
    return candidates[0]


def _ref_name(descriptor: dict, source: str) -> str | None:
    annotations = mapping(descriptor.get("annotations"), source, "a descriptor's annotations", optional=True)
    return string(annotations.get(REF_ANNOTATION), source, f"the annotation {REF_ANNOTATION}", optional=True)


def _is_this_platform(descriptor: dict, source: str) -> bool:
    platform = mapping(descriptor.get("platform"), source, "a descriptor's platform", optional=True)
    machine = os.uname().machine
    return platform.get("architecture") in (None, ARCHITECTURES.get(machine, machine))


def import_oci(bundle, store: Store, name: str | None = None, ref: str | None = None, **options) -> Image:
    with reading(bundle.source, "oci-layout"):
        layout = mapping(read_json(bundle, "oci-layout"), bundle.source, "oci-layout")
        if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise BadImageInput(f"{bundle.source}: OCI layout version {layout.get('imageLayoutVersion')!r} is not "
                                f"{LAYOUT_VERSION!r}, the only one labkit reads")
    with reading(bundle.source, "index.json"):
        descriptor, ref_name = pick_manifest(bundle, read_json(bundle, "index.json"), ref or name)
    check_media_type(descriptor, MANIFEST_TYPES, "the image manifest", bundle.source)
    manifest_name = blob_name(descriptor, bundle.source)
    with reading(bundle.source, f"the image manifest {manifest_name}"):
        manifest = mapping(read_checked_json(bundle, descriptor), bundle.source, f"the image manifest {manifest_name}")
        check_media_type(manifest.get("config"), CONFIG_TYPES, "the image config", bundle.source)
        layer_descriptors = mappings(manifest.get("layers"), bundle.source, f"{manifest_name}'s layers")
        for layer in layer_descriptors:
            check_media_type(layer, LAYER_TYPES, f"layer {layer.get('digest')}", bundle.source)
            blob_name(layer, bundle.source)
        config_data = read_checked_bytes(bundle, manifest["config"])
    config, diff_ids, source_history = config_from_oci(parse_json(config_data, bundle.source, "the config"),
                                                       bundle.source)
    if len(diff_ids) != len(layer_descriptors):
        raise BadImageInput(f"{bundle.source}: the manifest lists {len(layer_descriptors)} layers but the "
                            f"config {len(diff_ids)} diff_ids; the image is inconsistent")
    name = validate_name(name or (ref_name or "").rsplit("/", 1)[-1] or "imported")
    options.setdefault("budget", UnpackBudget())  # one for all the layers of this import
    with store.lock(), StagedLayers(store) as staged:
        layers, sources = [], []
        for descriptor, diff_id in zip(layer_descriptors, diff_ids):
            blob = blob_name(descriptor, bundle.source)
            with bundle.open(blob) as handle:
                layer, source = staged.unpack(handle, f"{bundle.source}: {blob}", descriptor["digest"],
                                              diff_id, media_type=descriptor["mediaType"], **options)
            layers.append(layer)
            sources.append(source)
        staged.commit()
        history = merge_history(source_history, layers, store, f"imported from {bundle.source}")
        return store.save_image(name, layers, config, history, sources, keep_config_blob(store, config_data))


# -- writing a layout ---------------------------------------------------------------------

def export_oci(image: Image, destination: Path, compression: str = "gzip") -> Path:
    """Write `image` as an OCI layout: a directory, or a tar if the name ends in .tar."""
    output = OutputDirectory(destination)
    try:
        blobs = output.work / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_descriptors = [_write_layer(image, index, blobs, compression) for index in range(len(image.layers))]
        config_data = image_config_blob(image) or canonical_json(oci_config(image, diff_ids_of(image)))
        config = _write_blob(blobs, config_data, "application/vnd.oci.image.config.v1+json")
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


def _write_layer(image: Image, index: int, blobs: Path, compression: str) -> dict:
    """An imported layer goes out as the blob it came as (whatever `compression`
    says); a layer labkit made is written as its canonical tar, compressed."""
    digest, source = image.layers[index], image.source(index)
    partial = blobs / f".{digest[7:]}.partial"
    with open(partial, "wb") as out:
        if source is not None:
            copy_blob(image.store, source, out)
            blob_digest, size, media_type = source.digest, source.size, _oci_media_type(source.media_type)
        else:
            blob_digest, size = export_layer(image.store, digest, out, compression)
            media_type = LAYER_TYPE_FOR[compression]
    os.rename(partial, blobs / blob_digest[7:])
    return {"mediaType": media_type, "digest": blob_digest, "size": size}


def _oci_media_type(media_type: str) -> str:
    return DOCKER_TO_OCI.get(media_type, media_type)
