"""Start-up time and memory of the same small command as a plain host process, in a
labkit container (`true`), and in a small virtual machine (`uname -r` and the boot_id, so
the row also records the guest's own kernel). A container shares
the host's kernel, so it starts like a process; a VM boots a kernel of its own. The proof of
its own kernel is the boot_id (random at every boot), not the release: a Debian 12 host
runs the very kernel package the VM boots, and inside labkit's own VM the nested guest does.

Memory is one metric for all three: the peak memory the kernel charged to a cgroup that
held it (memory.max_usage_in_bytes on v1, memory.peak on v2, read through
labkit.cgroups). The process and the VM's QEMU are started by a small shell that first
moves itself into a fresh cgroup, so nothing the Jupyter kernel had already touched is
counted; for the VM, what its launching Python held before QEMU started is subtracted.

The VM row needs QEMU and a guest kernel (`labkit vm setup`); where `labkit.vm.status()`
says it cannot run, the row is skipped with its reason.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, median, new_result, report, vm_unavailable

ROWS = ("process", "container", "vm")
SPEEDUP = 10           # a container starts at least this many times faster than a VM boots

# Moves itself into the cgroup (one cgroup.procs file per v1 hierarchy, one on v2),
# then becomes the measured command: its every page is charged there.
JOIN_THEN_EXEC = 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'

# The VM's launcher: report its own charge before QEMU starts, then boot a VM that
# prints its kernel's release (uname -r) and its boot_id: the guest runs a kernel of its own.
VM_LAUNCHER = """
import json, os, sys
from labkit.cgroups import host_hierarchy
from labkit.vm import run
cgroup = host_hierarchy().open(os.environ["LABKIT_MEASURE_CGROUP"])
print(json.dumps({"before_qemu": cgroup.stats().memory_current}), flush=True)
vm = run(["sh", "-c", "uname -r; cat /proc/sys/kernel/random/boot_id"], memory=sys.argv[1], cpus=1, cwd="/")
print(json.dumps({"exit_code": vm.exit_code, "boot_seconds": vm.boot_seconds, "accel": vm.accel,
                  "output": vm.output.strip(), "qemu_peak_rss_bytes": vm.qemu_peak_rss_bytes}), flush=True)
"""


@dataclass
class Params:
    trials: int = 10           # process and container runs
    vm_trials: int = 1         # each boots a VM (seconds under emulation)
    vm_memory: str = "256m"
    vm: bool = True            # False: leave the VM row out


def run(params: Params, progress=None):
    result = new_result("container_vs_vm", params)
    vm_reason = vm_unavailable(params)
    total = 2 * params.trials + (0 if vm_reason else params.vm_trials)
    rows, done = {name: [] for name in ROWS}, 0
    _container_once()   # the first container also starts labkit's helper: not a fair trial
    for _ in range(params.trials):
        rows["process"].append(_process_once())
        rows["container"].append(_container_once())
        done += 2
        report(progress, done, total, "process and container")
    if not vm_reason:
        for _ in range(params.vm_trials):
            rows["vm"].append(_vm_once(params.vm_memory))
            done += 1
            report(progress, done, total, f"VM boot ({rows['vm'][-1]['accel']})")
    result.data = {"rows": rows, "vm_skipped": vm_reason, "memory_metric": "peak cgroup memory charge"}
    return finished(result)


def in_own_cgroup(command: list, timeout: float) -> tuple:
    """Run `command` alone in a fresh cgroup (named in $LABKIT_MEASURE_CGROUP): (its stdout,
    the cgroup's peak memory charge)."""
    from labkit.cgroups import host_hierarchy

    cgroup = host_hierarchy().create(f"measure-{uuid.uuid4().hex[:12]}")
    try:
        done = subprocess.run(["sh", "-c", JOIN_THEN_EXEC, "sh", *cgroup.procs_files(), "--", *command],
                              capture_output=True, text=True, timeout=timeout,
                              env=os.environ | {"LABKIT_MEASURE_CGROUP": cgroup.name})
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} in a measuring cgroup exited {done.returncode}: {done.stderr[-500:]}")
        return done.stdout, cgroup.stats().memory_peak
    finally:
        cgroup.delete()


