"""cgroup v2 (unified): one tree, controllers enabled for children through
`cgroup.subtree_control`, one directory per container."""

import os
import time

from labkit.cgroups.base import (
    CPU_PERIOD_US, Cgroup, Hierarchy, Limits, Stats, cpu_quota_us, gone, read_int, read_keyed,
    read_text, remove_dir, remove_parent_if_empty, retry_if_parent_went, write,
)
from labkit.errors import HostError

KIND_CONTROLLERS = {"memory": "memory", "cpu": "cpu", "pids": "pids", "io": "io"}


def unified_mount(mountinfo="/proc/self/mountinfo") -> str | None:
    """Where cgroup2 is mounted (/sys/fs/cgroup on a v2 host, .../unified on a hybrid one)."""
    points = []
    with open(mountinfo) as table:
        for line in table:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                points.append(left.split()[4])
    if "/sys/fs/cgroup" in points:
        return "/sys/fs/cgroup"
    return points[0] if points else None


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path

    def _file(self, name):
        return os.path.join(self.path, name)

    def procs_files(self) -> list:
        return [self._file("cgroup.procs")]

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def set_limits(self, limits: Limits) -> None:
        if limits.memory is not None:
            write(self._file("memory.max"), limits.memory)
            if os.path.exists(self._file("memory.swap.max")):
                write(self._file("memory.swap.max"), 0)
        if limits.cpus is not None:
            write(self._file("cpu.max"), f"{cpu_quota_us(limits.cpus)} {CPU_PERIOD_US}")
        if limits.pids is not None:
            write(self._file("pids.max"), limits.pids)
        devices = set(limits.io_read_bps) | set(limits.io_write_bps)
        for device in sorted(devices):
            rules = [device]
            if device in limits.io_read_bps:
                rules.append(f"rbps={limits.io_read_bps[device]}")
            if device in limits.io_write_bps:
                rules.append(f"wbps={limits.io_write_bps[device]}")
            write(self._file("io.max"), " ".join(rules))
        if limits.devices is not None:
            # v2 has no devices.allow: a BPF program attached to this cgroup decides.
            from labkit.cgroups import device_filter

            device_filter.attach(self.path, limits.devices)

    def device_control(self) -> list:
        from labkit.cgroups import device_filter

        count = device_filter.attached_programs(self.path)
        return [f"BPF_PROG_TYPE_CGROUP_DEVICE program attached ({count})"] if count else []

    def stats(self) -> Stats:
        cpu = read_keyed(self._file("cpu.stat"))
        usage = cpu.get("usage_usec")
        throttled = cpu.get("throttled_usec")
        return Stats(
            memory_current=read_int(self._file("memory.current")),
            memory_peak=read_int(self._file("memory.peak")),
            cpu_seconds=None if usage is None else usage / 1e6,
            throttled_periods=cpu.get("nr_throttled"),
            periods=cpu.get("nr_periods"),
            throttled_seconds=None if throttled is None else throttled / 1e6,
            pids_current=read_int(self._file("pids.current")),
            oom_kills=read_keyed(self._file("memory.events")).get("oom_kill", 0),
            pids_limit_hits=read_keyed(self._file("pids.events")).get("max", 0),
        )

    def events(self) -> dict:
        """cgroup.events: `populated` (anything inside?) and `frozen`."""
        return read_keyed(self._file("cgroup.events"))

    def pids(self) -> list:
        try:
            return sorted(int(p) for p in read_text(self._file("cgroup.procs")).split())
        except OSError as error:
            if not gone(error):
                raise
            return []

    def kill(self) -> None:
        # cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks in flight included.
        if os.path.exists(self._file("cgroup.kill")):
            try:
                write(self._file("cgroup.kill"), 1)
            except FileNotFoundError:
                return
            deadline = time.monotonic() + 5
            while self.events().get("populated") and time.monotonic() < deadline:
                time.sleep(0.001)
            return
        super().kill()

    def _remove_dirs(self, deadline: float) -> None:
        remove_dir(self.path, deadline)
        remove_parent_if_empty(self.path)


class HierarchyV2(Hierarchy):
    version = 2

    def __init__(self, root: str | None = None):
        self.root = root or unified_mount()
        if not self.root:
            raise HostError("no cgroup2 filesystem is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup`")

    def _available(self) -> set:
        try:
            return set(read_text(os.path.join(self.root, "cgroup.controllers")).split())
        except FileNotFoundError:
            return set()

    @property
    def controllers(self) -> set:
        available = self._available()
        # Device control on v2 is a BPF program, not a controller: every cgroup has it.
        return {kind for kind, controller in KIND_CONTROLLERS.items() if controller in available} | {"devices"}

    def open(self, name: str) -> CgroupV2:
        return CgroupV2(name, os.path.join(self.root, name))

    def _enable_for_children(self, directory: str, wanted: set) -> None:
        control = os.path.join(directory, "cgroup.subtree_control")
        enabled = set(read_text(control).split())
        missing = sorted(wanted - enabled)
        if not missing:
            return
        try:
            write(control, " ".join(f"+{c}" for c in missing))
        except OSError as error:
            raise HostError(
                f"cannot enable the {', '.join(missing)} controller(s) in {directory}: {error.strerror}. "
                "A cgroup with processes in it cannot hand controllers to children (the "
                f"'no internal processes' rule): move the processes listed in {directory}/cgroup.procs "
                "into a child cgroup of it, then try again"
            ) from None

    def _make(self, name: str, limits: Limits) -> CgroupV2:
        wanted = {KIND_CONTROLLERS[k] for k in self.controllers if k in KIND_CONTROLLERS}
        parent = os.path.join(self.root, self.parent)
        path = os.path.join(self.root, name)

        def make():
            os.makedirs(parent, exist_ok=True)
            if wanted:
                self._enable_for_children(self.root, wanted)
                self._enable_for_children(parent, wanted)
            os.mkdir(path)

        retry_if_parent_went(make)
        return CgroupV2(name, path)

    def children(self) -> list:
        parent = os.path.join(self.root, self.parent)
        if not os.path.isdir(parent):
            return []
        return sorted(f"{self.parent}/{e}" for e in os.listdir(parent) if os.path.isdir(os.path.join(parent, e)))


