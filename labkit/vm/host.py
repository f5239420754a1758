"""What the host must provide to boot a VM: QEMU, its qboot firmware, a static busybox."""

import os
import shutil
import struct
from pathlib import Path

QEMU = "qemu-system-x86_64"
# qboot skips SeaBIOS's device scan and menus: a few hundred ms less per boot.
QBOOT = Path("/usr/share/qemu/qboot.rom")
QEMU_PACKAGES = ("qemu-system-x86", "kmod")
BUSYBOX_PACKAGE = "busybox-static"
_PT_INTERP = 3


def qemu_binary():
    return shutil.which(QEMU)


def static_busybox():
    """A busybox that runs without a dynamic loader (the initramfs has none), or None."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and os.path.exists(candidate) and is_static_executable(Path(candidate)):
            return Path(candidate).resolve()
    return None


def is_static_executable(path: Path) -> bool:
    """True when the ELF file asks for no program interpreter (PT_INTERP)."""
    with open(path, "rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        program_headers_at, = struct.unpack_from("<Q", header, 0x20)
        entry_size, entry_count = struct.unpack_from("<HH", header, 0x36)
        elf.seek(program_headers_at)
        table = elf.read(entry_size * entry_count)
    kinds = (struct.unpack_from("<I", table, i * entry_size)[0] for i in range(entry_count))
    return _PT_INTERP not in kinds


def is_root() -> bool:
    return os.geteuid() == 0