def _process_once() -> dict:
    started = time.perf_counter()
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    os.waitpid(pid, 0)
    startup = time.perf_counter() - started
    _, peak = in_own_cgroup(["/bin/true"], timeout=30)
    return {"startup_s": startup, "memory_bytes": peak}


def _container_once() -> dict:
    from labkit.runtime import run as run_container

    outcome = run_container(["true"]).check()
    return {"startup_s": outcome.startup, "memory_bytes": outcome.memory_peak}


def _vm_once(memory: str) -> dict:
    output, peak = in_own_cgroup([sys.executable, "-c", VM_LAUNCHER, memory], timeout=900)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    before, boot = lines[0]["before_qemu"], lines[-1]
    if boot["exit_code"] != 0:
        raise RuntimeError(f"uname -r in the VM exited {boot['exit_code']}: {boot['output'][-500:]}")
    kernel, boot_id = boot["output"].split()[-2:]
    return {"startup_s": boot["boot_seconds"], "memory_bytes": peak - before, "accel": boot["accel"],
            "kernel": kernel, "boot_id": boot_id, "qemu_peak_rss_bytes": boot["qemu_peak_rss_bytes"]}


def medians(result) -> dict:
    return {name: {key: median([r[key] for r in rows]) for key in ("startup_s", "memory_bytes")}
            for name, rows in result.data["rows"].items() if rows}


def check(result) -> Check:
    claim = f"a container starts at least {SPEEDUP}x faster than a VM boots, and is charged less memory"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    if result.data["vm_skipped"]:
        return Check.skip(claim, f"no VM on this host: {result.data['vm_skipped']}")
    numbers = medians(result)
    process, container, vm = numbers["process"], numbers["container"], numbers["vm"]
    misses = []
    if container["startup_s"] * SPEEDUP > vm["startup_s"]:
        misses.append(f"the VM booted only {vm['startup_s'] / container['startup_s']:.1f}x slower than a container started")
    if container["memory_bytes"] >= vm["memory_bytes"]:
        misses.append("the container was charged as much memory as the VM, or more")
    accel = result.data["rows"]["vm"][0]["accel"]
    detail = (f"start-up: process {process['startup_s'] * 1e3:.2f} ms, container "
              f"{container['startup_s'] * 1e3:.1f} ms, VM ({accel}) {vm['startup_s']:.2f} s "
              f"({vm['startup_s'] / container['startup_s']:.0f}x); peak memory charged: process "
              f"{process['memory_bytes'] / 2**20:.2f} MiB, container {container['memory_bytes'] / 2**20:.2f} MiB, "
              f"VM {vm['memory_bytes'] / 2**20:.0f} MiB")
    return Check.judge(claim, misses, [], detail)


def vm_label(accel: str) -> str:
    """A TCG boot is software emulation, far slower than a VM on KVM: say so on the chart."""
    return "VM (KVM)" if accel == "kvm" else f"VM ({accel}:\nsoftware emulation)"


def plot(result):
    import matplotlib.pyplot as plt

    numbers = medians(result)
    names = list(numbers)
    labels = [vm_label(result.data['rows']['vm'][0]['accel']) if n == "vm" else n for n in names]
    figure, (startup, memory) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"process": "#bbbbbb", "container": "#2b8cbe", "vm": "#d7191c"}
    for axes, key, scale, unit in ((startup, "startup_s", 1e3, "ms"), (memory, "memory_bytes", 2**-20, "MiB")):
        values = [numbers[n][key] * scale for n in names]
        bars = axes.bar(labels, values, color=[colours[n] for n in names])
        axes.bar_label(bars, labels=[f"{v:.3g} {unit}" for v in values], fontsize=8)
        axes.set_yscale("log")
    startup.set_ylabel("ms until the command runs (median)")
    startup.set_title("start-up")
    memory.set_ylabel("peak memory charged to its cgroup (MiB, median)")
    memory.set_title("memory")
    if result.data["vm_skipped"]:
        figure.suptitle(f"VM row skipped: {result.data['vm_skipped'][:90]}", fontsize=8)
    figure.tight_layout()
    return figure
