"""The guest's initramfs: a base archive built once at setup, plus a tiny per-run one.

The kernel unpacks concatenated cpio archives in order, so each run appends an
archive holding only its command, token and shared directory to a copy of the base.
"""

from pathlib import Path

from labkit.vm import guest
from labkit.vm.cpio import CpioArchive
from labkit.vm.modules import GUEST_MODULES, module_bytes, module_name, modules_in_load_order


def build_base(busybox: Path, modules_dir: Path, extra_modules=(), init=guest.STAGE1_INIT) -> bytes:
    """busybox, the guest's modules and `extra_modules` (decompressed, numbered in load
    order), /init (stage 1's script, `init`)."""
    archive = CpioArchive()
    for directory in ("bin", "dev", "lib", "lib/modules", "labkit"):
        archive.directory(directory)
    # Without /dev/console in the initramfs the kernel starts /init with no stdio.
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for number, module in enumerate(modules_in_load_order(modules_dir, (*GUEST_MODULES, *extra_modules))):
        archive.file(f"lib/modules/{number:02d}-{module_name(module)}.ko", module_bytes(module))
    archive.file("init", init.encode(), mode=0o755)
    archive.file("labkit/stage2", guest.STAGE2.encode())
    archive.file("labkit/modules_dir", str(modules_dir).encode())
    return bytes(archive)


def build_run(command, cwd, environment, token, rw_dir=None) -> bytes:
    archive = CpioArchive()
    archive.directory("labkit")
    archive.file("labkit/command", guest.command_script(command, cwd, environment).encode())
    archive.file("labkit/token", token.encode())
    archive.file("labkit/rw_dir", str(rw_dir or "").encode())
    return bytes(archive)
