"""Images: read-only layers plus config; the base image 'busybox' needs no network.

    get_image("busybox")                      an Image: .name, .layers, .layer_dirs, .config
    build(dockerfile_text, "web", context_dir, run_step=..., build_args={})  one layer per RUN/COPY/ADD
    commit(upper_dir, base_image, "mine")     a container's changes as a new image
    import_image(path) / export_image(...)    OCI layouts, docker save archives, rootfs tarballs
"""

from labkit.images.busybox import ensure_busybox
from labkit.images.commit import commit
from labkit.images.diff import diff
from labkit.images.named import get_image
from labkit.images.store import Image, ImageConfig, Store

__all__ = ["Image", "ImageConfig", "Store", "build", "commit", "diff", "ensure_busybox", "export_image",
           "get_image", "import_image"]


_LAZY = {"build": "labkit.images.builder", "import_image": "labkit.images.transfer",
         "export_image": "labkit.images.transfer"}


def __getattr__(name):
    # Loaded on first use: the runtime's helper imports this package for overlay.py
    # and should not pay for build, import and export machinery it never calls.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit.images' has no attribute {name!r}")
