"""An image by its name, the one way every part of labkit looks one up: 'busybox' is
built on first use, any other name must be in the store."""

from labkit.images.busybox import ensure_busybox
from labkit.images.store import Image, Store


def get_image(name: str, store: Store | None = None) -> Image:
    """The image by that name; 'busybox' is built on first use."""
    store = store or Store()
    if name == "busybox" and "busybox" not in store.names():
        return ensure_busybox(store)
    return store.image(name)
