"""Busy loops under CPU quotas: the CPU time the cgroup actually got per second of wall
time, against the quota (`--cpus`). The kernel enforces a quota by throttling the
cgroup for the rest of each 100 ms period once the quota is used up.

What the kernel counted is the evidence: the cgroup's CPU time and throttled periods
(cpuacct.usage / cpu.stat on v1, cpu.stat on v2, read through labkit.cgroups), and the
host's idle CPU time in the same window (/proc/stat). Idle time is what tells a busy host
from a miss: a container that got less than its quota while CPUs sat idle was held back
by its cgroup (a miss); one that got less while no CPU was idle lost to other work on
the host, and that point cannot be judged (inconclusive, never "held").
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
    with running(command=busy_loops(cores), cpus=quota) as container:
        time.sleep(params.warmup)
        before, idle_before, started = container.stats(), idle_cpu_seconds(), time.monotonic()
        time.sleep(params.seconds)
        after, idle_after, ended = container.stats(), idle_cpu_seconds(), time.monotonic()
    wall = ended - started
    return {
        "wall_seconds": round(wall, 6),
        "cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 6),
        "throttled_periods": (after.throttled_periods or 0) - (before.throttled_periods or 0),
        "achieved": round((after.cpu_seconds - before.cpu_seconds) / wall, 4),
        "idle_cores": round((idle_after - idle_before) / wall, 4),   # CPUs left idle, on average
    }


def judge(row: dict, tolerance: float, cores: int, period: float = PERIOD_SECONDS) -> tuple:
    """(misses, unjudged) for one measured quota."""
    quota, achieved, idle = row["quota"], row["achieved"], row["idle_cores"]
    wanted = min(quota, cores)               # the loops cannot use more than every CPU
    # The window does not start on a period boundary: it may hold one period's quota
    # more or less than wall/period of them.
    alignment = quota * period / row["wall_seconds"]
    floor = wanted * (1 - tolerance) - alignment
    misses, unjudged = [], []
    if achieved > quota * (1 + tolerance) + alignment:
        misses.append(f"quota {quota}: got {achieved:.3f} cores, more than the quota")
    if achieved < floor:
        # The shortfall could have run on the idle CPUs: nothing but the cgroup held it back.
        if idle >= floor - achieved:
            misses.append(f"quota {quota}: got {achieved:.3f} cores while {idle:.2f} CPUs sat idle")
        else:
            unjudged.append(f"quota {quota}: got {achieved:.3f} cores, only {idle:.2f} CPUs idle")
    if quota < cores and row["throttled_periods"] == 0:
        # Runnable loops that wanted more than the quota, CPUs idle, and no throttling:
        # then what kept them under the quota? Without idle CPUs, other work did.
        if idle >= tolerance * quota:
            misses.append(f"quota {quota}: never throttled, with {idle:.2f} CPUs idle")
        else:
            unjudged.append(f"quota {quota}: not throttled, no CPU idle")
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
