"""How long the kernel takes to create each kind of namespace.

Each measurement is one unshare(2) call in a freshly forked child of a small
single-threaded Python process (forking the multi-threaded Jupyter kernel is unsafe,
and unshare(CLONE_NEWUSER) refuses a multi-threaded caller). Kinds are interleaved
within a trial so that a slow moment of the host does not land on one kind only.
"""

import json
import subprocess
import sys
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, median, new_result, quartiles, report
from labkit.linux.namespaces import NAMESPACES, available_namespaces

BASELINE = "unshare(0)"   # the same syscall creating nothing: timer and syscall overhead

_TIMER = r"""
import json, os, sys, time
from labkit.linux import syscalls
kinds = json.loads(sys.argv[1])          # [[name, flag], ...]
for trial in range(int(sys.argv[2])):
    times = {}
    for name, flag in kinds:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The first calls after fork fault in copy-on-write pages: warm up first.
            for _ in range(2):
                start = time.perf_counter_ns()
                syscalls.unshare(0)
            start = time.perf_counter_ns()
            syscalls.unshare(flag)
            elapsed = time.perf_counter_ns() - start
            os.write(write_end, str(elapsed).encode())
            os._exit(0)
        os.close(write_end)
        text = os.read(read_end, 64)
        os.close(read_end)
        os.waitpid(pid, 0)
        times[name] = int(text) if text else None
    print(json.dumps(times), flush=True)
"""


@dataclass
class Params:
    trials: int = 40


def run(params: Params, progress=None):
    result = new_result("namespace_cost", params)
    available = available_namespaces()
    kinds = [[BASELINE, 0]] + [[ns.name, ns.flag] for ns in NAMESPACES if available.get(ns.name) is None]
    result.data["not_available"] = {k: v for k, v in available.items() if v is not None}
    samples = {name: [] for name, _ in kinds}
    timer = subprocess.Popen([sys.executable, "-c", _TIMER, json.dumps(kinds), str(params.trials)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for done, line in enumerate(timer.stdout, 1):
            for name, nanoseconds in json.loads(line).items():
                if nanoseconds is not None:
                    samples[name].append(nanoseconds / 1e3)
            report(progress, done, params.trials, "unshare each kind")
        errors = timer.stderr.read()
    finally:
        timer.wait()
    if timer.returncode != 0:
        raise RuntimeError(f"the namespace timer failed: {errors.strip()[-400:]}")
    result.data["microseconds"] = samples
    return finished(result)


def medians(result) -> dict:
    return {name: median(values) for name, values in result.data["microseconds"].items() if values}


def check(result) -> Check:
    claim = "creating a network namespace costs more than creating any other kind"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    costs = medians(result)
    if "net" not in costs:
        return Check.skip(claim, "network namespaces are not available here")
    others = {k: v for k, v in costs.items() if k not in ("net", BASELINE)}
    runner_up = max(others, key=others.get)
    detail = (f"median net {costs['net']:.0f} µs, next {runner_up} {others[runner_up]:.0f} µs "
              f"({costs['net'] / others[runner_up]:.1f}x); baseline {costs.get(BASELINE, 0):.1f} µs")
    return Check(claim, costs["net"] > others[runner_up], detail)


def plot(result):
    import matplotlib.pyplot as plt

    costs = result.data["microseconds"]
    names = [name for name in costs if costs[name]]
    middle = [median(costs[n]) for n in names]
    spread = [quartiles(costs[n]) for n in names]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.bar(names, middle, color=["#bbbbbb" if n == BASELINE else "#2b8cbe" for n in names],
             yerr=[[m - lo for m, (lo, _) in zip(middle, spread)], [hi - m for m, (_, hi) in zip(middle, spread)]],
             capsize=4)
    axes.set_yscale("log")
    axes.set_ylabel("µs per unshare (median, 25–75 %)")
    axes.set_title(f"time to create each namespace kind ({len(costs[names[0]])} trials)")
    axes.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    return figure
