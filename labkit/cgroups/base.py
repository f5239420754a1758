"""The one interface every cgroup backend offers (v1 and v2 alike).

Units are normalised here: bytes for memory and I/O, a fraction of one core for CPU,
a count for pids, seconds for time.
"""

import errno
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from labkit.errors import HostError
from labkit.linux.processes import kill_each

CPU_PERIOD_US = 100_000
# How long kill() keeps killing what a cgroup holds (forks in flight) before it gives up.
KILL_TIMEOUT = 1.0


@dataclass
class Limits:
    memory: int | None = None        # bytes; swap is disabled where the host allows
    cpus: float | None = None        # fraction of one core: 0.5 = half a core, 2 = two cores
    pids: int | None = None          # most tasks at once
    io_read_bps: dict = field(default_factory=dict)   # "major:minor" -> bytes/s
    io_write_bps: dict = field(default_factory=dict)
    devices: list | None = None      # device rules ("c 1:3 rwm"); None: no device control

    def needs(self) -> set:
        """The limit kinds set, by the names used in error messages and by `controllers`."""
        kinds = set()
        if self.memory is not None:
            kinds.add("memory")
        if self.cpus is not None:
            kinds.add("cpu")
        if self.pids is not None:
            kinds.add("pids")
        if self.io_read_bps or self.io_write_bps:
            kinds.add("io")
        if self.devices is not None:
            kinds.add("devices")
        return kinds


@dataclass
class Stats:
    memory_current: int | None = None
    memory_peak: int | None = None
    cpu_seconds: float | None = None
    throttled_periods: int | None = None
    periods: int | None = None      # CPU quota periods the kernel counted (nr_periods; 0 without a quota)
    throttled_seconds: float | None = None
    pids_current: int | None = None
    oom_kills: int = 0
    pids_limit_hits: int = 0        # forks refused because pids.max was reached


def cpu_quota_us(cpus: float, period_us: int = CPU_PERIOD_US) -> int:
    # The kernel refuses quotas below 1 ms.
    return max(1000, round(cpus * period_us))


def read_text(path) -> str:
    # Raw reads: a Python text file costs fstat, ioctl and lseek calls and a decoder
    # for each file, and the helper reads seven of them at every container's exit.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def gone(error: OSError) -> bool:
    """Did a read fail because the cgroup was removed? Before the open: ENOENT; between
    the open and the read (another process's rmdir, e.g. the sweep of another LABKIT_HOME
    or a helper's teardown): ENODEV."""
    return error.errno in (errno.ENOENT, errno.ENODEV)


def read_int(path) -> int | None:
    """The number in a one-value file; None for "max" or a cgroup that is gone."""
    try:
        text = read_text(path).strip()
    except OSError as error:
        if gone(error):
            return None
        raise
    return None if text == "max" else int(text)


def read_keyed(path) -> dict:
    """Files of `key value` lines (memory.events, cpu.stat, pids.events, ...)."""
    values = {}
    try:
        text = read_text(path)
    except OSError as error:
        if gone(error):
            return values  # a cgroup that is gone has nothing to count
        raise
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def write(path, value) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise OSError(error.errno, f"write {value!r} to {path}: {os.strerror(error.errno or 0)}") from None


def remove_dir(path, deadline: float) -> None:
    """rmdir a cgroup, retrying while the kernel still counts dying tasks in it."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise OSError(error.errno, f"remove cgroup {path}: {os.strerror(error.errno)}") from None
            time.sleep(0.002)


def remove_parent_if_empty(directory) -> None:
    """The shared `labkit` parent goes with its last child (rmdir fails while it has
    others: that is the test). A creator racing with this retries (see `retry_if_parent_went`)."""
    try:
        os.rmdir(os.path.dirname(directory))
    except OSError:
        pass


def retry_if_parent_went(make, attempts=5):
    """Run `make()`; if the labkit parent vanished under it (removed with another owner's
    last container), make it again."""
    for attempt in range(attempts):
        try:
            return make()
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


class Cgroup(ABC):
    """One container's cgroup: limits, membership, statistics, kill and delete."""

    version: int

    def __init__(self, name: str):
        self.name = name  # path below the hierarchy root, e.g. "labkit/9f2c..."

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    @abstractmethod
    def procs_files(self) -> list:
        """The `cgroup.procs` files a process writes `0` into to join this cgroup."""

    @abstractmethod
    def set_limits(self, limits: Limits) -> None: ...

    @abstractmethod
    def stats(self) -> Stats: ...

    @abstractmethod
    def pids(self) -> list: ...

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def device_control(self) -> list:
        """What decides which devices the processes inside may open, as the kernel holds
        it: on v1 the lines of the cgroup's `devices.list`; on v2 (no such file) the
        BPF_PROG_TYPE_CGROUP_DEVICE programs attached to it. Empty: no device control of
        its own (a v1 cgroup without rules is not made in the devices hierarchy at all)."""

    @abstractmethod
    def _remove_dirs(self, deadline: float) -> None: ...

    def add_process(self, pid: int) -> None:
        for procs in self.procs_files():
            write(procs, pid)

    def oom_kills(self) -> int:
        return self.stats().oom_kills

    def kill(self) -> None:
        """SIGKILL every process inside, until none is left (new forks included)."""
        kill_each(self.pids, timeout=KILL_TIMEOUT)

    def delete(self, timeout: float = 5.0) -> None:
        """Kill what is inside, wait for it to go, remove the directories. Races tolerated."""
        deadline = time.monotonic() + timeout
        if self.exists():
            self.kill()
        self._remove_dirs(deadline)


class Hierarchy(ABC):
    """The host's cgroup setup: where it is mounted and which controllers it offers."""

    version: int
    parent = "labkit"
    delegation = None   # rootless: what an ordinary user was handed (labkit.cgroups.delegation)

    @property
    @abstractmethod
    def controllers(self) -> set:
        """Limit kinds this host can enforce: a subset of {memory, cpu, pids, io, devices}."""

    @abstractmethod
    def open(self, name: str) -> Cgroup: ...

    @abstractmethod
    def _make(self, name: str, limits: Limits) -> Cgroup: ...

    @abstractmethod
    def children(self) -> list:
        """Names of the cgroups below the labkit parent."""

    def check(self, limits: Limits) -> None:
        missing = limits.needs() - self.controllers
        if missing:
            kinds = ", ".join(sorted(missing))
            raise HostError(
                f"the {kinds} limit needs the {kinds} cgroup controller, which this host "
                f"(cgroup v{self.version}) does not offer; run `labkit doctor` to see what it has"
            )

    def create(self, leaf: str, limits: Limits | None = None) -> Cgroup:
        """Make `labkit/<leaf>` with these limits; nothing is left if a limit is refused."""
        limits = limits or Limits()
        self.check(limits)
        cgroup = self._make(f"{self.parent}/{leaf}", limits)
        try:
            cgroup.set_limits(limits)
        except BaseException:
            cgroup.delete()
            raise
        return cgroup
