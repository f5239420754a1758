"""The command line as a user meets it: whole processes, start to exit, in one run.

    python benchmarks/cli.py [--runs 20]

Each row is the median (and p90) of one whole process, started and waited for:

- python -c pass:      the interpreter labkit runs on, with its site-packages (the floor
                       for any Python command here)
- labkit --help:       building the parser and printing; imports no verb's module
- labkit run -- true:  a container start → exit of /bin/true in busybox, cleaned up
- crun run:            when installed; an OCI bundle on the same busybox files (run the
                       way benchmarks/startup.py does: crun refuses hybrid cgroups)
- podman run:          when installed; `podman run --rm --network none --rootfs DIR true`
                       (with lowered ulimits, in a mount namespace without the hybrid
                       cgroup2 mount, for the same reason as crun)

Ratios are printed (issue 13's goal: labkit run ≤ 0.6 × podman); nothing is asserted.
It also lists which labkit modules `labkit --help` imported, from `python -X importtime`.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def labkit_command() -> list:
    """The installed `labkit` script beside this Python, else `python -m labkit.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "labkit")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "labkit.cli"]


def whole_process(command, runs, warmup=2) -> dict:
    def once():
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-300:]}")

    taken = timing.samples(once, runs, warmup)
    return {"median_ms": statistics.median(taken) * 1000, "p90_ms": taken[int(len(taken) * 0.9)] * 1000,
            "runs": runs}


def podman_command(rootfs) -> list:
    # Limits lowered, not raised: podman's default open-files limit is above many hosts'
    # hard limit, and raising one needs CAP_SYS_RESOURCE, which some hosts withhold.
    return ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024", "--rootfs", rootfs, "true"]


def inner_podman(rootfs, runs):
    """Runs inside `unshare -m`: hide the hybrid cgroup2 mount (crun, podman's runtime,
    refuses hybrid cgroups), then time podman."""
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False, stderr=subprocess.DEVNULL)
    print(json.dumps(whole_process(podman_command(rootfs), runs)))


def podman_row(rootfs, runs):
    if shutil.which("podman") is None:
        return None, "podman is not installed (apt-get install podman)"
    completed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, "--inner-podman", rootfs,
         "--runs", str(runs)], capture_output=True, text=True)
    if completed.returncode != 0:
        return None, f"podman could not run here: {completed.stderr.strip()[-300:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1]), None


def help_imports() -> list:
    """The labkit modules `labkit --help` imports, as Python reports them."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "labkit.cli", "--help"],
                          capture_output=True, text=True)
    names = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return [name for name in names if name == "labkit" or name.startswith("labkit.")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inner-podman", metavar="ROOTFS", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inner_podman:
        inner_podman(options.inner_podman, options.runs)
        return

    from startup import oci_row

    from labkit.images import get_image

    layer = str(get_image("busybox").layer_dirs[0])
    labkit = labkit_command()
    rows, notes = {}, []
    rows["python -c pass"] = whole_process([sys.executable, "-c", "pass"], options.runs)
    rows["labkit --help"] = whole_process([*labkit, "--help"], options.runs)
    rows["labkit run -- true"] = whole_process([*labkit, "run", "--", "true"], options.runs)
    row, why = oci_row("crun", layer, options.runs)
    if row:
        rows["crun run"] = row
    else:
        notes.append(why)
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as directory:
        rootfs = os.path.join(directory, "rootfs")
        shutil.copytree(layer, rootfs, symlinks=True)  # podman writes /etc files into a --rootfs
        row, why = podman_row(rootfs, options.runs)
    if row:
        rows["podman run --rootfs"] = row
    else:
        notes.append(why)

    floor = rows["python -c pass"]["median_ms"]
    print(f"{'whole process':22} {'median ms':>10} {'p90 ms':>8} {'÷ python -c pass':>17}")
    for name, row in rows.items():
        print(f"{name:22} {row['median_ms']:10.1f} {row['p90_ms']:8.1f} {row['median_ms'] / floor:17.2f}")
    run = rows["labkit run -- true"]["median_ms"]
    for anchor, goal in (("podman run --rootfs", 0.6), ("crun run", None)):
        if anchor in rows:
            ratio = run / rows[anchor]["median_ms"]
            verdict = f" (goal ≤ {goal:.2f}: {'met' if ratio <= goal else 'not met'})" if goal else ""
            print(f"labkit run -- true / {anchor} = {ratio:.2f}{verdict}")
    print(f"labkit modules imported by `labkit --help`: {', '.join(help_imports())}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
