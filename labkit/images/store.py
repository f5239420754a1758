"""The image store under LABKIT_HOME: layers stored once by digest, images as small
JSON manifests (ordered layer digests bottom to top, config, history).

    LABKIT_HOME/layers/<hex>/          one layer, overlay form, named by its digest
    LABKIT_HOME/images/<name>.json     one image: layers, config, history
    LABKIT_HOME/build-cache/<key>      build step -> layer digest (see cache.py)
    LABKIT_HOME/tmp/scratch-<pid>-*    work in progress; renamed into place when done
    LABKIT_HOME/containers/<id>/state.json   written by the runtime; its
                                       "image_layers" keep layers from being pruned

Everything is written into a scratch dir first and renamed into place only when it
is complete, so an interrupted import or build leaves the store as it was.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from labkit.errors import BadImageInput, ImageError, ImageNotFound
from labkit.files import open_lock, read_regular, write_atomically
from labkit.home import labkit_home, private_dir

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
SCRATCH_PREFIX = "scratch-"


@dataclass
class ImageConfig:
    """What Docker's image config says about the container to run (OCI image-spec's
    `config`): who runs what, where, with which environment. `cmd` and `entrypoint`
    are None when the image sets none (not the same as an empty list, as in Docker)."""

    env: list = field(default_factory=lambda: [DEFAULT_PATH])
    workdir: str = "/"
    cmd: list | None = field(default_factory=lambda: ["sh"])
    labels: dict = field(default_factory=dict)
    entrypoint: list | None = None
    user: str = ""                              # name or uid[:gid], resolved in the image's /etc/passwd
    exposed_ports: list = field(default_factory=list)   # "80/tcp"
    stop_signal: str = ""
    volumes: list = field(default_factory=list)
    shell: list = field(default_factory=lambda: ["/bin/sh", "-c"])   # Dockerfile SHELL, for later builds
    other: dict = field(default_factory=dict)   # keys labkit does not use (Healthcheck, OnBuild...), kept

    def command(self, command: list | None = None, entrypoint: str | None = None) -> list:
        """The command a container of this image runs, as Docker decides it: ENTRYPOINT
        then CMD; a given command replaces CMD; a given entrypoint ("" for none)
        replaces ENTRYPOINT and drops CMD."""
        if entrypoint is not None:
            return ([entrypoint] if entrypoint else []) + list(command or [])
        return list(self.entrypoint or []) + list(command or self.cmd or [])

    def stop_signal_number(self) -> int:
        """STOPSIGNAL as a number ("SIGQUIT", "QUIT" or "3"); SIGTERM when unset."""
        import signal

        name = self.stop_signal.upper()
        if not name:
            return int(signal.SIGTERM)
        if name.isdigit():
            return int(name)
        try:
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            raise ImageError(f"the image's STOPSIGNAL {self.stop_signal!r} is not a signal name or number") from None

    def copy(self) -> "ImageConfig":
        return ImageConfig.from_dict(json.loads(json.dumps(asdict(self))))

    @classmethod
    def from_dict(cls, data: dict) -> "ImageConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class LayerSource:
    """A layer's blob as it was received (import): exported again byte for byte, so its
    digest and the image's ID survive a round trip through labkit."""

    digest: str             # of the blob as received (compressed or not)
    diff_id: str            # of its uncompressed tar
    media_type: str
    size: int


@dataclass
class Image:
    name: str
    layers: list            # digests, bottom layer first
    config: ImageConfig
    history: list
    store: "Store"
    sources: list = field(default_factory=list)   # a LayerSource or None per layer
    config_blob: str | None = None   # digest of the config as received, for an unchanged imported image

    def source(self, index: int):
        return self.sources[index] if index < len(self.sources) else None

    @property
    def layer_dirs(self) -> list:
        """Layer directories, bottom first (overlay wants them top first: reverse)."""
        return [self.store.layer_dir(digest) for digest in self.layers]

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "config": asdict(self.config),
                "history": list(self.history)}


