"""Probes of what a container may use and what happened to it: limits read back from its
cgroup, OOM kills, CPU share and throttling, a held fork bomb. The limit files differ
between cgroup v1 and v2; `limits_of` reads either into the normalised units of
labkit.cgroups (bytes, a fraction of one core, a count)."""

import os
import time

from labkit.cgroups.base import read_int, read_text
from labkit.grading.checks import Observation
from labkit.grading.targets import finished_result, is_result, poll, running_container
from labkit.units import format_bytes, parse_bytes

V1_NO_MEMORY_LIMIT = 1 << 62   # v1 reports "no limit" as a huge page-rounded number


def limits_of(cgroup) -> dict:
    """{"memory": bytes|None, "cpus": float|None, "pids": int|None} as the kernel has them."""
    if cgroup.version == 2:
        return _limits_v2(cgroup.path)
    return _limits_v1(cgroup.dirs)


def _limits_v2(path) -> dict:
    memory = read_int(os.path.join(path, "memory.max"))
    cpus = None
    try:
        quota, period = read_text(os.path.join(path, "cpu.max")).split()
        if quota != "max":
            cpus = int(quota) / int(period)
    except FileNotFoundError:
        pass
    return {"memory": memory, "cpus": cpus, "pids": read_int(os.path.join(path, "pids.max"))}


def _limits_v1(dirs: dict) -> dict:
    memory = cpus = pids = None
    if "memory" in dirs:
        memory = read_int(os.path.join(dirs["memory"], "memory.limit_in_bytes"))
        if memory is not None and memory >= V1_NO_MEMORY_LIMIT:
            memory = None
    if "cpu" in dirs:
        quota = read_int(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"))
        period = read_int(os.path.join(dirs["cpu"], "cpu.cfs_period_us"))
        if quota is not None and quota > 0 and period:
            cpus = quota / period
    if "pids" in dirs:
        pids = read_int(os.path.join(dirs["pids"], "pids.max"))
    return {"memory": memory, "cpus": cpus, "pids": pids}


def within(seen, expected, tolerance) -> bool:
    return seen is not None and abs(seen - expected) <= tolerance * expected


def memory_limit(target, expected, tolerance=0.02):
    """The container's cgroup limits memory to `expected` bytes (or "64m") ± tolerance."""
    want = parse_bytes(expected)

    def look():
        seen = limits_of(running_container(target).cgroup)["memory"]
        return Observation(within(seen, want, tolerance),
                           "no memory limit" if seen is None else f"memory limit {format_bytes(seen)}")
    return look


def cpu_limit(target, expected: float, tolerance=0.02):
    """The container's CPU quota is `expected` cores ± tolerance."""
    def look():
        seen = limits_of(running_container(target).cgroup)["cpus"]
        return Observation(within(seen, float(expected), tolerance),
                           "no CPU limit" if seen is None else f"CPU limit {seen:g} cores")
    return look


def pids_limit(target, expected: int):
    """The container may have at most `expected` processes at once."""
    def look():
        seen = limits_of(running_container(target).cgroup)["pids"]
        return Observation(seen == int(expected), "no pids limit" if seen is None else f"pids limit {seen}")
    return look


def finished_ok(target):
    """A finished container (a Result) exited 0 and was not killed."""
    def look():
        result = finished_result(target)
        return Observation(result.ok, result.cause)
    return look


def oom_killed(target, deadline=5.0):
    """The kernel's OOM killer killed a process in the container's cgroup (a Result's
    cgroup counters at exit, or a running container's, polled)."""
    def look():
        if is_result(target):
            result = finished_result(target)
            return Observation(result.oom_killed, result.cause)
        container = running_container(target)
        return poll(lambda: _oom_seen(container), deadline)
    return look


def _oom_seen(container):
    kills = container.cgroup.stats().oom_kills
    return Observation(kills > 0, f"{kills} OOM kill(s) in its cgroup")


def fork_bomb_held(target, deadline=5.0):
    """Forks were refused because the pids limit was reached (pids.events max)."""
    def look():
        if is_result(target):
            result = finished_result(target)
            hits = result.stats.get("pids_limit_hits") or 0
            return Observation(hits > 0, f"{'some' if hits else 'no'} forks refused by the pids limit; {result.cause}")
        container = running_container(target)

        def seen():
            hits = container.cgroup.stats().pids_limit_hits
            return Observation(hits > 0, f"{'some' if hits else 'no'} forks refused by the pids limit")
        return poll(seen, deadline)
    return look


def throttled(target, deadline=5.0):
    """The CPU quota throttled the container at least once (cpu.stat nr_throttled)."""
    def look():
        if is_result(target):
            periods = finished_result(target).stats.get("throttled_periods") or 0
            return Observation(periods > 0, f"{'throttled' if periods else 'never throttled'}")
        container = running_container(target)

        def seen():
            periods = container.cgroup.stats().throttled_periods or 0
            return Observation(periods > 0, f"{'throttled' if periods else 'never throttled'}")
        return poll(seen, deadline)
    return look


def cpu_share(target, expected: float, tolerance=0.10, window=1.0, deadline=15.0):
    """The CPU the container achieves is `expected` cores ± tolerance (relative).

    A running container is measured over windows of `window` seconds (CPU time from its
    cgroup over wall time) until one is within tolerance or `deadline` passes. A window
    in which the container waited for a CPU (its run-queue delay in /proc/PID/schedstat,
    a quarter of the window or more) measures the busy host, not the quota, and does not
    count; if every window was like that, the quota itself is judged (cpu.max or
    cfs_quota_us) and the observation says so. A Result is judged by CPU time over its duration."""
    def look():
        if is_result(target):
            result = finished_result(target)
            if not result.cpu_seconds or not result.duration:
                return Observation(False, "it used no measurable CPU")
            return _share_seen(result.cpu_seconds / result.duration, expected, tolerance)
        container = running_container(target)
        end = time.monotonic() + deadline
        windows = []
        while True:
            share, crowded = _cpu_window(container, window)
            seen = _share_seen(share, expected, tolerance)
            if seen.passed and not crowded:
                return seen
            windows.append((share, crowded, seen))
            if time.monotonic() >= end:
                break
        above = [seen for share, _, seen in windows if share > expected * (1 + tolerance)]
        if above:
            return above[-1]
        clear = [seen for _, crowded, seen in windows if not crowded]
        if clear:
            return clear[-1]
        quota = limits_of(container.cgroup)["cpus"]
        return Observation(within(quota, expected, tolerance),
                           f"the host was too busy to measure (achieved {windows[-1][0]:.2f} cores, waiting for "
                           "a CPU the rest of the time); its quota is " + ("none" if quota is None else f"{quota:g} cores"))
    return look


def _cpu_window(container, window) -> tuple:
    """(cores achieved, whether it mostly waited for a CPU) over `window` seconds."""
    cgroup = container.cgroup
    before, waited_before = cgroup.stats().cpu_seconds or 0.0, _run_times(cgroup)[1]
    start = time.monotonic()
    time.sleep(window)
    used = (cgroup.stats().cpu_seconds or 0.0) - before
    elapsed = time.monotonic() - start
    waited = _run_times(cgroup)[1] - waited_before
    return used / elapsed, waited >= 0.25 * elapsed


def _run_times(cgroup) -> tuple:
    """Seconds the cgroup's processes ran and waited on a run queue (/proc/PID/schedstat)."""
    running = waiting = 0
    for pid in cgroup.pids():
        try:
            with open(f"/proc/{pid}/schedstat") as handle:
                on_cpu, delay, _ = handle.read().split()
        except (FileNotFoundError, ValueError):
            continue
        running += int(on_cpu)
        waiting += int(delay)
    return running / 1e9, waiting / 1e9


def _share_seen(share, expected, tolerance):
    return Observation(within(share, expected, tolerance), f"achieved {share:.2f} cores")
