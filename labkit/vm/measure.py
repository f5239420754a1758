"""`measure_boot()`: the VM row of the "container vs VM" experiment.

Boots a VM that runs `true` and reports the time until the command started and the
host memory the QEMU process used at its peak, labelled with the acceleration, since
emulation (TCG) and KVM differ by seconds.
"""

from dataclasses import asdict, dataclass

from labkit.vm import cache
from labkit.vm.machine import run


@dataclass(frozen=True)
class BootMeasurement:
    boot_seconds: float       # QEMU start until the guest starts the command
    total_seconds: float      # QEMU start until QEMU exited (boot + `true` + power-off)
    qemu_peak_rss_bytes: int
    accel: str
    kernel: str
    memory: str
    cpus: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure_boot(memory="1g", cpus=2) -> BootMeasurement:
    result = run(["true"], memory=memory, cpus=cpus, cwd="/")
    return BootMeasurement(
        boot_seconds=result.boot_seconds,
        total_seconds=result.total_seconds,
        qemu_peak_rss_bytes=result.qemu_peak_rss_bytes,
        accel=result.accel,
        kernel=cache.cached_kernel().version,
        memory=str(memory),
        cpus=cpus,
    )
