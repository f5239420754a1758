"""Kernel modules the guest's /init loads before it can mount its root.

Debian's package ships no modules.dep (its postinst runs depmod), so dependencies are
read from each module's own `.modinfo` section, the same `depends=` field depmod reads.
"""

import lzma
from pathlib import Path

from labkit.errors import HostError

# virtio_pci finds the 9p device, 9pnet_virtio carries 9P over it, 9p mounts the
# host's root, overlay puts a writable tmpfs over that read-only root.
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# loop: Debian builds it as a module and nothing in the guest loads it (the guest has no
# udev and its modules dir no modules.dep), so without it no loop device can be made there
# and the cgroup v2 lane never tries a block device against device control.
GUEST_MODULES = ROOT_MODULES + ("loop",)


def modules_in_load_order(modules_dir: Path, wanted=GUEST_MODULES) -> list[Path]:
    """The `.ko` files for `wanted` and everything they depend on, dependencies first."""
    by_name = _modules_by_name(modules_dir)
    builtin = _builtin_names(modules_dir)
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name):
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in by_name:
            raise HostError(
                f"kernel module {name} is neither in {modules_dir} nor built in; "
                "the guest needs it (is this Debian's generic kernel?)"
            )
        for dependency in _depends(module_bytes(by_name[name])):
            visit(dependency)
        ordered.append(by_name[name])

    for name in wanted:
        visit(name)
    return ordered


def module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".ko"):
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def module_bytes(path: Path) -> bytes:
    """The module as insmod wants it; busybox insmod cannot read compressed modules."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def _modules_by_name(modules_dir: Path) -> dict[str, Path]:
    found = {}
    for pattern in ("*.ko", "*.ko.xz"):
        for path in (modules_dir / "kernel").rglob(pattern):
            found[module_name(path)] = path
    return found


def _builtin_names(modules_dir: Path) -> set[str]:
    listing = modules_dir / "modules.builtin"
    if not listing.exists():
        return set()
    return {module_name(Path(line.strip())) for line in listing.read_text().splitlines() if line.strip()}


def _depends(module: bytes) -> list[str]:
    # .modinfo is a run of NUL-terminated key=value strings; `depends=` is comma-separated.
    marker = b"\0depends="
    start = module.find(marker)
    if start == -1:
        return []
    start += len(marker)
    value = module[start:module.index(b"\0", start)].decode()
    return [name.replace("-", "_") for name in value.split(",") if name]
