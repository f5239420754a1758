"""`labkit.vm.status()`: can a VM run here, how (KVM or emulation), and what is missing.

Only looks; never installs or boots. `labkit doctor` prints it.
"""

from dataclasses import asdict, dataclass, field

from labkit.errors import ConfigError
from labkit.vm import cache, host
from labkit.vm.accel import choose_acceleration


@dataclass(frozen=True)
class VMStatus:
    can_run: bool
    accel: str            # "kvm", "tcg", or "" when the choice itself failed
    accel_reason: str
    qemu: str | None
    kernel: str | None    # the cached guest kernel's version
    missing: list[str] = field(default_factory=list)  # each: what is missing and what to do
    packages: list[str] = field(default_factory=list)  # the Debian packages `labkit vm setup` would install

    def as_dict(self) -> dict:
        return asdict(self)

    # The names `labkit doctor` reads from each check.
    @property
    def ok(self) -> bool:
        return self.can_run

    @property
    def detail(self) -> str:
        if self.can_run:
            return f"kernel {self.kernel} under {self.accel}: {self.accel_reason}"
        return "; ".join(self.missing)

    @property
    def fix(self) -> str:
        """`labkit vm setup` needs root only for its apt step: the kernel it downloads and
        the initramfs it builds go to the caller's own LABKIT_HOME."""
        if self.can_run:
            return ""
        if not self.packages and host.is_root():
            return "labkit vm setup (downloads a kernel into LABKIT_HOME)"
        if not self.packages:
            return "labkit vm setup, as yourself: it downloads a kernel into your LABKIT_HOME, no root needed"
        packages = " ".join(self.packages)
        if host.is_root():
            return f"labkit vm setup (installs {packages} with apt-get, then downloads a kernel)"
        return (f"only its apt step needs root: sudo apt-get install {packages}; "
                "then, as yourself, labkit vm setup (downloads a kernel into your LABKIT_HOME)")

    def __str__(self):
        if self.can_run:
            lines = [f"VMs can run here: kernel {self.kernel} under {self.accel} ({self.accel_reason})"]
        else:
            lines = ["VMs cannot run here yet:"] + [f"  - {problem}" for problem in self.missing]
            if self.accel:
                lines.append(f"once they can, they will use {self.accel} ({self.accel_reason})")
        return "\n".join(lines)


def status() -> VMStatus:
    missing, packages = [], []
    qemu = host.qemu_binary()
    if qemu is None:
        missing.append(f"{host.QEMU} is not installed (package {host.QEMU_PACKAGES[0]})")
    elif not host.QBOOT.exists():
        missing.append(f"QEMU's qboot firmware {host.QBOOT} is missing (package {host.QEMU_PACKAGES[0]})")
    if qemu is None or not host.QBOOT.exists():
        packages += host.QEMU_PACKAGES
    if host.static_busybox() is None:
        missing.append(f"no static busybox for the guest's initramfs (package {host.BUSYBOX_PACKAGE})")
        packages.append(host.BUSYBOX_PACKAGE)
    kernel = cache.cached_kernel()
    if kernel is None:
        missing.append(f"no guest kernel in {cache.vm_home()}: run `labkit vm setup`")
    try:
        acceleration = choose_acceleration()
        accel, reason = acceleration.name, acceleration.reason
    except ConfigError as error:
        missing.append(str(error))
        accel, reason = "", str(error)
    return VMStatus(
        can_run=not missing, accel=accel, accel_reason=reason, qemu=qemu,
        kernel=kernel.version if kernel else None, missing=missing, packages=packages,
    )
