"""The guest kernel: Debian's generic kernel package, unpacked once into the cache.

The generic package (what `linux-image-amd64` depends on) ships the virtio, 9p and
overlay modules the guest needs; the cloud kernel lacks 9p.
"""

import lzma
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from labkit.errors import HostError

# Debian's meta-package, whose one dependency names the current generic kernel.
KERNEL_METAPACKAGE = "linux-image-amd64"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"


def kernel_package_name() -> str:
    """`linux-image-6.1.0-…-amd64`: the package `linux-image-amd64` depends on."""
    output = _apt(["apt-cache", "depends", KERNEL_METAPACKAGE], "look up the kernel package")
    for line in output.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise HostError(
        f"apt-cache does not say which kernel {KERNEL_METAPACKAGE} depends on; "
        "run `apt-get update` and try `labkit vm setup` again"
    )


def download_and_unpack(package: str, destination: Path) -> None:
    """`apt-get download` the package into a temp dir and `dpkg -x` it to `destination`."""
    with tempfile.TemporaryDirectory(prefix="labkit-vm-setup-") as download_dir:
        # apt drops to user _apt for downloads, which cannot write a root-owned temp
        # dir; downloading as root here only avoids a confusing warning.
        _apt(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            f"download {package}",
            cwd=download_dir,
        )
        debs = list(Path(download_dir).glob("*.deb"))
        if len(debs) != 1:
            raise HostError(f"apt-get download {package} left {len(debs)} .deb files, expected one")
        partial = destination.with_name(destination.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _apt(["dpkg", "-x", str(debs[0]), str(partial)], f"unpack {debs[0].name}")
        shutil.rmtree(destination, ignore_errors=True)
        partial.rename(destination)


def find_vmlinuz(unpacked: Path) -> Path:
    candidates = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if not candidates:
        raise HostError(f"no boot/vmlinuz-* in {unpacked}; remove it and run `labkit vm setup` again")
    return candidates[-1]


def kernel_version(vmlinuz: Path) -> str:
    return vmlinuz.name.removeprefix("vmlinuz-")


def extract_vmlinux(vmlinuz: Path, vmlinux: Path) -> None:
    """Write the ELF kernel packed inside the xz-compressed `vmlinuz`.

    Under emulation the kernel's own decompressor takes ~4 s of every boot; QEMU boots
    the ELF directly (through its PVH entry point), so we decompress once, here.
    """
    packed = vmlinuz.read_bytes()
    start = packed.find(_XZ_MAGIC)
    while start != -1:
        elf = _try_xz(packed[start:])
        if elf is not None and elf.startswith(_ELF_MAGIC):
            partial = vmlinux.with_name(vmlinux.name + ".partial")
            partial.write_bytes(elf)
            partial.rename(vmlinux)
            return
        start = packed.find(_XZ_MAGIC, start + 1)
    raise HostError(
        f"found no xz-compressed ELF kernel inside {vmlinuz}; "
        "labkit vm expects Debian's xz-compressed amd64 kernel"
    )


def _try_xz(data: bytes):
    try:
        # A decompressor object stops at the end of the xz stream and ignores what
        # follows (the rest of the bzImage), where lzma.decompress would fail.
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def _apt(argv, doing, cwd=None) -> str:
    if shutil.which(argv[0]) is None:
        raise HostError(f"cannot {doing}: {argv[0]} is not installed (labkit vm setup needs a Debian-like host)")
    finished = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if finished.returncode != 0:
        raise HostError(
            f"cannot {doing}: `{' '.join(argv)}` failed with exit code {finished.returncode}:\n"
            f"{finished.stderr.strip() or finished.stdout.strip()}"
        )
    return finished.stdout
