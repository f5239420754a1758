"""A small VM on a real cgroup v2 kernel: `setup()`, `run()`, `status()`, `measure_boot()`.

QEMU boots Debian's kernel on the host's own root (read-only, with a tmpfs overlay),
so whatever is installed on the host (Python, the labkit venv) runs inside too.
Used to test the cgroup v2 backend on cgroup v1 hosts, and as the VM row of the
"container vs VM" experiment.
"""

from labkit.vm.install import setup
from labkit.vm.machine import VMResult, VMTimeout, run
from labkit.vm.measure import BootMeasurement, measure_boot
from labkit.vm.status import VMStatus, status

__all__ = ["setup", "run", "status", "measure_boot", "VMResult", "VMTimeout", "VMStatus", "BootMeasurement"]
