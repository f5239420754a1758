"""The guest kernel: Debian's generic kernel package, unpacked once into the cache.

The generic package (what `linux-image-amd64` depends on) ships the virtio, 9p and
overlay modules the guest needs; the cloud kernel lacks 9p.
"""

import hashlib
import lzma
import re
import shutil
import subprocess
import tempfile
import urllib.request
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
        unpack(debs[0], destination)


def unpack(deb: Path, destination: Path) -> None:
    """`dpkg -x` the package into `destination`, which appears only once it is whole."""
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _apt(["dpkg", "-x", str(deb), str(partial)], f"unpack {deb.name}")
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)


def deb_package_name(deb: Path) -> str:
    """The package a .deb holds (`dpkg-deb -f`), which must be a Linux kernel image."""
    name = _apt(["dpkg-deb", "-f", str(deb), "Package"], f"read the package name of {deb}").strip()
    if not re.fullmatch(r"linux-image-[0-9][\w.+-]*", name):
        raise HostError(f"{deb} holds the package {name!r}, not a Linux kernel image (linux-image-VERSION-amd64)")
    return name


def fetch_deb(source: str, sha256: str | None, directory: Path) -> Path:
    """The kernel .deb at `source` (an https URL or a file) in `directory`, its SHA-256
    checked. A URL needs `sha256`: a kernel fetched without it could be anything. For hosts
    without Debian's apt sources (Binder's Ubuntu images)."""
    if source.startswith(("https://", "http://")):
        if not sha256:
            raise HostError(f"refusing to boot a kernel downloaded from {source} without its SHA-256; "
                            "give --sha256 (Debian's Packages index lists it)")
        deb = directory / source.rstrip("/").rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(source, timeout=60) as reply, open(deb, "wb") as out:
                shutil.copyfileobj(reply, out, 1 << 20)
        except OSError as error:
            raise HostError(f"cannot download the kernel package {source}: {error}; if the version is gone "
                            "from the mirror, pin a current one (apt-cache show linux-image-amd64)") from error
    else:
        deb = Path(source)
        if not deb.is_file():
            raise HostError(f"the kernel package {source} does not exist")
    if sha256:
        found = _sha256(deb)
        if found != sha256.strip().lower():
            raise HostError(f"{source} has SHA-256 {found}, not the expected {sha256.strip().lower()}: "
                            "not the package that was pinned (a changed mirror, or a wrong --sha256); nothing was unpacked")
    return deb


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
