"""Import and export, whatever the format: the one entry point front ends call.

Formats: an OCI image layout (directory or tar), a `docker save` archive (tar or
directory), or a plain root filesystem (tarball or directory).
"""

import re
from pathlib import Path

from labkit.errors import ImageError
from labkit.images.bundles import DirectoryBundle, TarBundle
from labkit.images.docker_archive import export_docker, import_docker
from labkit.images.oci import export_oci, import_oci
from labkit.images.rootfs import export_rootfs, import_rootfs
from labkit.images.store import Image, Store

EXPORT_FORMATS = ("oci", "docker", "rootfs")


def import_image(path, name: str | None = None, store: Store | None = None, ref: str | None = None,
                 allow_devices: bool = False, keep_setuid: bool = False) -> Image:
    """Import the image at `path`; the format is recognised from its content."""
    store = store or Store()
    path = Path(path)
    options = {"allow_devices": allow_devices, "keep_setuid": keep_setuid}
    if not path.exists():
        raise ImageError(f"{path} does not exist; give an OCI layout, a docker save archive or a rootfs")
    if path.is_dir():
        bundle = DirectoryBundle(path)
    else:
        store.tmp_root.mkdir(parents=True, exist_ok=True)
        bundle = TarBundle(path, spill_dir=store.tmp_root)
    try:
        if bundle.exists("oci-layout"):
            return import_oci(bundle, store, name, ref, **options)
        if bundle.exists("manifest.json"):
            return import_docker(bundle, store, name, ref, **options)
    finally:
        bundle.close()
    return import_rootfs(path, store, name or _name_from_path(path), **options)


def _name_from_path(path: Path) -> str:
    stem = re.sub(r"\.(tar(\.gz|\.zst)?|tgz)$", "", path.name)
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", stem).lstrip(".-_:") or "imported"


def export_image(image, destination, format: str = "oci", compression: str = "gzip",
                 store: Store | None = None) -> Path:
    """Write `image` (an Image or a name) to `destination` in `format`."""
    if not isinstance(image, Image):
        from labkit.images.named import get_image

        image = get_image(image, store or Store())
    destination = Path(destination)
    if format == "oci":
        return export_oci(image, destination, compression)
    if format == "docker":
        return export_docker(image, destination)
    if format == "rootfs":
        return export_rootfs(image, destination)
    raise ImageError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
