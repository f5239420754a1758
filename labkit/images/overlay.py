"""The container's root as an overlay: image layers (read-only), the init layer, and
the container's read-write layer."""

from labkit.linux import syscalls


def overlay_options(lower_top_first, upper, work) -> str:
    lower = ":".join(str(path) for path in lower_top_first)
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_overlay(target, lower_top_first, upper, work) -> None:
    """Mount the union at `target`: writes land in `upper`, reads fall through the lowers."""
    syscalls.mount("overlay", target, "overlay", 0, overlay_options(lower_top_first, upper, work))
