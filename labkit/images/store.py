"""The image store under LABKIT_HOME: layers stored once by digest, images as small
JSON manifests (ordered layer digests bottom to top, config, history)."""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import ImageNotFound
from labkit.home import labkit_home
from labkit.images.layers import layer_digest, tree_size


@dataclass
class ImageConfig:
    env: list = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    workdir: str = "/"
    cmd: list = field(default_factory=lambda: ["sh"])
    labels: dict = field(default_factory=dict)


@dataclass
class Image:
    name: str
    layers: list            # digests, bottom layer first
    config: ImageConfig
    history: list
    store: "Store"

    @property
    def layer_dirs(self) -> list:
        """Layer directories, bottom first (overlay wants them top first: reverse)."""
        return [self.store.layer_dir(digest) for digest in self.layers]


class Store:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else labkit_home()
        self.layers_root = self.home / "layers"
        self.images_root = self.home / "images"
        self.tmp_root = self.home / "tmp"

    def layer_dir(self, digest: str) -> Path:
        return self.layers_root / digest.split(":", 1)[-1]

    def _image_file(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ImageNotFound(f"{name!r} is not a valid image name")
        return self.images_root / f"{name}.json"

    def names(self) -> list:
        if not self.images_root.is_dir():
            return []
        return sorted(p.stem for p in self.images_root.glob("*.json"))

    def image(self, name: str) -> Image:
        path = self._image_file(name)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none yet"
            raise ImageNotFound(
                f"no image named {name!r} (images here: {known}); "
                "build or import one, or use the base image 'busybox'"
            ) from None
        image = Image(name, manifest["layers"], ImageConfig(**manifest.get("config", {})),
                      manifest.get("history", []), self)
        for directory in image.layer_dirs:
            if not directory.is_dir():
                raise ImageNotFound(f"image {name!r} is damaged: layer {directory.name[:12]} is missing; import it again")
        return image

    def scratch_dir(self) -> Path:
        """A temp dir inside the store, so a finished layer can be renamed into place."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp_root))

    def add_layer(self, directory: Path) -> str:
        """Move a finished layer directory into the store; returns its digest."""
        digest = layer_digest(directory)
        target = self.layer_dir(digest)
        self.layers_root.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(directory)  # same content already stored: layers are shared
        else:
            os.rename(directory, target)
        return digest

    def save_image(self, name: str, layers: list, config: ImageConfig, history: list) -> Image:
        self.images_root.mkdir(parents=True, exist_ok=True)
        manifest = {"name": name, "layers": layers, "config": config.__dict__, "history": history}
        path = self._image_file(name)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(manifest, indent=2))
        os.rename(temporary, path)  # atomic: readers see the old manifest or the new one
        return self.image(name)

    def history_entry(self, step: str, digest: str) -> dict:
        return {"created_by": step, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "layer": digest, "size": tree_size(self.layer_dir(digest))}
