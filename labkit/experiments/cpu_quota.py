"""Busy loops under CPU quotas: the CPU time the cgroup got per quota period, against the
quota (`--cpus`). The kernel enforces a quota by throttling the cgroup for the rest of each
100 ms period once the quota is used up.

What the kernel counted is the evidence, all of it from the cgroup's own counters, read
together at each end of the window (cpu.stat on v2; cpuacct.usage and cpu.stat on v1,
through labkit.cgroups): the CPU time used, the quota periods that passed (nr_periods) and
those in which the quota ran out (nr_throttled). The share is the CPU time over the
periods the kernel counted, not over wall time read by this process: on a busy host, and
in an emulated guest far more, this process may wait between reading the counters and
reading its clock, and a 0.8 s window then looks longer or shorter than the cgroup's.
Throttling tells a miss from a busy host: a cgroup whose quota ran out in (nearly) every
period and that still got less than its quota was held back by its cgroup (a miss); one
that got less without running out of quota lost the CPU to other work, and that point
cannot be judged (inconclusive, never "held"). The host's idle CPU time (/proc/stat) is
measured too, for the plot.
"""

import os
import time
from dataclasses import dataclass

from labkit.cgroups.base import CPU_PERIOD_US
from labkit.experiments.base import Check, finished, idle_cpu_seconds, new_result, report, running

PERIOD_SECONDS = CPU_PERIOD_US / 1e6



@dataclass
class Params:
    quotas: tuple = (0.1, 0.25, 0.5, 1.0, 1.5)   # cores
    seconds: float = 0.8          # measured window per quota
    warmup: float = 0.2           # let the loops start before measuring
    tolerance: float = 0.10       # achieved within ±10 % of the quota
    trials: int = 1
    longest: float = 8.0          # a window that shows a miss is extended up to this long


def busy_loops(count: int) -> list:
    """One shell busy loop per host CPU, so the quota (not the loops) is the limit."""
    loops = " ".join(["while :; do :; done &"] * count)
    return ["sh", "-c", f"{loops} wait"]


def run(params: Params, progress=None):
    result = new_result("cpu_quota", params)
    cores = os.cpu_count() or 1
    result.data["host_cpus"] = cores
    result.data["period_seconds"] = PERIOD_SECONDS
    rows, total, done = [], params.trials * len(params.quotas), 0
    for trial in range(1, params.trials + 1):
        for quota in params.quotas:
            rows.append({"trial": trial, "quota": quota, **_measure(quota, cores, params)})
            done += 1
            report(progress, done, total, f"quota {quota} cores")
    result.data["rows"] = rows
    return finished(result)


def _measure(quota: float, cores: int, params: Params) -> dict:
    """A window of `params.seconds`; one that shows a miss is extended (read again from the
    same start) until it shows none or `params.longest` has passed. CPU time charged past the
    quota before the kernel's next check (a vCPU its host stalls, as under emulation, is
    charged the whole stall) is repaid by throttling in the next periods: a quota that holds
    comes back within its tolerance over more periods, one that does not stays out."""
    with running(command=busy_loops(cores), cpus=quota) as container:
        time.sleep(params.warmup)
        before, idle_before, started = container.stats(), idle_cpu_seconds(), time.monotonic()
        while True:
            time.sleep(params.seconds)
            after, idle_after, ended = container.stats(), idle_cpu_seconds(), time.monotonic()
            row = _counted(before, after, idle_after - idle_before, ended - started)
            if ended - started >= params.longest or not judge({"quota": quota, **row}, params.tolerance, cores)[0]:
                return row


def _counted(before, after, idle: float, wall: float) -> dict:
    used = after.cpu_seconds - before.cpu_seconds
    periods = (after.periods or 0) - (before.periods or 0)   # as the kernel counted them, with the usage
    return {
        "wall_seconds": round(wall, 6),
        "cpu_seconds": round(used, 6),
        "periods": periods,
        "throttled_periods": (after.throttled_periods or 0) - (before.throttled_periods or 0),
        "achieved": round(used / (periods * PERIOD_SECONDS) if periods else used / wall, 4),   # cores
        "idle_cores": round(idle / wall, 4),   # CPUs left idle, on average
    }


