"""cgroup v1 (legacy, or hybrid as on the machines labkit grew up on): one hierarchy per
controller under /sys/fs/cgroup/<controller>, and a directory per container in each."""

import os

from labkit.cgroups.base import (
    CPU_PERIOD_US, Cgroup, Hierarchy, Limits, Stats, cpu_quota_us, gone, read_int, read_keyed,
    read_text, remove_dir, remove_parent_if_empty, retry_if_parent_went, write,
)

# limit kind -> the v1 controllers it needs (cpuacct counts CPU time; cpu enforces quotas)
KIND_CONTROLLERS = {"memory": ("memory",), "cpu": ("cpu", "cpuacct"), "pids": ("pids",), "io": ("blkio",),
                    "devices": ("devices",)}
# what every container gets, so that stats work even without limits
ALWAYS = ("memory", "cpu", "cpuacct", "pids")


def controller_mounts(mountinfo="/proc/self/mountinfo") -> dict:
    """{controller: mount point} for every cgroup v1 hierarchy mounted here."""
    mounts = {}
    with open(mountinfo) as table:
        for line in table:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            if fstype != "cgroup":
                continue
            point = left.split()[4]
            for option in options.split(","):
                if option in ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer", "cpuset", "devices"):
                    mounts.setdefault(option, point)
    return mounts


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, name: str, dirs: dict):
        super().__init__(name)
        self.dirs = dirs  # controller -> directory

    def _file(self, controller, name):
        return os.path.join(self.dirs[controller], name)

    def procs_files(self) -> list:
        # One write per distinct directory: cpu and cpuacct may share a hierarchy.
        return sorted({self._file(c, "cgroup.procs") for c in self.dirs})

    def mount_table(self) -> list:
        """[(directory name, mount options)] to mount this cgroup's hierarchies inside a
        cgroup namespace, e.g. [("cpu,cpuacct", "cpu,cpuacct"), ("memory", "memory")]."""
        by_point = {}
        for controller, directory in self.dirs.items():
            point = directory[: -len(self.name) - 1]
            by_point.setdefault(point, []).append(controller)
        return sorted((os.path.basename(point), ",".join(sorted(c))) for point, c in by_point.items())

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs.values())

    def set_limits(self, limits: Limits) -> None:
        if limits.memory is not None:
            self._set_memory(limits.memory)
        if limits.cpus is not None:
            write(self._file("cpu", "cpu.cfs_period_us"), CPU_PERIOD_US)
            write(self._file("cpu", "cpu.cfs_quota_us"), cpu_quota_us(limits.cpus))
        if limits.pids is not None:
            write(self._file("pids", "pids.max"), limits.pids)
        for device, rate in limits.io_read_bps.items():
            write(self._file("blkio", "blkio.throttle.read_bps_device"), f"{device} {rate}")
        for device, rate in limits.io_write_bps.items():
            write(self._file("blkio", "blkio.throttle.write_bps_device"), f"{device} {rate}")
        if limits.devices is not None:
            self._allow_only_devices(limits.devices)

    def _allow_only_devices(self, rules) -> None:
        """The v1 devices controller: deny everything, then allow each rule. A new cgroup
        starts with its parent's list (here `a *:* rwm`), hence the deny first."""
        from labkit.cgroups.devices import parse_rules

        write(self._file("devices", "devices.deny"), "a")
        for rule in parse_rules(rules):
            write(self._file("devices", "devices.allow"), str(rule))

    def allow_every_device(self) -> None:
        """Undo `_allow_only_devices` (a pool slot made with the default list, serving a
        `--privileged` container): "a" in devices.allow is the parent's `a *:* rwm` again."""
        write(self._file("devices", "devices.allow"), "a")

    def device_control(self) -> list:
        if "devices" not in self.dirs:
            return []
        return [line for line in read_text(self._file("devices", "devices.list")).splitlines() if line]

    def _set_memory(self, limit: int) -> None:
        write(self._file("memory", "memory.limit_in_bytes"), limit)
        # memory+swap equal to memory means no swap; the file exists only with swap accounting.
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            write(memsw, limit)
        else:
            write(self._file("memory", "memory.swappiness"), 0)

    def stats(self) -> Stats:
        stats = Stats()
        if "memory" in self.dirs:
            stats.memory_current = read_int(self._file("memory", "memory.usage_in_bytes"))
            stats.memory_peak = read_int(self._file("memory", "memory.max_usage_in_bytes"))
            stats.oom_kills = read_keyed(self._file("memory", "memory.oom_control")).get("oom_kill", 0)
        if "cpuacct" in self.dirs:
            usage = read_int(self._file("cpuacct", "cpuacct.usage"))
            stats.cpu_seconds = None if usage is None else usage / 1e9
        if "cpu" in self.dirs:
            cpu = read_keyed(self._file("cpu", "cpu.stat"))
            stats.throttled_periods = cpu.get("nr_throttled")
            stats.periods = cpu.get("nr_periods")
            if "throttled_time" in cpu:
                stats.throttled_seconds = cpu["throttled_time"] / 1e9
        if "pids" in self.dirs:
            stats.pids_current = read_int(self._file("pids", "pids.current"))
            stats.pids_limit_hits = read_keyed(self._file("pids", "pids.events")).get("max", 0)
        return stats

    def pids(self) -> list:
        found = set()
        for procs in self.procs_files():
            try:
                found.update(int(p) for p in read_text(procs).split())
            except OSError as error:
                if not gone(error):
                    raise
        return sorted(found)

    def _remove_dirs(self, deadline: float) -> None:
        for directory in sorted(set(self.dirs.values())):
            remove_dir(directory, deadline)
            remove_parent_if_empty(directory)


class HierarchyV1(Hierarchy):
    version = 1

    def __init__(self, mounts: dict | None = None):
        self.mounts = controller_mounts() if mounts is None else mounts

    @property
    def controllers(self) -> set:
        return {kind for kind, needed in KIND_CONTROLLERS.items() if all(c in self.mounts for c in needed)}

    def _dirs(self, name: str, kinds=None) -> dict:
        wanted = set(ALWAYS) if kinds is None else set(kinds)
        return {c: os.path.join(self.mounts[c], name) for c in sorted(wanted) if c in self.mounts}

    def open(self, name: str) -> CgroupV1:
        dirs = {c: d for c, d in self._dirs(name, self.mounts).items() if os.path.isdir(d)}
        return CgroupV1(name, dirs)

    def _make(self, name: str, limits: Limits) -> CgroupV1:
        kinds = set(ALWAYS) | ({"blkio"} if "io" in limits.needs() else set())
        kinds |= {"devices"} if limits.devices is not None else set()
        dirs = self._dirs(name, kinds)
        made = {}
        try:
            for controller, directory in dirs.items():
                retry_if_parent_went(lambda: os.makedirs(directory, exist_ok=True))
                made[controller] = directory
        except BaseException:
            CgroupV1(name, made).delete()
            raise
        return CgroupV1(name, made)

    def children(self) -> list:
        names = set()
        for point in set(self.mounts.values()):
            parent = os.path.join(point, self.parent)
            if os.path.isdir(parent):
                names.update(f"{self.parent}/{entry}" for entry in os.listdir(parent)
                             if os.path.isdir(os.path.join(parent, entry)))
        return sorted(names)
