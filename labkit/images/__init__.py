"""Images: read-only layers plus config; the base image 'busybox' needs no network."""

from labkit.images.busybox import ensure_busybox
from labkit.images.store import Image, ImageConfig, Store

__all__ = ["Image", "ImageConfig", "Store", "ensure_busybox", "get_image"]


def get_image(name: str, store: Store | None = None) -> Image:
    """The image by that name; 'busybox' is built on first use."""
    store = store or Store()
    if name == "busybox" and "busybox" not in store.names():
        return ensure_busybox(store)
    return store.image(name)