def _sources_from(data) -> list:
    return [LayerSource(**entry) if entry else None for entry in data or []]


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise BadImageInput(
            f"{name!r} is not a valid image name: use letters, digits, '.', '_', ':' or '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


def validate_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
        raise ImageError(f"{digest!r} is not a layer digest (expected 'sha256:' and 64 hex digits)")
    return digest


MANIFEST_MOST = 16 << 20    # bytes of an image's manifest (a 500-layer image's is under 1 MiB)


class Store:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else labkit_home()
        self.layers_root = self.home / "layers"
        self.images_root = self.home / "images"
        self.tmp_root = self.home / "tmp"
        self.cache_root = self.home / "build-cache"
        self.blobs_root = self.home / "blobs" / "sha256"

    # -- layers -------------------------------------------------------------------

    def layer_dir(self, digest: str) -> Path:
        return self.layers_root / validate_digest(digest).split(":", 1)[1]

    def has_layer(self, digest: str) -> bool:
        """A well-formed digest whose layer is in the store."""
        return bool(DIGEST_PATTERN.fullmatch(digest)) and self.layer_dir(digest).is_dir()

    def layer_digests(self) -> list:
        if not self.layers_root.is_dir():
            return []
        return sorted("sha256:" + p.name for p in self.layers_root.iterdir() if DIGEST_PATTERN.fullmatch("sha256:" + p.name))

    def add_layer(self, directory: Path, digest: str | None = None) -> str:
        """Move a finished layer directory (a scratch dir) into the store; returns its digest.

        `digest` may be given when the caller computed it from exactly this content.
        """
        from labkit.images.layers import layer_digest  # tarfile: not for the runtime's helper

        os.chmod(directory, 0o755)  # the root's mode is not in the tar: make it one value
        digest = digest or layer_digest(directory)
        target = self.layer_dir(digest)
        private_dir(self.layers_root)  # setuid files of containers' making: not for other users
        if target.exists():
            shutil.rmtree(directory)  # same content already stored: layers are shared
            return digest
        try:
            os.rename(directory, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(directory)  # another process stored the same layer meanwhile
        return digest

    # -- blobs as received (import), kept for export ---------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_root / validate_digest(digest).split(":", 1)[1]

    def add_blob(self, path: Path, digest: str) -> None:
        """Move the file `path`, whose content hashes to `digest`, into the store."""
        self.blobs_root.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o644)
        os.replace(path, self.blob_path(digest))

    def blobs_used_by_images(self) -> set:
        used = set()
        for name in self.names():
            try:
                manifest = json.loads(self._image_file(name).read_text())
            except FileNotFoundError:
                continue
            used.update(entry["digest"] for entry in manifest.get("sources") or [] if entry)
            if manifest.get("config_blob"):
                used.add(manifest["config_blob"])
        return used

    def _remove_unused_blobs(self) -> None:
        if not self.blobs_root.is_dir():
            return
        used = self.blobs_used_by_images()
        for entry in self.blobs_root.iterdir():
            if "sha256:" + entry.name not in used:
                entry.unlink(missing_ok=True)

    # -- images -------------------------------------------------------------------

    def _image_file(self, name: str) -> Path:
        return self.images_root / f"{validate_name(name)}.json"

    def names(self) -> list:
        if not self.images_root.is_dir():
            return []
        return sorted(p.name[:-5] for p in self.images_root.iterdir()
                      if p.name.endswith(".json") and NAME_PATTERN.fullmatch(p.name[:-5]))

    def image(self, name: str) -> Image:
        path = self._image_file(name)
        try:
            # bounded, and never a FIFO or a device: the grader reads a submission's store
            text = read_regular(path, MANIFEST_MOST + 1)
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none yet"
            raise ImageNotFound(
                f"no image named {name!r} (images here: {known}); "
                "build or import one, or use the base image 'busybox'"
            ) from None
        except OSError as error:
            raise ImageError(f"image {name!r}: its manifest {path} cannot be read ({error.strerror})") from None
        if len(text) > MANIFEST_MOST:
            raise ImageError(f"image {name!r}: its manifest {path} is over {MANIFEST_MOST >> 20} MiB; "
                             f"remove it (labkit image rm {name})")
        manifest = json.loads(text)
        image = Image(name, manifest["layers"], ImageConfig.from_dict(manifest.get("config", {})),
                      manifest.get("history", []), self, _sources_from(manifest.get("sources")),
                      manifest.get("config_blob"))
        for digest in image.layers:
            if not self.has_layer(digest):
                raise ImageNotFound(
                    f"image {name!r} is damaged: its layer {digest[7:19]} is missing from {self.layers_root}; "
                    f"remove it (labkit image rm {name}) and build or import it again"
                )
        return image

    def save_image(self, name: str, layers: list, config: ImageConfig, history: list,
                   sources: list = (), config_blob: str | None = None) -> Image:
        """`sources` (a LayerSource or None per layer) and `config_blob` name blobs already
        in the store: what an import received, to be exported unchanged."""
        for digest in layers:
            if not self.has_layer(digest):
                raise ImageError(f"cannot save image {name!r}: layer {digest} is not in the store")
        self.images_root.mkdir(parents=True, exist_ok=True)
        manifest = {"name": name, "layers": list(layers), "config": asdict(config), "history": history}
        if any(sources):
            manifest["sources"] = [asdict(source) if source else None for source in sources][:len(layers)]
        if config_blob:
            manifest["config_blob"] = config_blob
        path = self._image_file(name)
        write_atomically(path, json.dumps(manifest, indent=2))  # readers see the old manifest or the new one
        return self.image(name)

    def history_entry(self, step: str, digest: str | None, size: int | None = None) -> dict:
        """`size` (of the layer's file content) may be given by a caller that knows it."""
        from labkit.images.layers import tree_size

        entry = {"created_by": step, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if digest is None:
            entry.update(empty_layer=True, size=0)
        else:
            entry.update(layer=digest, size=tree_size(self.layer_dir(digest)) if size is None else size)
        return entry

    # -- what is in use, and removing what is not -----------------------------------

    def layers_used_by_images(self) -> set:
        used = set()
        for name in self.names():
            try:
                used.update(json.loads(self._image_file(name).read_text())["layers"])
            except FileNotFoundError:
                continue  # removed meanwhile
        return used

    # Which layers containers use is the runtime's knowledge: rm and prune are handed
    # `layers_used_by_containers` (labkit.runtime.client.state.layers_in_use) by their caller and
    # call it under the exclusive lock, so a container starting meanwhile (it holds the
    # shared lock until its state names its layers) is counted.

    def remove_image(self, name: str, *, layers_used_by_containers) -> list:
        """Forget the image; delete its layers that no other image or container uses."""
        with self.lock(exclusive=True):
            path = self._image_file(name)
            if not path.exists():
                self.image(name)  # raises ImageNotFound with the list of images
            layers = json.loads(path.read_text())["layers"]
            path.unlink()
            removed = self._remove_unused(set(layers), layers_used_by_containers())
            self._remove_unused_blobs()
            return removed

    def prune(self, *, layers_used_by_containers) -> list:
        """Delete every layer no image or container uses, stale scratch dirs and dead cache entries."""
        with self.lock(exclusive=True):
            removed = self._remove_unused(set(self.layer_digests()), layers_used_by_containers())
            self._remove_unused_blobs()
            self.sweep_scratch()
            from labkit.images.cache import BuildCache  # cache.py imports this module

            BuildCache(self).forget_missing_layers()
            return removed

    def _remove_unused(self, candidates: set, used_by_containers: set) -> list:
        unused = sorted(candidates - self.layers_used_by_images() - set(used_by_containers))
        for digest in unused:
            directory = self.layer_dir(digest)
            if directory.exists():
                # Rename first so a crash mid-delete never leaves a half layer under its digest.
                doomed = self.scratch_dir()
                os.rename(directory, doomed / "layer")
                shutil.rmtree(doomed)
        return unused

    # -- scratch space and locking ----------------------------------------------------

    def scratch_dir(self) -> Path:
        """A new empty dir inside the store, on the same filesystem as the layers, so a
        finished layer can be renamed into place atomically."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.sweep_scratch()
        import tempfile   # here: its import (random, hashlib's sha512) is not on labkit run's path

        return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=self.tmp_root))

    @contextlib.contextmanager
    def scratch(self):
        """A scratch dir that is removed when the block ends, whether it succeeded or not
        (a layer renamed into the store from it is, of course, kept)."""
        directory = self.scratch_dir()
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def sweep_scratch(self) -> list:
        """Remove scratch dirs whose process is gone (killed mid-import or mid-build)."""
        swept = []
        if not self.tmp_root.is_dir():
            return swept
        for entry in self.tmp_root.iterdir():
            if not entry.name.startswith(SCRATCH_PREFIX):
                continue
            pid = entry.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                swept.append(entry)
        return swept

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False):
        """Writers (import, build, commit) share the lock; rm and prune take it alone,
        so they never delete a layer that a writer is about to reference."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(open_lock(self.home / "store.lock"), "a") as handle:   # 0600 (files.open_lock)
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
