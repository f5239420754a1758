"""Isolation experiments: each claim of the story, measured N times on this kernel.

Every experiment is a module with the same four names:

    Params                      a dataclass of knobs; the defaults finish in seconds
    run(params, progress=None)  -> ExperimentResult (raw measurements, JSON-able)
    plot(result)                -> a matplotlib Figure drawn from result.data alone
    check(result)               -> Check(claim, held, detail): the expected conclusion

    from labkit.experiments import get
    cost = get("namespace_cost")
    result = cost.run(cost.Params(trials=20))
    cost.check(result)          # Check(claim='creating a network namespace costs most…', held=True, …)

`labkit experiment run NAME` (labkit.experiments.cli) writes results.json,
environment.json and the figures; `labkit experiment plot DIR` redraws them.
"""

import importlib

from labkit.experiments.base import Check, ExperimentResult

# In the order the story tells them (and the notebooks show them).
NAMES = (
    "namespace_tour", "namespace_cost", "pid_view", "network", "memory_limit",
    "cpu_quota", "pids_limit", "overlay_copy_up", "container_vs_vm", "escapes",
)

__all__ = ["NAMES", "Check", "ExperimentResult", "get"]


def get(name: str):
    """The experiment module called `name` (one of NAMES)."""
    if name not in NAMES:
        raise ValueError(f"no experiment named {name!r}; the experiments are {', '.join(NAMES)}")
    return importlib.import_module(f"labkit.experiments.{name}")
