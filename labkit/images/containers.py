"""Images seen from containers the runtime made: commit one, diff one.

The runtime keeps each container in LABKIT_HOME/containers/<id>/ with state.json
(name, image, image_layers) and upper/ (its read-write layer).
"""

from pathlib import Path

from labkit.errors import ImageError
from labkit.images.commit import commit
from labkit.images.diff import diff
from labkit.images.store import Image, ImageConfig, Store


def find_container(reference: str, store: Store | None = None) -> dict:
    """The state of the container with that name, id or unique id prefix."""
    store = store or Store()
    states = store.container_records()
    exact = [s for s in states if reference in (s.get("name"), s.get("id"))]
    matches = exact or [s for s in states if str(s.get("id", "")).startswith(reference)]
    if len(matches) != 1:
        known = ", ".join(s.get("name", s.get("id", "?")) for s in states) or "none"
        why = "no container" if not matches else f"{len(matches)} containers"
        raise ImageError(f"{why} matching {reference!r} (containers: {known}); give a name or a longer id")
    return matches[0]


def container_base_image(state: dict, store: Store) -> Image:
    """The image the container runs, as recorded when it started (even if the name
    has since been rebuilt or removed)."""
    layers = list(state.get("image_layers") or [])
    name = state.get("image") or "unknown"
    if name in store.names():
        image = store.image(name)
        if image.layers == layers:
            return image
    return Image(name, layers, ImageConfig(), [], store)


def commit_container(reference: str, image_name: str, message: str = "", store: Store | None = None) -> Image:
    store = store or Store()
    state = find_container(reference, store)
    upper = Path(state["dir"]) / "upper"
    base = container_base_image(state, store)
    return commit(upper, base, image_name, store=store,
                  message=message or f"commit of container {state.get('name', state.get('id'))}")


def container_diff(reference: str, store: Store | None = None):
    store = store or Store()
    state = find_container(reference, store)
    return diff(Path(state["dir"]) / "upper", container_base_image(state, store), store)


def changes(reference: str, layer: int | None = None, store: Store | None = None):
    """What a layer of the image `reference` (the top one by default), or else the
    container `reference`, changed."""
    store = store or Store()
    if reference in store.names():
        image = store.image(reference)
        index = len(image.layers) - 1 if layer is None else layer
        if not 0 <= index < len(image.layers):
            raise ImageError(f"image {image.name!r} has layers 0 to {len(image.layers) - 1}, not {index}")
        return diff(image.layers[index], image.layers[:index], store)
    if layer is not None:
        raise ImageError(f"no image named {reference!r}; --layer applies to images only")
    return container_diff(reference, store)
