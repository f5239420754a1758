"""Choosing how QEMU runs the guest: KVM (hardware) or TCG (software emulation).

Some hosts offer a /dev/kvm that cannot boot a stock kernel: with kvm_pvm loaded
(Alibaba's PVM, used for nested guests in some clouds) QEMU aborts with "failed to
set MSR 0x10a". There we emulate, which is ~2 s slower per boot but works.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError

ACCEL_VARIABLE = "LABKIT_VM_ACCEL"
KVM_DEVICE = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")


@dataclass(frozen=True)
class Acceleration:
    name: str    # "kvm" or "tcg"
    reason: str  # why this one, in words for `labkit doctor`

    def qemu_arguments(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # thread=multi gives each virtual CPU its own host thread.
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def choose_acceleration() -> Acceleration:
    forced = os.environ.get(ACCEL_VARIABLE, "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ConfigError(f"{ACCEL_VARIABLE}={forced!r} is not understood; use kvm or tcg, or unset it")
        return Acceleration(forced, f"forced by {ACCEL_VARIABLE}={forced}")
    problem = kvm_problem()
    if problem is None:
        return Acceleration("kvm", f"{KVM_DEVICE} is usable")
    return Acceleration("tcg", f"software emulation because {problem}")


def kvm_problem():
    """Why KVM cannot be used here, or None when it looks usable."""
    if not KVM_DEVICE.exists():
        return f"{KVM_DEVICE} does not exist (no hardware virtualisation, or the kvm module is not loaded)"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not readable and writable by this user (add yourself to the kvm group)"
    if PVM_MODULE.exists():
        return f"{KVM_DEVICE} is kvm_pvm, which cannot boot a stock kernel"
    return None
