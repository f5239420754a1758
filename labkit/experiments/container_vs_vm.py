"""Start-up time and memory of the same trivial command (`true`) as a plain host
process, in a labkit container, and in a small virtual machine. A container shares
the host's kernel, so it starts like a process; a VM boots a kernel of its own.

The VM row needs QEMU and a guest kernel (`labkit vm setup`); where `labkit.vm.status()`
says it cannot run, the row is skipped with its reason.
"""

import os
import time
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, median, new_result, report

ROWS = ("process", "container", "vm")


@dataclass
class Params:
    trials: int = 10           # process and container runs
    vm_trials: int = 1         # each boots a VM (seconds under emulation)
    vm_memory: str = "256m"
    vm: bool = True            # False: leave the VM row out


def run(params: Params, progress=None):
    result = new_result("container_vs_vm", params)
    vm_reason = _vm_unavailable(params)
    total = 2 * params.trials + (0 if vm_reason else params.vm_trials)
    rows, done = {name: [] for name in ROWS}, 0
    _container_once()   # the first container also starts labkit's helper: not a fair trial
    for _ in range(params.trials):
        rows["process"].append(_process_once())
        rows["container"].append(_container_once())
        done += 2
        report(progress, done, total, "process and container")
    if not vm_reason:
        from labkit.vm import measure_boot

        for _ in range(params.vm_trials):
            boot = measure_boot(memory=params.vm_memory, cpus=1)
            rows["vm"].append({"startup_s": boot.boot_seconds, "memory_bytes": boot.qemu_peak_rss_bytes,
                               "accel": boot.accel, "kernel": boot.kernel})
            done += 1
            report(progress, done, total, f"VM boot ({boot.accel})")
    result.data = {"rows": rows, "vm_skipped": vm_reason}
    return finished(result)


def _vm_unavailable(params) -> str | None:
    if not params.vm:
        return "left out by the vm=False parameter"
    try:
        from labkit.vm import status
    except ImportError as error:
        return f"labkit.vm is not installed here ({error})"
    state = status()
    return None if state.can_run else "; ".join(state.missing)


def _process_once() -> dict:
    started = time.perf_counter()
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    _, _, usage = os.wait4(pid, 0)
    return {"startup_s": time.perf_counter() - started, "memory_bytes": usage.ru_maxrss * 1024}


def _container_once() -> dict:
    from labkit.runtime import run as run_container

    outcome = run_container(["true"]).check()
    return {"startup_s": outcome.startup, "memory_bytes": outcome.memory_peak}


def medians(result) -> dict:
    return {name: {key: median([r[key] for r in rows]) for key in ("startup_s", "memory_bytes")}
            for name, rows in result.data["rows"].items() if rows}


def check(result) -> Check:
    claim = "a container starts at least 10x faster than a VM boots, and uses less memory"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    if result.data["vm_skipped"]:
        return Check.skip(claim, f"no VM on this host: {result.data['vm_skipped']}")
    numbers = medians(result)
    container, vm = numbers["container"], numbers["vm"]
    held = container["startup_s"] * 10 <= vm["startup_s"] and container["memory_bytes"] < vm["memory_bytes"]
    accel = result.data["rows"]["vm"][0]["accel"]
    detail = (f"start-up: process {numbers['process']['startup_s'] * 1e3:.2f} ms, container "
              f"{container['startup_s'] * 1e3:.1f} ms, VM ({accel}) {vm['startup_s']:.2f} s "
              f"({vm['startup_s'] / container['startup_s']:.0f}x); memory: container "
              f"{container['memory_bytes'] / 2**20:.1f} MiB, VM {vm['memory_bytes'] / 2**20:.0f} MiB")
    return Check(claim, held, detail)


def plot(result):
    import matplotlib.pyplot as plt

    numbers = medians(result)
    names = list(numbers)
    labels = [f"VM ({result.data['rows']['vm'][0]['accel']})" if n == "vm" else n for n in names]
    figure, (startup, memory) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"process": "#bbbbbb", "container": "#2b8cbe", "vm": "#d7191c"}
    for axes, key, scale, unit in ((startup, "startup_s", 1e3, "ms"), (memory, "memory_bytes", 2**-20, "MiB")):
        values = [numbers[n][key] * scale for n in names]
        bars = axes.bar(labels, values, color=[colours[n] for n in names])
        axes.bar_label(bars, labels=[f"{v:.3g} {unit}" for v in values], fontsize=8)
        axes.set_yscale("log")
    startup.set_ylabel("ms until the command runs (median)")
    startup.set_title("start-up")
    memory.set_ylabel("peak memory (MiB, median)")
    memory.set_title("memory")
    if result.data["vm_skipped"]:
        figure.suptitle(f"VM row skipped: {result.data['vm_skipped'][:90]}", fontsize=8)
    figure.tight_layout()
    return figure
