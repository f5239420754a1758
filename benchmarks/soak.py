"""Soak: many containers of every ending, one after another and 8 at a time, then a
count of everything that could have leaked.

    python benchmarks/soak.py [--containers 1000] [--concurrency 8] [--json out/soak.json]

Half the containers run one after another, half in `--concurrency` threads of this one
owner (so through one helper). They cycle through the endings a student's cells have:
a clean exit, a failing command, an OOM kill, a timeout, an interrupt (the stop button:
KeyboardInterrupt from the output callback), a long-lived container with `exec`, and a
container on the bridge network. Each ending's result is checked as it comes back.

At the end, in this soak's own LABKIT_HOME (and only for the containers it made), it
counts what is left: container directories, cgroups, overlay mounts, veth ends, network
leases, scratch dirs, processes; and it compares the helper's memory (VmRSS) and open
file descriptors after a warm-up with the same at the end. It exits 1 if anything leaked
or grew beyond a small tolerance, or if an ending came back wrong.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RSS_TOLERANCE = 2 << 20   # bytes the helper may grow by (allocator noise), after warm-up
WARM_UP = 24


# --- the endings -----------------------------------------------------------------------

def ok(Container, ContainerSpec, made):
    result = track(Container(ContainerSpec(command="echo ok")), made).run()
    return result.stdout == "ok\n" and result.exit_code == 0


def failing(Container, ContainerSpec, made):
    return track(Container(ContainerSpec(command="exit 7")), made).run().exit_code == 7


def oom(Container, ContainerSpec, made):
    spec = ContainerSpec(command="dd if=/dev/zero of=/dev/null bs=64M count=1", memory="16m")
    return track(Container(spec), made).run().oom_killed


def timeout(Container, ContainerSpec, made):
    result = track(Container(ContainerSpec(command="sleep 30", timeout=0.3)), made).run()
    return result.timed_out and result.exit_code is None


def interrupt(Container, ContainerSpec, made):
    def stop_button(stream, text):
        raise KeyboardInterrupt

    container = track(Container(ContainerSpec(command="echo go; sleep 30")), made)
    try:
        container.run(on_output=stop_button)
    except KeyboardInterrupt:
        return container.result is not None and container.result.interrupted and container.state == "removed"
    return False


def exec_in_long_lived(Container, ContainerSpec, made):
    container = track(Container(ContainerSpec(command="sleep 60", memory="32m")), made)
    container.start(detach=True)
    try:
        first = container.exec("echo $((6 * 7))")
        second = container.exec("exit 3")
        return first.stdout == "42\n" and second.exit_code == 3
    finally:
        container.kill()
        container.remove()


def bridge(Container, ContainerSpec, made):
    spec = ContainerSpec(command="ip -4 -o addr show eth0", network="bridge")
    container = track(Container(spec), made)
    result = container.run()
    return result.exit_code == 0 and " inet " in result.stdout


ENDINGS = [ok, failing, oom, timeout, interrupt, exec_in_long_lived, bridge]


def track(container, made):
    made.append(container)
    return container


# --- what could leak -------------------------------------------------------------------

def process_figures(pid) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:   # "pipe:[81234]" -> "pipe", a path stays itself: what kind of thing is held
            kinds.append(re.sub(r":\[\d+\]$", "", os.readlink(f"/proc/{pid}/fd/{fd}")))
        except FileNotFoundError:
            pass
    return {"rss_bytes": rss, "open_fds": len(kinds), "fd_kinds": sorted(kinds)}


def figures_when_idle(pid, warm: dict, pool_filled, patience: float = 10.0) -> dict:
    """The helper's figures once it is idle. A container whose owner has its answer may
    still be in the helper for a moment (a killed one's supervisor not yet reported: its
    pipes and pidfd), so a count above the warm one is taken again for up to `patience`
    seconds: a descriptor that leaks is still there after that."""
    deadline = time.monotonic() + patience
    while True:
        pool_filled()
        figures = process_figures(pid)
        if figures["open_fds"] <= warm["open_fds"] or time.monotonic() >= deadline:
            return figures
        time.sleep(0.2)


def processes_of(leaves) -> list:
    """Processes in a cgroup of one of the soak's containers (each container's processes
    join its cgroup first). Not every process below this one or below the helper: under
    pytest other tests' kernels and containers live there too."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines = Path(f"/proc/{entry}/cgroup").read_text().splitlines()
            except OSError:
                continue
            if any(line.rsplit("/", 1)[-1] in leaves for line in lines):
                found.append(int(entry))
    return sorted(found)


def cgroups_of(leaves) -> list:
    left = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        if os.path.basename(root) == "labkit":
            left += [os.path.join(root, d) for d in dirs if d in leaves]
            dirs[:] = []
        elif root.count("/") > 6:
            dirs[:] = []
    return sorted(left)


