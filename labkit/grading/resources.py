"""Probes of what a container may use and what happened to it: limits read back from its
cgroup, OOM kills, CPU share and throttling, a held fork bomb. The limit files differ
between cgroup v1 and v2; `limits_of` reads either into the normalised units of
labkit.cgroups (bytes, a fraction of one core, a count)."""

import os
import time
from dataclasses import dataclass

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


def memory_limit_at_most(target, most):
    """The process's cgroup limits memory, to at most `most` bytes (or "64m"): a limit the
    student derives, judged as a bound (the program must also live: `finished_ok`)."""
    ceiling = parse_bytes(most)

    def look():
        process = running_process(target)
        seen = limits_of(process.cgroup)["memory"]
        where = f"{process.label} in cgroup /{process.cgroup.name}"
        return Observation(seen is not None and seen <= ceiling,
                           f"{where}: " + ("no memory limit" if seen is None else f"memory limit {format_bytes(seen)}"))
    return look


def lives_with_memory(target, held, most):
    """The process runs holding at least `held` bytes (VmRSS: it is the program, not a
    stand-in), in a cgroup whose memory limit is at most `most`, with no OOM kill there."""
    need, ceiling = parse_bytes(held), parse_bytes(most)

    def look():
        process = running_process(target)
        try:
            with open(f"/proc/{process.pid}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            raise ProbeFailed(f"no process {process.pid} is running") from None
        if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
            raise ProbeFailed(f"{process.label} has ended")
        resident = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        limit, stats = limits_of(process.cgroup)["memory"], process.cgroup.stats()
        fine = resident >= need and limit is not None and limit <= ceiling and not stats.oom_kills
        return Observation(fine, f"{process.label} holds {format_bytes(resident)} in cgroup /{process.cgroup.name}: "
                           + ("no memory limit" if limit is None else f"memory limit {format_bytes(limit)}")
                           + f", {stats.oom_kills} OOM kill(s)")
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
    """The CPU quota throttled the container at least once (cpu.stat nr_throttled), as the
    grader saw it while the cells ran or in one more window it measures now. A running
    container with a quota that was not throttled while it waited for a CPU most of the time
    (a busy host) is not measured: "busy host, run again" (no quota is never excused)."""
    def look():
        seen = poll(lambda: _events(target, "throttled_periods", "period(s) throttled"), deadline)
        if seen.passed:
            return seen
        try:
            container = running_process(target)
        except ProbeFailed:
            return seen
        if limits_of(container.cgroup)["cpus"] is None:
            return seen
        window = _cpu_window(container, 1.0)
        if window.throttled:
            return Observation(True, f"{container.label}: throttled in {window.throttled} of "
                               f"{window.periods} periods")
        if window.contended:
            return Observation(False, f"busy host, run again: {seen.observed}, but {window.words()}", retry=True)
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
    cgroup over wall time) until one can be trusted or `deadline` passes. A window can be
    trusted when the share cannot be the busy host's doing: the container used more than
    allowed (contention only ever takes CPU away), or it hit its quota in all but
    `tolerance` of its periods (so it got what the quota gives, however long it waited for
    it, and a correct quota cannot measure short by more than the tolerance), or it hardly
    waited for a CPU except while throttled (its run-queue delay from /proc/PID/schedstat
    less the throttled time from cpu.stat). Otherwise the host took the CPU the measurement
    needs: if no window could be trusted, the check says "busy host, run again" and gives no
    points, never a pass.

    The trusted windows are also judged together (3 windows' worth, or all there were at the
    deadline): one short window is a coarse sample of a quota given in 100 ms periods, and in
    an emulated guest (the VM kernel, TCG) it scatters by more than ±10 % (0.196 to 0.285 in
    1 s windows for 0.25 cores, 0.247 over the same 15.6 s together). A loop without a quota,
    or with another one, is off in every window, so in their sum too."""
    def look():
        container = running_process(target)
        end = time.monotonic() + deadline
        used = seconds = 0.0        # the trusted windows, judged together too
        while True:
            measured = _cpu_window(container, window)
            if measured.above(expected * (1 + tolerance)):
                return _share_seen(measured.low, expected, tolerance)
            if measured.trusted(tolerance):
                seen = _share_seen(measured.share, expected, tolerance)
                if seen.passed:
                    return seen
                used, seconds = used + measured.share * measured.seconds, seconds + measured.seconds
                if seconds >= 3 * window:
                    return _share_seen(used / seconds, expected, tolerance, seconds)
            if time.monotonic() >= end:
                if seconds:
                    return _share_seen(used / seconds, expected, tolerance, seconds)
                return Observation(False, f"busy host, run again: achieved {measured.share:.2f} cores, but "
                                   f"{measured.words()}", retry=True)
    return look


@dataclass
class CpuWindow:
    """What a container's cgroup did with the CPU over one window of wall time."""
    seconds: float           # wall time
    share: float             # CPU seconds used / wall seconds
    waited: float            # seconds its processes waited for a CPU while not throttled
    periods: int             # quota periods in the window (0 without a quota)
    throttled: int           # of which the quota ran out
    low: float = 0.0         # the share over the longest the window can have been
    high: float = 0.0        # and over the shortest

    def above(self, most: float) -> bool:
        """Used more than `most` cores however long the window really was, beyond what the
        partial quota periods at its two ends can give (a period of 100 ms each)."""
        return self.low > most + 2 * 0.1 * most / max(self.seconds, 1e-3)

    def full_quota(self, tolerance: float) -> bool:
        """It hit its quota in all but `tolerance` of its periods, so what it got is what the
        quota gives. A throttled period gives the whole quota and any other may give next to
        nothing on a crowded host: with more periods missed, a correct quota could measure
        short by more than the tolerance and be judged wrong. (At 80 % of periods, a correct
        0.25-core spinner measured 0.2 under stress-ng --cpu 4 --io 2 and lost its point.)"""
        return self.periods >= 5 and self.throttled >= (1 - tolerance) * self.periods

    @property
    def contended(self) -> bool:
        """It waited for a CPU a quarter of the window or more, not counting throttled time."""
        return self.waited >= 0.25 * self.seconds

    def trusted(self, tolerance: float) -> bool:
        """The host cannot have made this share: the container got its quota or hardly waited,
        and the grader's own clock readings were not held up (the brackets agree)."""
        return (self.full_quota(tolerance) or not self.contended) and self.high - self.low <= 0.05 * self.share

    def words(self) -> str:
        quota = f"; its quota ran out in {self.throttled} of {self.periods} periods" if self.periods else ""
        return (f"it waited {self.waited / self.seconds:.0%} of {self.seconds:.1f} s for a CPU that other work "
                f"held{quota}")


