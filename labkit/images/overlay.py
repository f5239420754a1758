"""The container's root as an overlay: image layers (read-only), the init layer, and
the container's read-write layer.

mount(2) copies at most one page (4 KiB) of option text, and each layer's absolute
path is ~100 bytes, so about 40 layers fit. Beyond that, `mount_overlay` makes a
short-lived directory of symlinks named 0, 1, 2, ... (one per layer), changes into
it and passes those short relative names: the kernel resolves lowerdir paths (and
follows the symlinks) once, at mount time, so the links can go right after. 128
layers then take ~400 bytes. This is what Docker's overlay2 driver does with its
`l/` directory; it needs a chdir, which is fine because the runtime calls this in a
forked, single-threaded child inside the container's own mount namespace.
"""

import os
import shutil

from labkit.errors import ImageError
from labkit.linux import syscalls

MAX_OPTIONS = os.sysconf("SC_PAGE_SIZE") - 1  # the kernel wants a NUL within the page
MAX_LAYERS = 500  # overlay's own limit on lower layers
MAX_IMAGE_LAYERS = MAX_LAYERS - 1   # a container stacks its init layer on the image's
# Commit copies the upper dir as it is: it must hold whole files and plain
# directories, never pointers back into the lowers (redirects, metadata-only copies).
FIXED_OPTIONS = "redirect_dir=off,index=off,metacopy=off"


def overlay_options(lower_top_first, upper, work, extra="") -> str:
    fixed = FIXED_OPTIONS.replace("redirect_dir=off,", "") if "redirect_dir" in extra else FIXED_OPTIONS
    return f"{layer_options(lower_top_first, upper, work)},{fixed}" + (f",{extra}" if extra else "")


def layer_options(lower_top_first, upper, work) -> str:
    """lowerdir, upperdir and workdir, as overlay and fuse-overlayfs both read them."""
    for path in [*lower_top_first, upper, work]:
        if any(char in str(path) for char in ",:\\"):
            raise ImageError(f"overlay cannot take the path {path!s}: it contains ',', ':' or '\\'; "
                             "set LABKIT_HOME to a path without them")
    lower = ":".join(str(path) for path in lower_top_first)
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_overlay(target, lower_top_first, upper, work, in_user_namespace=False, volatile=False) -> None:
    """Mount the union at `target`: writes land in `upper`, reads fall through the lowers.

    Inside a user namespace overlay may not set its trusted.* xattrs (they need
    CAP_SYS_ADMIN on the host); `userxattr` makes it use user.overlay.* instead.
    `volatile`: for an upper nothing must survive a crash of (a container removed when it
    ends): overlay then never syncs it, neither on fsync nor at unmount (Linux 5.10)."""
    # (and then it refuses to follow redirects, so they must not even be followed)
    extra = ",".join(option for option, wanted in (("userxattr,redirect_dir=nofollow", in_user_namespace),
                                                    ("volatile", volatile)) if wanted)
    lower_top_first = [os.fspath(path) for path in lower_top_first]
    if not lower_top_first:
        raise ImageError("an overlay needs at least one lower layer")
    if len(lower_top_first) > MAX_LAYERS:
        raise ImageError(f"overlay stacks at most {MAX_LAYERS} layers, this image has {len(lower_top_first)}; "
                         "squash it (export as a rootfs and import it again)")
    options = overlay_options(lower_top_first, upper, work, extra)
    if len(options) <= MAX_OPTIONS:
        syscalls.mount("overlay", target, "overlay", 0, options)
        return
    _mount_through_short_names(target, lower_top_first, os.path.abspath(upper), os.path.abspath(work), extra)


def _mount_through_short_names(target, lower_top_first, upper, work, extra="") -> None:
    import tempfile   # here, for images of many layers only: not on every container's path

    target = os.path.abspath(target)
    links = tempfile.mkdtemp(prefix=".lowers-", dir=os.path.dirname(work))
    previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, layer in enumerate(lower_top_first):
            os.symlink(os.path.abspath(layer), os.path.join(links, str(index)))
        os.chdir(links)
        short = [str(index) for index in range(len(lower_top_first))]
        options = overlay_options(short, upper, work, extra)
        if len(options) > MAX_OPTIONS:
            raise ImageError(f"overlay options are {len(options)} bytes even with short names (limit "
                             f"{MAX_OPTIONS}); shorten LABKIT_HOME or squash the image")
        syscalls.mount("overlay", target, "overlay", 0, options)
    finally:
        os.fchdir(previous)
        os.close(previous)
        shutil.rmtree(links, ignore_errors=True)
