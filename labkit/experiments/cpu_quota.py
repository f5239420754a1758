"""Busy loops under CPU quotas: the CPU time the cgroup actually got per second of wall
time, against the quota (`--cpus`). The kernel enforces a quota by throttling the
cgroup for the rest of each 100 ms period once the quota is used up.
"""

import os
import time
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, new_result, report, running


@dataclass
class Params:
    quotas: tuple = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)   # cores
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
    rows, total, done = [], params.trials * len(params.quotas), 0
    for trial in range(1, params.trials + 1):
        before = _measure(None, cores, params)["achieved"]
        for quota in params.quotas:
            row = {"trial": trial, "quota": quota, **_measure(quota, cores, params)}
            after = _measure(None, cores, params)["achieved"]
            row["host_capacity"] = round((before + after) / 2, 4)
            rows.append(row)
            before = after
            done += 1
            report(progress, done, total, f"quota {quota} cores")
    result.data["rows"] = rows
    return finished(result)


def _measure(quota: float, cores: int, params: Params) -> dict:
    with running(command=busy_loops(cores), cpus=quota) as container:
        time.sleep(params.warmup)
        before, started = container.stats(), time.monotonic()
        time.sleep(params.seconds)
        after, ended = container.stats(), time.monotonic()
    return {
        "wall_seconds": round(ended - started, 6),
        "cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 6),
        "throttled_periods": (after.throttled_periods or 0) - (before.throttled_periods or 0),
        "achieved": round((after.cpu_seconds - before.cpu_seconds) / (ended - started), 4),
    }


def check(result) -> Check:
    tolerance = result.params.get("tolerance", 0.10)
    claim = (f"a CPU quota is a ceiling: busy loops get their quota (within ±{tolerance:.0%}) where the host "
             "has that much to give, never more, and are throttled to stay under it")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    problems, shares = [], []
    for row in result.data["rows"]:
        shares.append(f"{row['quota']}→{row['achieved']:.2f}")
        # Where other work left the host less than the quota, only the ceiling is testable.
        room = row["quota"] <= row["host_capacity"] * (1 - tolerance)
        if row["achieved"] > row["quota"] * (1 + tolerance):
            problems.append(f"quota {row['quota']}: got {row['achieved']:.3f} cores, more than the quota")
        if room and row["achieved"] < row["quota"] * (1 - tolerance):
            problems.append(f"quota {row['quota']}: got {row['achieved']:.3f} cores with "
                            f"{row['host_capacity']:.2f} available")
        if room and row["throttled_periods"] == 0:
            problems.append(f"quota {row['quota']}: never throttled")
    detail = "; ".join(problems) or "achieved cores per quota: " + ", ".join(shares)
    return Check(claim, not problems, detail)


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
    share.plot([r["quota"] for r in rows], [r["host_capacity"] for r in rows], "_", color="crimson", markersize=14,
               label="unlimited loops, around it")
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
