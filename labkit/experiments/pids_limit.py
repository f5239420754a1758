"""A fork bomb in a container with a pids limit: the number of processes climbs to the
limit and stays there, because the kernel refuses every fork beyond it (and counts each
refusal in pids.events).
"""

import time
from dataclasses import dataclass

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


def run(params: Params, progress=None):
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
