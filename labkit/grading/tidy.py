"""The last cell of a lab puts the host back: it removes the lab's containers and images.
What is not there is simply not removed; the grader removes a submission's images the
same way."""

import contextlib
import io

from labkit.errors import LabkitError


def remove_images(names) -> list:
    """Remove these images if they exist (their layers too, unless something else uses them)."""
    from labkit.images import Store
    from labkit.runtime.client.state import layers_in_use

    store, removed = Store(), []
    for name in names:
        if name in store.names():
            try:
                store.remove_image(name, layers_used_by_containers=layers_in_use)
            except (LabkitError, OSError):
                continue  # removed meanwhile, or a layer in use: labkit image prune takes it later
            removed.append(name)
    return removed


def tidy(containers=(), images=()) -> None:
    """Remove these containers (of this kernel) and images (from the store), if they are there."""
    from labkit.runtime import get

    with contextlib.redirect_stderr(io.StringIO()):
        for name in containers:
            try:
                get(name).remove()
            except LabkitError:
                pass  # not running in this kernel: nothing to remove
        remove_images(images)