def _cpu_window(container, window) -> CpuWindow:
    """The counters read at both ends of `window`, each read bracketed by clock readings: on a
    busy host the grader itself can wait between a read and its clock, and the window it
    measured is then known only between the inner and the outer bracket."""
    cgroup = container.cgroup
    outer_start = time.monotonic()
    before, waited_before, counters_before = _cpu_used(cgroup), _run_times(cgroup)[1], _cpu_counters(cgroup)
    inner_start = time.monotonic()
    time.sleep(window)
    inner_end = time.monotonic()
    used, waited, counters = _cpu_used(cgroup), _run_times(cgroup)[1], _cpu_counters(cgroup)
    outer_end = time.monotonic()
    longest, shortest = outer_end - outer_start, max(inner_end - inner_start, 1e-3)
    throttled_seconds = counters["throttled_seconds"] - counters_before["throttled_seconds"]
    return CpuWindow(longest, (used - before) / ((longest + shortest) / 2),
                     max(0.0, waited - waited_before - throttled_seconds),
                     counters["nr_periods"] - counters_before["nr_periods"],
                     counters["nr_throttled"] - counters_before["nr_throttled"],
                     low=(used - before) / longest, high=(used - before) / shortest)


def _cpu_used(cgroup) -> float:
    return cgroup.stats().cpu_seconds or 0.0


def _cpu_counters(cgroup) -> dict:
    """nr_periods, nr_throttled and the throttled time (seconds) from the cgroup's cpu.stat
    (v1: throttled_time in ns; v2: throttled_usec). Zeros where there is none."""
    path = (os.path.join(cgroup.path, "cpu.stat") if cgroup.version == 2
            else os.path.join(getattr(cgroup, "dirs", {}).get("cpu", "/nonexistent"), "cpu.stat"))
    fields = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(" ")
                fields[key] = int(value)
    except (OSError, ValueError):
        pass
    throttled = fields.get("throttled_usec", 0) / 1e6 if "throttled_usec" in fields else fields.get("throttled_time", 0) / 1e9
    return {"nr_periods": fields.get("nr_periods", 0), "nr_throttled": fields.get("nr_throttled", 0),
            "throttled_seconds": throttled}


def _run_times(cgroup) -> tuple:
    """Seconds the cgroup's processes ran and waited on a run queue (/proc/PID/schedstat;
    a throttled process waits there too)."""
    running = waiting = 0
    for pid in cgroup.pids():
        try:
            with open(f"/proc/{pid}/schedstat") as handle:
                on_cpu, delay, _ = handle.read().split()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        running += int(on_cpu)
        waiting += int(delay)
    return running / 1e9, waiting / 1e9


def _share_seen(share, expected, tolerance, over=None):
    return Observation(within(share, expected, tolerance),
                       f"achieved {share:.2f} cores" + ("" if over is None else f" over {over:.0f} s"))
