"""What `labkit vm setup` leaves under LABKIT_HOME/vm, and how a run finds it.

    vm/<kernel package>/   the package unpacked by dpkg -x (modules stay usable in the guest)
    vm/vmlinux             the ELF kernel, decompressed once from the package's vmlinuz
    vm/initramfs.cpio      busybox, the root-mounting modules and the guest's /init
    vm/kernel.json         written last: its presence means setup finished
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.home import labkit_home
from labkit.vm import guest
from labkit.vm.modules import GUEST_MODULES


def vm_home() -> Path:
    return labkit_home() / "vm"


def manifest_path() -> Path:
    return vm_home() / "kernel.json"


@dataclass(frozen=True)
class CachedKernel:
    package: str
    version: str
    unpacked: Path
    vmlinux: Path
    initramfs: Path
    busybox: Path
    guest_scripts: str  # fingerprint of the /init the cached initramfs was built with

    @property
    def modules_dir(self) -> Path:
        return self.unpacked / "lib" / "modules" / self.version

    def initramfs_is_current(self) -> bool:
        return self.initramfs.exists() and self.guest_scripts == guest_scripts_fingerprint()


def cached_kernel():
    """The kernel setup left behind, or None when setup has not finished."""
    try:
        fields = json.loads(manifest_path().read_text())
        kernel = CachedKernel(**{key: _as_path(key, value) for key, value in fields.items()})
    except (OSError, ValueError, TypeError):
        return None
    if not (kernel.vmlinux.exists() and kernel.modules_dir.is_dir()):
        return None
    return kernel


def save(kernel: CachedKernel) -> None:
    fields = {key: str(value) for key, value in asdict(kernel).items()}
    partial = manifest_path().with_suffix(".partial")
    partial.write_text(json.dumps(fields, indent=2) + "\n")
    partial.rename(manifest_path())


def guest_scripts_fingerprint() -> str:
    """Changes when a labkit upgrade changes what runs in the guest, so runs rebuild."""
    text = guest.STAGE1_INIT + guest.STAGE2 + " ".join(GUEST_MODULES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as_path(key, value):
    return Path(value) if key in ("unpacked", "vmlinux", "initramfs", "busybox") else value
