"""A fork bomb in a container with a pids limit: the number of processes climbs to the
limit and stays there, because the kernel refuses every fork beyond it (and counts each
refusal in pids.events).

Where no pids limit would hold (rootless on a host that delegates no cgroups, such as any
cgroup v1 host; a kernel without the pids controller) the experiment refuses to light the
bomb: unlimited, it would take the user's whole process allowance, and the host's with it.
"""

import time
from dataclasses import dataclass

from labkit.errors import HostError
from labkit.experiments.base import Check, repeat_trials, running

# The classic bomb, spelt for busybox sh: each call starts two more in the background.
# A shell exits when a fork fails, so on its own the bomb burns out once it hits the
# limit; awk's system() shrugs off a failed fork and keeps relighting it, which keeps
# the pressure on for as long as we watch.
FORK_BOMB = ["awk", 'BEGIN { while (1) system("bomb() { bomb | bomb & }; bomb 2>/dev/null") }']


@dataclass
class Params:
    pids: int = 32                # the container's limit
    seconds: float = 1.5          # how long to let it rage
    sample_seconds: float = 0.01
    trials: int = 2


def why_no_pids_limit(hierarchy=None) -> str | None:
    """Why a container started here would get no pids limit, or None when one would hold."""
    from labkit.cgroups import NoCgroups, container_hierarchy

    hierarchy = hierarchy or container_hierarchy()
    if "pids" in hierarchy.controllers:
        return None
    if isinstance(hierarchy, NoCgroups):
        return hierarchy.reason
    if getattr(hierarchy, "delegation", None) is not None:
        from labkit.cgroups.delegation import FIX

        return f"the pids controller is not delegated to you (your subtree has: " \
               f"{', '.join(sorted(hierarchy.controllers)) or 'none'}); {FIX}"
    return (f"this kernel's cgroups have no pids controller (they have: {', '.join(sorted(hierarchy.controllers))}); "
            "a kernel built with CONFIG_CGROUP_PIDS has one, as does the VM kernel: `labkit lab --vm`")


def run(params: Params, progress=None):
    why = why_no_pids_limit()
    if why:
        raise HostError(f"pids_limit refuses to light a fork bomb that no pids limit would hold: {why}")
    return repeat_trials("pids_limit", params, lambda: _one_trial(params), f"fork bomb under pids={params.pids}",
                         progress)


def _one_trial(params: Params) -> dict:
    samples = []
    # init: a reaping PID 1, so the orphaned bombs do not linger as zombies.
    with running(command=FORK_BOMB, pids=params.pids, init=True) as container:
        started = time.monotonic()
        while time.monotonic() - started < params.seconds:
            stats = container.stats()
            samples.append([round(time.monotonic() - started, 4), stats.pids_current])
            time.sleep(params.sample_seconds)
        stats = container.stats()
    return {"samples": samples, "limit_hits": stats.pids_limit_hits, "pids_at_end": stats.pids_current}


def check(result) -> Check:
    claim = "a fork bomb is held at the pids limit: the process count reaches it and never exceeds it"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    limit, problems = result.params["pids"], []
    for number, trial in enumerate(result.data["trials"], 1):
        highest = max((n or 0 for _, n in trial["samples"]), default=0)
        if highest > limit:
            problems.append(f"trial {number}: {highest} processes over a limit of {limit}")
        if highest < limit:
            problems.append(f"trial {number}: only reached {highest} of {limit}")
        if not trial["limit_hits"]:
            problems.append(f"trial {number}: no fork was refused")
    hits = [t["limit_hits"] for t in result.data["trials"]]
    detail = "; ".join(problems) or f"held at {limit}; refused forks per trial: {hits}"
    return Check(claim, not problems, detail)


def plot(result):
    import matplotlib.pyplot as plt

    limit = result.params["pids"]
    figure, axes = plt.subplots(figsize=(7, 4))
    for number, trial in enumerate(result.data["trials"], 1):
        points = [(t, n) for t, n in trial["samples"] if n is not None]
        axes.plot(*zip(*points), label=f"trial {number}: {trial['limit_hits']} forks refused")
    axes.axhline(limit, color="crimson", linestyle="--", label=f"pids limit {limit}")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("processes in the container")
    axes.set_ylim(0, limit * 1.3)
    axes.set_title("a fork bomb under a pids limit")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure
