"""Probes of what a container may use and what happened to it: limits read back from its
cgroup, OOM kills, CPU share and throttling, a held fork bomb. The limit files differ
between cgroup v1 and v2; `limits_of` reads either into the normalised units of
labkit.cgroups (bytes, a fraction of one core, a count)."""

import os
import time

from labkit.cgroups.base import read_int, read_text
from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import finished_container, poll, running_process
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
        seen = limits_of(running_process(target).cgroup)["memory"]
        return Observation(within(seen, want, tolerance),
                           "no memory limit" if seen is None else f"memory limit {format_bytes(seen)}")
    return look


def cpu_limit(target, expected: float, tolerance=0.02):
    """The container's CPU quota is `expected` cores ± tolerance."""
    def look():
        seen = limits_of(running_process(target).cgroup)["cpus"]
        return Observation(within(seen, float(expected), tolerance),
                           "no CPU limit" if seen is None else f"CPU limit {seen:g} cores")
    return look


def pids_limit(target, expected: int):
    """The container may have at most `expected` processes at once."""
    def look():
        seen = limits_of(running_process(target).cgroup)["pids"]
        return Observation(seen == int(expected), "no pids limit" if seen is None else f"pids limit {seen}")
    return look


def finished_ok(target):
    """A container ran and was not OOM-killed (nor stopped by its pids limit)."""
    def look():
        seen = finished_container(target)
        if not seen.ran:
            return Observation(False, f"{seen.label} never ran")
        fine = not seen.oom_kills
        words = "; ".join(seen.evidence) or ("ran to its end" if fine else "OOM-killed")
        return Observation(fine, f"{seen.label}: {words}" if fine else f"{seen.label}: {seen.oom_kills} OOM kill(s)")
    return look


def oom_killed(target, deadline=5.0):
    """The kernel's OOM killer killed a process in the container's cgroup (the kernel's
    log or its counters, seen while it ran; for a running container, polled)."""
    def look():
        return poll(lambda: _events(target, "oom_kills", "OOM kill(s) in its cgroup"), deadline)
    return look


def fork_bomb_held(target, deadline=5.0):
    """Forks were refused because the pids limit was reached (pids.events max)."""
    def look():
        return poll(lambda: _events(target, "pids_limit_hits", "fork(s) refused by the pids limit"), deadline)
    return look


def throttled(target, deadline=5.0):
    """The CPU quota throttled the container at least once (cpu.stat nr_throttled). On a
    host so busy that a running container waited for a CPU most of the time (its run-queue
    delay, as cpu_share measures it), the quota could not bite: its quota is judged instead."""
    def look():
        seen = poll(lambda: _events(target, "throttled_periods", "period(s) throttled"), deadline)
        if seen.passed:
            return seen
        try:
            container = running_process(target)
        except ProbeFailed:
            return seen
        crowded = _cpu_window(container, 1.0)[2]
        quota = limits_of(container.cgroup)["cpus"]
        if crowded and quota is not None:
            return Observation(True, f"the host was too busy for its quota ({quota:g} cores) to bite: it waited "
                               "for a CPU most of the time")
        return seen
    return look


def _events(target, counter, words) -> Observation:
    seen = finished_container(target)
    if not seen.ran:
        return Observation(False, f"{seen.label} never ran")
    count = getattr(seen, counter)
    return Observation(count > 0, f"{seen.label}: {count} {words}")


def cpu_share(target, expected: float, tolerance=0.10, window=1.0, deadline=15.0):
    """The CPU the container achieves is `expected` cores ± tolerance (relative).

    A running container is measured over windows of `window` seconds (CPU time from its
    cgroup over wall time) until one is within tolerance or `deadline` passes. A window
    in which the container waited for a CPU (its run-queue delay in /proc/PID/schedstat,
    a quarter of the window or more) measures the busy host, not the quota, and does not
    count; if every window was like that, the quota itself is judged (cpu.max or
    cfs_quota_us) and the observation says so.

    The windows that count are also judged together: one short window is a coarse sample of
    a quota given in 100 ms periods, and in an emulated guest (the VM kernel, TCG) its CPU
    time scatters around the quota by more than ±10 % (measured for 0.25 cores: 0.196 to
    0.285 in 1 s windows, 0.247 over the same 15.6 s taken together). A loop without a
    quota, or with another one, is off in every window, so in their sum too."""
    def look():
        container = running_process(target)
        end = time.monotonic() + deadline
        windows = []
        used_clear = elapsed_clear = 0.0
        while True:
            used, elapsed, crowded = _cpu_window(container, window)
            seen = _share_seen(used / elapsed, expected, tolerance)
            if seen.passed and not crowded:
                return seen
            if not crowded:
                used_clear, elapsed_clear = used_clear + used, elapsed_clear + elapsed
                together = _share_seen(used_clear / elapsed_clear, expected, tolerance, elapsed_clear)
                if together.passed and elapsed_clear >= 3 * window:
                    return together
            windows.append(used / elapsed)
            if time.monotonic() >= end:
                break
        if elapsed_clear:
            return _share_seen(used_clear / elapsed_clear, expected, tolerance, elapsed_clear)
        quota = limits_of(container.cgroup)["cpus"]
        return Observation(within(quota, expected, tolerance),
                           f"the host was too busy to measure (achieved {windows[-1]:.2f} cores, waiting for "
                           "a CPU the rest of the time); its quota is " + ("none" if quota is None else f"{quota:g} cores"))
    return look


def _cpu_window(container, window) -> tuple:
    """(CPU seconds used, wall seconds, whether it mostly waited for a CPU) over `window` seconds."""
    cgroup = container.cgroup
    before, waited_before = cgroup.stats().cpu_seconds or 0.0, _run_times(cgroup)[1]
    start = time.monotonic()
    time.sleep(window)
    used = (cgroup.stats().cpu_seconds or 0.0) - before
    elapsed = time.monotonic() - start
    waited = _run_times(cgroup)[1] - waited_before
    return used, elapsed, waited >= 0.25 * elapsed


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


def _share_seen(share, expected, tolerance, over=None):
    return Observation(within(share, expected, tolerance),
                       f"achieved {share:.2f} cores" + ("" if over is None else f" over {over:.0f} s"))