def judge(row: dict, tolerance: float, cores: int, period: float = PERIOD_SECONDS) -> tuple:
    """(misses, unjudged) for one measured quota, from the cgroup's counters alone."""
    quota, periods, throttled = row["quota"], row.get("periods"), row["throttled_periods"]
    if periods is None:
        return [], [f"quota {quota}: measured without the kernel's period count (nr_periods): run it again"]
    if periods == 0:
        # Busy loops under a quota keep its period timer running: no period, no quota.
        return [f"quota {quota}: the kernel counted no quota period in {row['wall_seconds']:.2f} s: "
                f"no quota was enforced (got {row['cpu_seconds'] / row['wall_seconds']:.3f} cores)"], []
    achieved = row["cpu_seconds"] / (periods * period)
    wanted = min(quota, cores)               # the loops cannot use more than every CPU
    # The window does not start on a period boundary: it may hold one period's quota
    # more or less than its counted periods give.
    alignment = quota / periods
    floor = wanted * (1 - tolerance) - alignment
    misses, unjudged = [], []
    ran_out = f"its quota ran out in {throttled} of {periods} periods"
    if achieved > quota * (1 + tolerance) + alignment:
        misses.append(f"quota {quota}: got {achieved:.3f} cores over the {periods} periods the kernel counted, "
                      "more than the quota")
    if achieved < floor:
        if throttled >= 0.8 * periods:
            # Throttled for running out of quota, yet short of it: its cgroup held it back.
            misses.append(f"quota {quota}: got {achieved:.3f} cores though {ran_out}: throttled below its quota")
        else:
            unjudged.append(f"quota {quota}: got {achieved:.3f} cores, {ran_out}: other work took the CPU")
    elif quota < cores and throttled == 0:
        # Loops that wanted every CPU, held to the quota without throttling: by other work.
        unjudged.append(f"quota {quota}: never throttled in {periods} periods: other work held the CPUs")
    return misses, unjudged


def check(result) -> Check:
    tolerance = result.params.get("tolerance", 0.10)
    claim = (f"a CPU quota is a ceiling: busy loops get their quota (within ±{tolerance:.0%}), never more, "
             "and are throttled to stay under it")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    cores, period = result.data["host_cpus"], result.data.get("period_seconds", PERIOD_SECONDS)
    misses, unjudged, shares = [], [], []
    for row in result.data["rows"]:
        shares.append(f"{row['quota']}→{row['achieved']:.2f}")
        missed, cannot_tell = judge(row, tolerance, cores, period)
        misses += missed
        unjudged += cannot_tell
    return Check.judge(claim, misses, unjudged, "achieved cores per quota: " + ", ".join(shares))


def plot(result):
    import matplotlib.pyplot as plt

    rows, cores = result.data["rows"], result.data["host_cpus"]
    tolerance = result.params.get("tolerance", 0.10)
    figure, (share, throttled) = plt.subplots(1, 2, figsize=(10, 4))
    top = max(r["quota"] for r in rows) * 1.1
    line = [0, top]
    share.plot(line, line, color="grey", linestyle=":", label="achieved = quota")
    share.fill_between(line, [x * (1 - tolerance) for x in line], [x * (1 + tolerance) for x in line],
                       color="grey", alpha=0.15, label=f"±{tolerance:.0%}")
    share.axhline(cores, color="crimson", linestyle="--", label=f"host has {cores} CPUs")
    share.plot([r["quota"] for r in rows], [r["achieved"] + r["idle_cores"] for r in rows], "_", color="crimson",
               markersize=14, label="achieved + idle CPUs (what was free)")
    share.plot([r["quota"] for r in rows], [r["achieved"] for r in rows], "o", color="#2b8cbe", label="measured")
    share.set_xlabel("quota (cores)")
    share.set_ylabel("achieved (CPU seconds per second)")
    share.set_title("CPU share vs quota")
    share.legend(fontsize=8)
    throttled.bar([str(r["quota"]) for r in rows], [r["throttled_periods"] for r in rows], color="#fdae61")
    throttled.set_xlabel("quota (cores)")
    throttled.set_ylabel("throttled periods in the window")
    throttled.set_title("periods in which the cgroup was throttled")
    figure.tight_layout()
    return figure
