"""Images seen from containers the runtime made: commit one, diff one.

A container is given as the runtime's record of it (labkit.runtime.client.state.find_container:
name, id, image, image_layers and upper, its read-write layer); images never read the
runtime's files themselves.
"""

from pathlib import Path

from labkit.errors import ImageError
from labkit.images.commit import commit
from labkit.images.diff import diff
from labkit.images.store import Image, ImageConfig, Store


def container_base_image(container: dict, store: Store) -> Image:
    """The image the container runs, as recorded when it started (even if the name
    has since been rebuilt or removed)."""
    layers = list(container.get("image_layers") or [])
    name = container.get("image") or "unknown"
    if name in store.names():
        image = store.image(name)
        if image.layers == layers:
            return image
    return Image(name, layers, ImageConfig(), [], store)


def commit_container(container: dict, image_name: str, message: str = "", store: Store | None = None) -> Image:
    store = store or Store()
    base = container_base_image(container, store)
    return commit(Path(container["upper"]), base, image_name, store=store,
                  message=message or f"commit of container {container.get('name', container.get('id'))}",
                  container=container)


def container_diff(container: dict, store: Store | None = None):
    store = store or Store()
    return diff(Path(container["upper"]), container_base_image(container, store), store)


def changes(reference: str, layer: int | None = None, store: Store | None = None, *, find_container):
    """What a layer of the image `reference` (the top one by default), or else the
    container `reference` (looked up with `find_container`, the runtime's), changed."""
    store = store or Store()
    if reference in store.names():
        image = store.image(reference)
        index = len(image.layers) - 1 if layer is None else layer
        if not 0 <= index < len(image.layers):
            raise ImageError(f"image {image.name!r} has layers 0 to {len(image.layers) - 1}, not {index}")
        return diff(image.layers[index], image.layers[:index], store)
    if layer is not None:
        raise ImageError(f"no image named {reference!r}; --layer applies to images only")
    return container_diff(find_container(reference), store)
