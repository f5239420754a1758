"""The last cell of a lab puts the host back: it removes the lab's containers and images.
Like a check cell it never raises: what is not there is simply not removed."""

import contextlib
import io


def tidy(containers=(), images=()) -> None:
    """Remove these containers (of this kernel) and images (from the store), if they are there."""
    from labkit.images import Store
    from labkit.runtime import get

    with contextlib.redirect_stderr(io.StringIO()):
        for name in containers:
            try:
                get(name).remove()
            except Exception:  # noqa: BLE001 — not running: nothing to remove
                pass
        for name in images:
            try:
                store = Store()
                if name in store.names():
                    store.remove_image(name)
            except Exception:  # noqa: BLE001 — a lab's leftovers must not fail its last cell
                pass
