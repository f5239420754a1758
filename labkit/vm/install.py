"""`labkit vm setup`: install QEMU if missing, fetch a kernel, build the initramfs.

Idempotent: a second call only checks, and rebuilds the initramfs when a labkit
upgrade changed what runs inside the guest.
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from labkit.errors import HostError
from labkit.vm import cache, host, initramfs, kernel


def setup(force=False, say=print, kernel_deb=None, sha256=None) -> cache.CachedKernel:
    """Make `labkit.vm.run` work here; `say` gets one line per step taken. `kernel_deb`
    (an https URL or a .deb file, checked against `sha256`) replaces apt's
    linux-image-amd64, for hosts whose apt has no Debian kernel (Ubuntu, Binder)."""
    install_missing_packages(say)
    cached = None if force else cache.cached_kernel()
    if cached is None:
        cached = fetch_kernel(say, kernel_deb, sha256)
    else:
        say(f"kernel {cached.version} already in {cached.unpacked}")
    if force or not cached.initramfs_is_current():
        cached = build_initramfs(cached, say)
    return cached


def install_missing_packages(say=print) -> None:
    missing = []
    if host.qemu_binary() is None or not host.QBOOT.exists():
        missing += host.QEMU_PACKAGES
    if host.static_busybox() is None:
        missing.append(host.BUSYBOX_PACKAGE)
    if not missing:
        return
    if not host.is_root():
        raise HostError(
            f"labkit vm needs {', '.join(missing)}, which are not installed; "
            f"run `sudo apt-get install {' '.join(missing)}` (or `sudo labkit vm setup`)"
        )
    if shutil.which("apt-get") is None:
        raise HostError(f"labkit vm needs {', '.join(missing)} and this host has no apt-get; install them by hand")
    say(f"installing {' '.join(missing)} with apt-get (about 80 MiB)")
    _run_apt_install(missing)


def fetch_kernel(say=print, kernel_deb=None, sha256=None) -> cache.CachedKernel:
    cache.vm_home().mkdir(parents=True, exist_ok=True)
    if kernel_deb is None:
        package = kernel.kernel_package_name()
        unpacked = cache.vm_home() / package
        say(f"downloading and unpacking {package} into {unpacked} (about 400 MiB)")
        kernel.download_and_unpack(package, unpacked)
    else:
        with tempfile.TemporaryDirectory(prefix="labkit-vm-setup-") as download_dir:
            say(f"fetching {kernel_deb}" + (" and checking its SHA-256" if sha256 else ""))
            deb = kernel.fetch_deb(kernel_deb, sha256, Path(download_dir))
            package = kernel.deb_package_name(deb)
            unpacked = cache.vm_home() / package
            say(f"unpacking {package} into {unpacked} (about 400 MiB)")
            kernel.unpack(deb, unpacked)
    vmlinuz = kernel.find_vmlinuz(unpacked)
    version = kernel.kernel_version(vmlinuz)
    _index_modules(unpacked, version, say)
    vmlinux = cache.vm_home() / "vmlinux"
    say(f"decompressing {vmlinuz.name} into {vmlinux} (saves ~4 s per emulated boot)")
    kernel.extract_vmlinux(vmlinuz, vmlinux)
    return cache.CachedKernel(
        package=package,
        version=version,
        unpacked=unpacked,
        vmlinux=vmlinux,
        initramfs=cache.vm_home() / "initramfs.cpio",
        busybox=host.static_busybox(),
        guest_scripts="",
    )


def build_initramfs(cached: cache.CachedKernel, say=print) -> cache.CachedKernel:
    busybox = host.static_busybox()
    if busybox is None:
        raise HostError("no static busybox found for the guest's initramfs; run `labkit vm setup`")
    say(f"building {cached.initramfs}")
    data = initramfs.build_base(busybox, cached.modules_dir)
    partial = cached.initramfs.with_suffix(".partial")
    partial.write_bytes(data)
    partial.rename(cached.initramfs)
    built = dataclasses.replace(cached, busybox=busybox, guest_scripts=cache.guest_scripts_fingerprint())
    cache.save(built)
    return built


def _index_modules(unpacked, version, say):
    # Debian's postinst runs depmod; we unpack without it, so run it ourselves for
    # modprobe inside the guest. The initramfs itself does not need it.
    if shutil.which("depmod") is None:
        say("depmod (kmod) is missing: modprobe inside the VM will not find modules")
        return
    subprocess.run(["depmod", "-b", str(unpacked), version], check=True)


def _run_apt_install(packages):
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    finished = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        env=environment, capture_output=True, text=True,
    )
    if finished.returncode != 0:
        raise HostError(
            f"apt-get install {' '.join(packages)} failed (exit {finished.returncode}); "
            f"try `apt-get update` first:\n{finished.stderr.strip()[-2000:]}"
        )
    if host.qemu_binary() is None or not host.QBOOT.exists():
        raise HostError(f"installed {' '.join(packages)} but {host.QEMU} or {host.QBOOT} is still missing")