def leftovers(home: Path, made: list) -> dict:
    """What is left of the containers in `made`. A container's cgroup is named after its
    id, or after the pool slot that served it (`Container.cgroup_name`)."""
    from labkit.net import ipam, veth

    ids = [container.id for container in made]
    leaves = set(ids) | {c.cgroup_name.rsplit("/", 1)[-1] for c in made if c.cgroup_name}

    containers = home / "containers"
    scratch = home / "tmp"
    with open("/proc/self/mountinfo") as table:
        mounts = [line.strip() for line in table if str(home) in line]
    prefixes = {veth.host_end_name(ident) for ident in ids}
    book = ipam.read_leases(home)
    netns_dir = Path("/run/netns")
    return {
        "container_dirs": sorted(os.listdir(containers)) if containers.is_dir() else [],
        "cgroups": cgroups_of(leaves),
        "mounts": mounts,
        "veths": sorted(name for name in veth.host_ends() if name in prefixes),
        "netns": sorted(n for n in os.listdir(netns_dir) if any(i[:8] in n for i in ids)) if netns_dir.is_dir() else [],
        "leases": sorted(book.leases) if book is not None else [],
        "scratch_dirs": sorted(os.listdir(scratch)) if scratch.is_dir() else [],
        "processes": processes_of(leaves),
    }


# --- the run ---------------------------------------------------------------------------

def soak(containers: int = 1000, concurrency: int = 8, home: Path | None = None, say=print) -> dict:
    """Run the soak in `home` (a fresh temp LABKIT_HOME by default); returns the report."""
    own_home = home is None
    home = Path(home or tempfile.mkdtemp(prefix="labkit-soak-"))
    os.environ["LABKIT_HOME"] = str(home)
    from labkit.runtime import Container, ContainerSpec
    from labkit.runtime.client.helper_client import get_helper, pool_filled, shutdown_helper

    made, wrong, lock = [], [], threading.Lock()
    counts = {ending.__name__: 0 for ending in ENDINGS}

    def one(index):
        ending = ENDINGS[index % len(ENDINGS)]
        try:
            right = ending(Container, ContainerSpec, made)
        except Exception as error:  # an ending that raises is an ending that came back wrong
            right = False
            error_text = f"{type(error).__name__}: {error}"
        else:
            error_text = ""
        with lock:
            counts[ending.__name__] += 1
            if not right:
                wrong.append(f"#{index} {ending.__name__} {error_text}".strip())

    try:
        for index in range(min(WARM_UP, containers)):
            one(index)
        helper_pid = get_helper().pid
        # Each figure is taken with no teardown under way (it holds a descriptor or two) and
        # the pool full (a ready slot holds three of the helper's: its pipes and socket).
        pool_filled()
        warm = process_figures(helper_pid)
        sequential = containers // 2
        started = time.monotonic()
        for index in range(WARM_UP, sequential):
            one(index)
        sequential_seconds = time.monotonic() - started
        say(f"sequential: {sequential - WARM_UP} containers (after {WARM_UP} to warm up) in {sequential_seconds:.1f} s")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(sequential, containers)))
        concurrent_seconds = time.monotonic() - started
        say(f"{concurrency}-way concurrent: {containers - sequential} containers in {concurrent_seconds:.1f} s")
        end = figures_when_idle(helper_pid, warm, pool_filled)
        left = leftovers(home, made)
    finally:
        shutdown_helper()
    after_helper = leftovers(home, made)
    from labkit.net import bridge as bridges

    # The bridge serves the whole LABKIT_HOME and goes once no live lease needs it.
    after_helper["bridge"] = [name for name in [bridges.find_bridge(home)] if name]
    report = {
        "containers": len(made), "endings": counts, "wrong_endings": wrong,
        "warm_up": WARM_UP, "sequential": max(containers // 2 - WARM_UP, 0),
        "sequential_seconds": round(sequential_seconds, 2), "concurrent_seconds": round(concurrent_seconds, 2),
        "concurrency": concurrency,
        "helper_after_warm_up": warm, "helper_at_end": end,
        "helper_rss_growth_bytes": end["rss_bytes"] - warm["rss_bytes"],
        "helper_fd_growth": end["open_fds"] - warm["open_fds"],
        "helper_fds_gained": sorted((Counter(end["fd_kinds"]) - Counter(warm["fd_kinds"])).elements()),
        "left_while_helper_runs": {key: len(value) for key, value in left.items()},
        "left_after_helper_exits": {key: len(value) for key, value in after_helper.items()},
        "left_details": {key: value[:5] for key, value in {**left, **after_helper}.items() if value},
    }
    report["passed"] = (not wrong and not any(report["left_while_helper_runs"].values())
                        and not any(report["left_after_helper_exits"].values())
                        and report["helper_rss_growth_bytes"] <= RSS_TOLERANCE and report["helper_fd_growth"] <= 0)
    if own_home and report["passed"]:
        shutil.rmtree(home, ignore_errors=True)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the report here")
    options = parser.parse_args(argv)
    if options.containers < 1 or options.concurrency < 1:
        parser.error(f"--containers and --concurrency must be at least 1 (got {options.containers}, "
                     f"{options.concurrency})")
    if os.geteuid() != 0:
        sys.exit("soak: needs root (containers are made for real)")
    report = soak(options.containers, options.concurrency)
    print(json.dumps(report, indent=1))
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=1))
    print("soak: " + ("PASSED: nothing leaked, the helper did not grow" if report["passed"] else "FAILED"))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
