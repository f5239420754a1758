"""The offline base image: one layer holding the static busybox binary and its applets."""

import os
import shutil
import subprocess
from pathlib import Path

from labkit.errors import HostError
from labkit.images.store import ImageConfig, Store

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox-static")

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}
DIRECTORIES = ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "var", "usr/bin", "usr/sbin", "sbin")


def find_static_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.isfile(candidate) and _is_static(candidate):
            return Path(candidate)
    raise HostError(
        "the base image needs a statically linked busybox and none was found; "
        "install it with `apt-get install busybox-static`"
    )


def _is_static(path) -> bool:
    with open(path, "rb") as binary:
        head = binary.read(1 << 16)
    # A dynamic ELF names its interpreter (PT_INTERP: /lib64/ld-linux...).
    return head.startswith(b"\x7fELF") and b"/ld-linux" not in head and b"ld-musl" not in head


def applets(busybox: Path) -> list:
    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    return sorted(line.strip() for line in listing.stdout.splitlines() if line.strip())


def build_layer(root: Path, busybox: Path) -> None:
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in applets(busybox):
        link = root / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    for relative, text in ETC_FILES.items():
        (root / relative).write_text(text)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)


def ensure_busybox(store: Store | None = None):
    """The image 'busybox', built once from the host's static busybox (no network)."""
    store = store or Store()
    if "busybox" in store.names():
        return store.image("busybox")
    busybox = find_static_busybox()
    scratch = store.scratch_dir()
    try:
        build_layer(scratch, busybox)
        digest = store.add_layer(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    history = [store.history_entry(f"labkit: busybox {busybox} with its applets", digest)]
    return store.save_image("busybox", [digest], ImageConfig(), history)
