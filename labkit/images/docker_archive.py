"""`docker save` / `docker load` archives:

    manifest.json             [{"Config": "<file>", "RepoTags": ["name:tag"], "Layers": ["<file>", ...]}]
    <hex>.json                the image config (OCI-compatible; rootfs.diff_ids)
    <id>/layer.tar            one uncompressed layer tar per entry in Layers

Docker 25+ writes the same manifest.json inside an OCI layout (paths under
blobs/sha256/); both shapes are read. Integrity: every layer tar must hash to its
diff_id in the config, and files named by a digest must hash to that digest.
"""

import hashlib
import re
from pathlib import Path

from labkit.errors import BadImageInput
from labkit.images.blobs import UnpackBudget
from labkit.images.bundles import OutputDirectory, canonical_json, read_json
from labkit.images.json_shapes import mappings, reading, string, strings
from labkit.images.layer_io import StagedLayers, copy_blob, export_layer
from labkit.images.oci import (
    config_from_oci,
    diff_ids_of,
    image_config_blob,
    keep_config_blob,
    merge_history,
    oci_config,
    parse_json,
)
from labkit.images.store import Image, Store, validate_name

NAMED_BY_DIGEST = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")


def import_docker(bundle, store: Store, name: str | None = None, ref: str | None = None, **options) -> Image:
    with reading(bundle.source, "manifest.json"):
        entries = read_json(bundle, "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise BadImageInput(f"{bundle.source}: manifest.json lists no images; it is not a docker save archive")
        entry = _pick(_entries(entries, bundle.source), ref or name, bundle.source)
    config_data = _read_config(bundle, entry["Config"])
    config_document = parse_json(config_data, bundle.source, entry["Config"])
    config, diff_ids, source_history = config_from_oci(config_document, bundle.source, entry["Config"])
    layer_files = entry["Layers"]
    if len(layer_files) != len(diff_ids):
        raise BadImageInput(f"{bundle.source}: manifest.json lists {len(layer_files)} layers but the config "
                            f"{len(diff_ids)} diff_ids; the archive is inconsistent")
    tags = entry["RepoTags"]
    default = tags[0].rsplit("/", 1)[-1].removesuffix(":latest") if tags else "imported"
    name = validate_name(name or default)
    options.setdefault("budget", UnpackBudget())  # one for all the layers of this import
    with store.lock(), StagedLayers(store) as staged:
        layers, sources = [], []
        for layer_file, diff_id in zip(layer_files, diff_ids):
            match = NAMED_BY_DIGEST.fullmatch(layer_file)
            blob_digest = f"sha256:{match.group(1)}" if match and layer_file.startswith("blobs/") else None
            with bundle.open(layer_file) as handle:
                layer, source = staged.unpack(handle, f"{bundle.source}: {layer_file}", blob_digest, diff_id,
                                              **options)
            if source.digest != source.diff_id:  # Docker 25's OCI-shaped archive may hold compressed blobs
                source.media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
            layers.append(layer)
            sources.append(source)
        staged.commit()
        history = merge_history(source_history, layers, store, f"imported from {bundle.source}")
        return store.save_image(name, layers, config, history, sources, keep_config_blob(store, config_data))


def _entries(entries: list, source: str) -> list:
    """manifest.json's entries, each checked: Config a file name, Layers and RepoTags lists
    of strings (absent: none)."""
    checked = []
    for index, entry in enumerate(mappings(entries, source, "manifest.json")):
        what = f"manifest.json's entry {index}"
        if "Config" not in entry:
            raise BadImageInput(f"{source}: {what} names no Config; it is not a docker save archive")
        checked.append({**entry, "Config": string(entry["Config"], source, f"{what}.Config"),
                        "Layers": strings(entry.get("Layers"), source, f"{what}.Layers", optional=True) or [],
                        "RepoTags": strings(entry.get("RepoTags"), source, f"{what}.RepoTags", optional=True) or []})
    return checked


def _pick(entries: list, wanted: str | None, source: str) -> dict:
    if wanted:
        named = [e for e in entries if any(t in (wanted, f"{wanted}:latest") or t.endswith(f"/{wanted}")
                                           for t in e["RepoTags"])]
        entries = named or entries
    if len(entries) != 1:
        tags = ", ".join(t for e in entries for t in e["RepoTags"]) or "untagged"
        raise BadImageInput(f"{source} holds {len(entries)} images ({tags}); say which one with --ref")
    return entries[0]


def _read_config(bundle, config_file: str) -> dict:
    with bundle.open(config_file) as handle:
        data = handle.read(16 << 20)
    match = NAMED_BY_DIGEST.fullmatch(config_file)
    if match and hashlib.sha256(data).hexdigest() != match.group(1):
        raise BadImageInput(f"{bundle.source}: {config_file} does not hash to the digest in its name; "
                            "the archive is corrupt or was tampered with")
    return data


def export_docker(image: Image, destination: Path) -> Path:
    """Write `image` as a tar that `docker load` reads (uncompressed layer tars)."""
    output = OutputDirectory(destination)
    try:
        layer_files = []
        for index, (digest, diff_id) in enumerate(zip(image.layers, diff_ids_of(image))):
            folder = output.work / diff_id[7:]
            folder.mkdir(exist_ok=True)
            with open(folder / "layer.tar", "wb") as out:
                if image.source(index):  # as received, uncompressed: its diff_id is kept
                    copy_blob(image.store, image.source(index), out, decompress=True)
                else:
                    export_layer(image.store, digest, out, "none")
            layer_files.append(f"{diff_id[7:]}/layer.tar")
        config = image_config_blob(image) or canonical_json(oci_config(image, diff_ids_of(image)))
        config_file = hashlib.sha256(config).hexdigest() + ".json"
        (output.work / config_file).write_bytes(config)
        manifest = [{"Config": config_file, "RepoTags": [f"{image.name}:latest" if ":" not in image.name
                                                         else image.name],
                     "Layers": layer_files}]
        (output.work / "manifest.json").write_bytes(canonical_json(manifest))
        output.publish_tar()
    except BaseException:
        output.discard()
        raise
    return Path(destination)

