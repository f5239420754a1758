"""A process that allocates memory in steps under a memory limit: the cgroup's usage
climbs to the limit, then the kernel's OOM killer ends it and the cgroup records it.
Usage is sampled from outside (`container.stats()`) while the process runs.
"""

import time
from dataclasses import dataclass

from labkit.experiments.base import Check, repeat_trials, running
from labkit.units import parse_bytes

MIB = 1 << 20


@dataclass
class Params:
    memory: str = "32m"          # the container's limit
    step_mib: int = 2            # allocated per step
    steps: int = 40              # enough to go well past the limit
    step_seconds: float = 0.05   # pause between steps, so the climb can be watched
    sample_seconds: float = 0.01
    trials: int = 3


def allocator(params: Params) -> list:
    """busybox awk: build a step-sized string once, then keep a fresh copy of it per step."""
    program = (f'BEGIN {{ c = "x"; while (length(c) < {params.step_mib * MIB}) c = c c; '
               f'for (i = 1; i <= {params.steps}; i++) {{ kept[i] = c i; system("sleep {params.step_seconds}") }} }}')
    return ["awk", program]


def run(params: Params, progress=None):
    return repeat_trials("memory_limit", params, lambda: _one_trial(params), f"allocate under {params.memory}",
                         progress, limit_bytes=parse_bytes(params.memory, "-p memory="))


def _one_trial(params: Params) -> dict:
    samples = []
    with running(command=allocator(params), memory=params.memory) as container:
        started = time.monotonic()
        while True:
            stats = container.stats()
            if not stats.pids_current:
                break
            samples.append([round(time.monotonic() - started, 4), stats.memory_current])
            time.sleep(params.sample_seconds)
        outcome = container.wait()
    return {"samples": samples, "oom_killed": outcome.oom_killed, "cause": outcome.cause,
            "memory_peak": outcome.memory_peak, "oom_kills": outcome.stats.get("oom_kills", 0),
            "seconds": round(outcome.duration, 4)}


def check(result) -> Check:
    claim = "a process that keeps allocating is OOM-killed at the memory limit, and usage never exceeds the limit"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    limit, problems = result.data["limit_bytes"], []
    for number, trial in enumerate(result.data["trials"], 1):
        sampled = max((value for _, value in trial["samples"] if value), default=0)
        if not trial["oom_killed"]:
            problems.append(f"trial {number} was not OOM-killed ({trial['cause']})")
        if (trial["memory_peak"] or 0) > limit or sampled > limit:
            problems.append(f"trial {number} used {max(trial['memory_peak'] or 0, sampled) / MIB:.1f} MiB "
                            f"over a {limit / MIB:.0f} MiB limit")
    peaks = [t["memory_peak"] / MIB for t in result.data["trials"] if t["memory_peak"]]
    detail = "; ".join(problems) or (f"{len(result.data['trials'])} OOM kills; peak {min(peaks):.1f}–{max(peaks):.1f} MiB "
                                     f"of {limit / MIB:.0f} MiB")
    return Check(claim, not problems, detail)


def plot(result):
    import matplotlib.pyplot as plt

    limit = result.data["limit_bytes"] / MIB
    figure, axes = plt.subplots(figsize=(7, 4))
    for number, trial in enumerate(result.data["trials"], 1):
        points = [(t, v / MIB) for t, v in trial["samples"] if v is not None]
        if not points:
            continue
        line, = axes.plot(*zip(*points), label=f"trial {number}: {trial['cause']}")
        if trial["oom_killed"] and trial["memory_peak"]:
            # The cgroup's recorded peak, at the moment the samples stop.
            axes.plot(points[-1][0], trial["memory_peak"] / MIB, "x", color=line.get_color(), markersize=10, mew=2)
    axes.axhline(limit, color="crimson", linestyle="--", label=f"limit {limit:.0f} MiB")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("cgroup memory usage (MiB)")
    axes.set_ylim(0, limit * 1.2)
    axes.set_title("allocating in steps under a memory limit (x: OOM kill)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure
