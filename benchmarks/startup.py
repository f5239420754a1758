"""Container start → exit of /bin/true, measured in one run against baselines.

    python benchmarks/startup.py [--runs 200]

Each row is the median (and p90) of one call that starts a fresh container and returns
when it has exited and been cleaned up:

- bare:     posix_spawn + wait of /bin/true (no isolation at all)
- unshare:  util-linux `unshare` with the same six namespaces (no cgroups, no overlay)
- labkit:   Container.run(): six namespaces, memory+cpu+pids(+devices) cgroups, overlay
            root with an init layer, pivot_root, /proc /dev /sys, Docker's default
            profile (capabilities, seccomp filter, device allow-list), exec, then removal
- labkit --privileged: the same without the profile (no seccomp filter, no device
            control): the difference is what the profile costs at start-up
- crun/runc: when installed; an OCI bundle on the same busybox files. crun refuses this
            host's hybrid cgroups, so it runs inside a private mount namespace in which
            /sys/fs/cgroup/unified is unmounted (the host is untouched).

The issue's goal: labkit ≤ 0.7 × crun. Ratios are printed; nothing is asserted.
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


def timed(function, runs, warmup=5):
    samples = timing.samples(function, runs, warmup)
    return {"median_ms": statistics.median(samples) * 1000, "p90_ms": samples[int(len(samples) * 0.9)] * 1000,
            "runs": runs}


def interleaved(functions: dict, runs, warmup=5) -> dict:
    """Rows for functions called in turn (a, b, a, b, …), so that a busy machine slows
    each of them alike and their difference stays meaningful. Each row also has the CPU
    time one call costs the helper and the processes it forks (they are its reaped
    children), which a busy machine does not inflate as it does wall-clock time."""
    from labkit.runtime.helper import get_helper

    samples = {name: timing.samples(function, 0, warmup) for name, function in functions.items()}
    cpu = dict.fromkeys(functions, 0.0)
    helper = get_helper().pid
    for _ in range(runs):
        for name, function in functions.items():
            before = helper_cpu_seconds(helper)
            samples[name] += timing.samples(function, 1)
            cpu[name] += helper_cpu_seconds(helper) - before
    rows = {}
    for name, taken in samples.items():
        taken.sort()
        rows[name] = {"median_ms": statistics.median(taken) * 1000, "p90_ms": taken[int(len(taken) * 0.9)] * 1000,
                      "runs": runs, "helper_cpu_ms": cpu[name] / runs * 1000}
    return rows


def helper_cpu_seconds(pid) -> float:
    """utime + stime of the helper and of its reaped children, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def bare():
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    os.waitpid(pid, 0)


def unshare_command():
    return ["unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--cgroup", "--fork", "/bin/true"]


def make_bundle(directory, layer_dir):
    rootfs = os.path.join(directory, "rootfs")
    shutil.copytree(layer_dir, rootfs, symlinks=True)
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
                    "env": ["PATH=/bin:/usr/bin"], "cwd": "/",
                    "capabilities": {k: ["CAP_KILL", "CAP_NET_BIND_SERVICE"] for k in
                                     ("bounding", "effective", "permitted")}},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 100000, "period": 100000},
                          "pids": {"limit": 64}},
        },
    }
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle)


def inner_oci(runtime, bundle, runs):
    """Runs inside `unshare -m`: hide the hybrid cgroup2 mount, then time the runtime."""
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False, stderr=subprocess.DEVNULL)
    counter = iter(range(10 ** 9))

    def once():
        name = f"bench-{os.getpid()}-{next(counter)}"
        completed = subprocess.run([runtime, "run", "--bundle", bundle, name], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        if completed.returncode != 0:
            subprocess.run([runtime, "delete", "--force", name], stderr=subprocess.DEVNULL)
            raise RuntimeError(f"{runtime} failed: {completed.stderr.decode()[-300:]}")

    print(json.dumps(timed(once, runs)))


def oci_row(runtime, layer_dir, runs):
    if shutil.which(runtime) is None:
        return None, f"{runtime} is not installed (apt-get install {runtime})"
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as directory:
        make_bundle(directory, layer_dir)
        completed = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, "--inner", runtime,
             "--bundle", directory, "--runs", str(runs)], capture_output=True, text=True)
    if completed.returncode != 0:
        return None, f"{runtime} could not run here: {completed.stderr.strip()[-300:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--inner")
    parser.add_argument("--bundle")
    parser.add_argument("--json", help="also write the rows to this file")
    options = parser.parse_args()
    if options.inner:
        inner_oci(options.inner, options.bundle, options.runs)
        return

    from labkit.images import get_image
    from labkit.runtime import Container, ContainerSpec

    image = get_image("busybox")
    rows, notes = {}, []
    rows["bare fork+exec"] = timed(bare, options.runs)
    rows["unshare (6 ns)"] = timed(lambda: subprocess.run(unshare_command(), check=True), options.runs)
    spec = ContainerSpec(command=["/bin/true"], memory="256m", cpus=1, pids=64)
    privileged = ContainerSpec(command=["/bin/true"], memory="256m", cpus=1, pids=64, privileged=True)
    rows.update(interleaved({"labkit": lambda: Container(spec).run().check(),
                             "labkit --privileged": lambda: Container(privileged).run().check()}, options.runs))
    for runtime in ("crun", "runc"):
        row, why = oci_row(runtime, str(image.layer_dirs[0]), max(20, options.runs // 4))
        if row:
            rows[runtime] = row
        else:
            notes.append(why)

    labkit = rows["labkit"]["median_ms"]
    print(f"{'runtime':20} {'median ms':>10} {'p90 ms':>8} {'labkit ÷ this':>14}")
    for name, row in rows.items():
        print(f"{name:20} {row['median_ms']:10.2f} {row['p90_ms']:8.2f} {labkit / row['median_ms']:14.2f}")
    profile_cost = labkit - rows["labkit --privileged"]["median_ms"]
    cpu_cost = rows["labkit"]["helper_cpu_ms"] - rows["labkit --privileged"]["helper_cpu_ms"]
    print(f"\nDocker's default profile (seccomp + devices + capabilities) costs {profile_cost:.2f} ms a start "
          f"(median wall clock), {cpu_cost:.2f} ms of CPU in the helper and the container's processes "
          f"({rows['labkit']['helper_cpu_ms']:.2f} vs {rows['labkit --privileged']['helper_cpu_ms']:.2f} ms)")
    if "crun" in rows:
        ratio = labkit / rows["crun"]["median_ms"]
        print(f"\nlabkit / crun = {ratio:.2f} (goal ≤ 0.70: {'met' if ratio <= 0.7 else 'not met'})")
    for note in notes:
        print(f"note: {note}")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"rows": rows, "notes": notes}, handle, indent=2)


if __name__ == "__main__":
    main()
