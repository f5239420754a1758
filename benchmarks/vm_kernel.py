"""The VM kernel ("Python 3 (labkit in a VM)") against the host's labkit kernel, same run.

    python benchmarks/vm_kernel.py [--cells 5] [--json FILE]

For each kernel (host; VM under emulation booted as before snapshots, LABKIT_VM_SNAPSHOT=off;
VM under emulation from the saved guest, which the run first saves if none matches; VM
under KVM where /dev/kvm can boot it): start until the kernel answers kernel_info
("idle"), and for the VM how much of that the guest's boot or restore took; the first `%%container true` cell and the median of --cells
more; how long an interrupted `%%container sleep 100` cell takes to stop; shutdown.
Goals (issue 21): VM kernel ready ≤ 15 s and a `%%container true` cell ≤ 1 s under
emulation; an interrupt stops within 2 s. Printed, never asserted.
"""

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.kernelspec import write_spec  # noqa: E402
from labkit.vm.accel import ACCEL_VARIABLE, kvm_problem  # noqa: E402
from labkit.vm.snapshot import SNAPSHOT_VARIABLE  # noqa: E402

GOALS = {"ready_s": 15.0, "container_cell_median_s": 1.0, "interrupt_s": 2.0}
TIMEOUT = 900


def cell(client, code) -> float:
    started = time.perf_counter()
    reply = client.execute_interactive(code, timeout=TIMEOUT, output_hook=lambda message: None)
    seconds = time.perf_counter() - started
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    return seconds


def interrupt_seconds(manager, client) -> float:
    request = client.execute("%%container\necho started; sleep 100")
    while True:
        message = client.get_iopub_msg(timeout=TIMEOUT)
        if (message["parent_header"].get("msg_id") == request and message["msg_type"] == "stream"
                and "started" in message["content"]["text"]):
            break
    started = time.perf_counter()
    manager.interrupt_kernel()
    while True:
        reply = client.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == request:
            return time.perf_counter() - started


def measure(name, vm, accel, cells, work, snapshots=True) -> dict:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    if accel:
        os.environ[ACCEL_VARIABLE] = accel
    os.environ[SNAPSHOT_VARIABLE] = "on" if snapshots else "off"
    spec_name = f"bench-{name}"
    write_spec(work / "kernels" / spec_name, vm=vm)
    notebooks = work / f"notebooks-{name}"
    notebooks.mkdir()
    manager = KernelManager(kernel_name=spec_name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(work / "kernels")]))
    result = {"kernel": name, "load_before": os.getloadavg()[0]}
    started = time.perf_counter()
    manager.start_kernel(cwd=str(notebooks))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=TIMEOUT)
        result["ready_s"] = time.perf_counter() - started
        if vm:
            result["guest_up_s"] = manager.provisioner.guest.booted_seconds
            result["guest"] = manager.provisioner.guest.how
        result["first_container_cell_s"] = cell(client, "%%container\ntrue")
        result["container_cell_median_s"] = statistics.median(cell(client, "%%container\ntrue") for _ in range(cells))
        while True:  # drain iopub before watching it
            try:
                client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                break
        result["interrupt_s"] = interrupt_seconds(manager, client)
        if vm:
            started = time.perf_counter()
            manager.restart_kernel()
            client.wait_for_ready(timeout=TIMEOUT)
            result["restart_s"] = time.perf_counter() - started
    finally:
        client.stop_channels()
        started = time.perf_counter()
        manager.shutdown_kernel()
        result["shutdown_s"] = time.perf_counter() - started
        result["load_after"] = os.getloadavg()[0]   # other work on the host inflates every figure
        os.environ.pop(ACCEL_VARIABLE, None)
        os.environ.pop(SNAPSHOT_VARIABLE, None)
    return result


def ensure_snapshot(work):
    """Start and stop one VM kernel, so that the measured start restores a saved guest
    (this one saves it when labkit, the venv or the settings changed since the last)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    write_spec(work / "kernels" / "bench-save", vm=True)
    (work / "notebooks-save").mkdir()
    manager = KernelManager(kernel_name="bench-save", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(work / "kernels")]))
    os.environ[ACCEL_VARIABLE] = "tcg"
    started = time.perf_counter()
    try:
        manager.start_kernel(cwd=str(work / "notebooks-save"))
        how = manager.provisioner.guest.how
    finally:
        manager.shutdown_kernel(now=True)
        os.environ.pop(ACCEL_VARIABLE, None)
    print(json.dumps({"kernel": "vm-tcg (saving)", "guest": how, "start_s": time.perf_counter() - started}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    options = parser.parse_args()
    runs = [("host", False, None, True), ("vm-boot", True, "tcg", False), ("vm-tcg", True, "tcg", True)]
    problem = kvm_problem()
    if problem is None:
        runs.append(("vm-kvm", True, "kvm", True))
    results = []
    with tempfile.TemporaryDirectory(prefix="labkit-bench-vm-kernel-") as work:
        for name, vm, accel, snapshots in runs:
            if name == "vm-tcg":
                ensure_snapshot(Path(work))
            results.append(measure(name, vm, accel, options.cells, Path(work), snapshots))
            print(json.dumps(results[-1]), flush=True)
    if problem is not None:
        results.append({"kernel": "vm-kvm", "skipped": problem})
    print(f"\n{'kernel':<8} {'ready s':>8} {'guest up':>9} {'1st cell':>9} {'cell med':>9} "
          f"{'interrupt':>10} {'restart':>8} {'shutdown':>9} {'load':>11}")
    for row in results:
        if "skipped" in row:
            print(f"{row['kernel']:<8} not measured: {row['skipped']}")
            continue
        values = [row.get(key) for key in ("ready_s", "guest_up_s", "first_container_cell_s",
                                            "container_cell_median_s", "interrupt_s", "restart_s", "shutdown_s")]
        print(f"{row['kernel']:<8} " + " ".join(f"{value:>9.2f}" if value is not None else f"{'-':>9}"
                                                 for value in values)
              + f" {row['load_before']:>5.1f}-{row['load_after']:<5.1f}")
    tcg = next(row for row in results if row["kernel"] == "vm-tcg")
    for key, goal in GOALS.items():
        verdict = "met" if tcg[key] <= goal else "NOT met"
        print(f"goal {key} ≤ {goal:g} s under emulation: {tcg[key]:.2f} s, {verdict}")
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
