"""Container start → exit of /bin/true, phase by phase, measured in one run against crun.

    python benchmarks/startup.py [--runs 100] [--batch 100] [--repeats 3] [--cli-runs 20]
                                 [--quick] [--no-install] [--json FILE]

1. One container at a time (median and p90 of --runs; the variants are called in turn,
   so a busy machine slows them alike). Each phase is read by the client on one clock
   from the moment it asks: exec (the helper reports STARTED), exit (EXITED), cleaned
   (the helper's teardown is finished: `labkit.runtime.client.helper_client.settle()` returns).
   - labkit:              Container.run(): six namespaces, memory+cpu+pids(+devices)
                          cgroups, overlay root with an init layer, pivot_root, /proc
                          /dev /sys, Docker's default profile (capabilities, seccomp,
                          device allow-list), exec, removal
   - labkit --privileged: the same without the profile: the difference is its cost
   - … pool off:          LABKIT_POOL=0 in the helper's environment (the pool of ready
                          cgroups and directories switched off)
   - crun run:            an OCI bundle on the same busybox files with the same limits,
                          as a whole process; it deletes the container before it exits,
                          so its exit is also its "cleaned". No profile: crun bare
   - crun run, same work: the same with what labkit does: Docker's default capabilities,
                          labkit's default seccomp profile (Docker's JSON, resolved into
                          the OCI form), the masked and read-only paths, /dev/pts, /dev/shm,
                          /dev/mqueue, a cgroup mount, and an overlay root with a fresh
                          read-write layer that the worker mounts before each run (as
                          podman's storage does), unmounted and removed after it ("cleaned")
   - runc run:            the same, when runc is installed (it is not installed for this)
   - bare fork+exec, util-linux unshare (6 namespaces): floors no runtime goes below
   - labkit rootless:     the same container started by a throw-away ordinary user (made
                          and removed by the benchmark): a user namespace first, no
                          cgroup where the host delegates none (cgroup v1), so no limits
   - podman rootless (runc): `podman --runtime runc run --rm --rootfs` by the same user
                          (crun refuses hybrid hosts), called in the same turns
   Each labkit variant runs in a client process of its own (its own helper), one per
   pool setting; crun runs in a mount namespace without the hybrid cgroup2 mount, which
   it refuses (benchmarks/timing.py).
1c. The disk busy: labkit and crun bare in turn again (a third of --runs each) while
   `stress-ng --iomix 1` writes, reads and syncs files on the filesystem of LABKIT_HOME
   (installed with apt when missing; the row says so where it cannot be). A container's
   exit waits for what the kernel does to its overlay and ext4 directories; a busy disk
   makes that slow.
2. 100 sequential: Container.run() back to back in one client, then settle(); 2×50
   concurrent: two client processes, each with its own helper, 50 each, started
   together. The same for crun. "No slowdown beyond the 2 cores": two at once may not
   take longer than the larger of half the sequential time and the sequential run's CPU
   time spread over the host's cores (the 2-core bound), give or take 10 %.
3. The command line as a whole process: benchmarks/cli.py's rows.

Goals (issues 13 and 25): exit ≤ 0.7× crun bare and ≤ 0.5× crun with the same work, the
profile on; ≤ 0.8× crun bare with the disk busy; 100 sequential ≤ 1.0 s; 2×50 within the 2-core bound; `labkit run -- true`
≤ 0.6× podman. Printed, never asserted.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHASES = ("exec", "exit", "cleaned")
STARTUP_GOAL = 0.7          # × crun, start → exit, profile on
SAME_WORK_GOAL = 0.5        # × crun with the same profile, mounts and overlay root
DISK_BUSY_GOAL = 0.8        # × crun bare, start → exit, both with `stress-ng --iomix 1` beside them
SEQUENTIAL_GOAL_MS = 10.0   # a container, in 100 one after another (≤ 1.0 s for 100)
CONCURRENCY_SLACK = 1.10    # 2×50 may be this much above the 2-core bound
WARMUP = 5


# --- the labkit client (a worker process: its own helper) --------------------------------

def container_spec(privileged: bool, limits: bool = True):
    from labkit.runtime import ContainerSpec

    if not limits:   # rootless without delegation: limits would not hold, each would say so
        return ContainerSpec(command=["/bin/true"], privileged=privileged)
    return ContainerSpec(command=["/bin/true"], memory="256m", cpus=1, pids=64, privileged=privileged)


def serve_labkit(limits: bool = True) -> None:
    from labkit.images import get_image
    from labkit.runtime.client.helper_client import get_helper

    get_image("busybox")
    get_helper()
    specs = {False: container_spec(False, limits), True: container_spec(True, limits)}

    def handle(request):
        spec = specs[bool(request.get("privileged"))]
        if request["op"] == "phases":
            return one_container(spec)
        if request["op"] == "batch":
            return batch(spec, request["count"])
        raise ValueError(f"unknown op {request['op']!r}")

    timing.serve(handle)


def one_container(spec) -> dict:
    """request → exec → exit → cleaned of one container, in seconds from the request."""
    from labkit.runtime import Container
    from labkit.runtime.client.helper_client import get_helper, settle

    helper = get_helper().pid
    cpu = helper_cpu_seconds(helper)
    began = time.perf_counter()
    container = Container(spec)
    try:
        container.start(auto_remove=True)
        started = time.perf_counter()
        result = container.wait()
        exited = time.perf_counter()
    finally:
        container.remove()
    settle()
    cleaned = time.perf_counter()
    result.check()
    return {"exec": started - began, "exit": exited - began, "cleaned": cleaned - began,
            "helper_cpu_s": helper_cpu_seconds(helper) - cpu}


def batch(spec, count: int) -> dict:
    """`count` containers back to back, then settle(). Times on the system-wide monotonic
    clock, so that two clients' batches can be laid side by side."""
    from labkit.runtime import Container
    from labkit.runtime.client.helper_client import get_helper, settle

    helper = get_helper().pid
    settle()
    cpu = own_cpu_seconds() + helper_cpu_seconds(helper)
    seconds = []
    start = time.perf_counter()
    for _ in range(count):
        began = time.perf_counter()
        Container(spec).run().check()
        seconds.append(time.perf_counter() - began)
    exited = time.perf_counter()
    settle()
    end = time.perf_counter()
    return {"start": start, "exited": exited, "end": end, "seconds": seconds,
            "cpu_seconds": own_cpu_seconds() + helper_cpu_seconds(helper) - cpu}


def helper_cpu_seconds(pid) -> float:
    """utime + stime of the helper, of its reaped children, and of the children it still
    has (the janitor, which lets go of containers' mount namespaces and removes their
    directories, and ready slots' first processes), from /proc/PID/stat. Without the live
    ones, work that moved from a reaped supervisor to the janitor left the count. (A child
    reaped between the two reads is counted in neither: a few ms in a batch.)"""
    return _cpu_ticks(pid, children=True) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid, children=False) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    ticks = sum(int(value) for value in fields[11:15])
    if children:
        for child in _children(pid):
            ticks += _cpu_ticks(child, children=True)
    return ticks


def _children(pid) -> list:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def labkit_worker(name: str, pool: bool, checkout: str | None = None) -> timing.Worker:
    """A client process of its own (its own helper); `checkout`: labkit from another
    checkout (--before), whose own startup.py serves the same requests."""
    env = dict(os.environ)
    env.pop("LABKIT_POOL", None)
    if not pool:
        env["LABKIT_POOL"] = "0"
    script = os.path.join(checkout, "benchmarks", "startup.py") if checkout else os.path.abspath(__file__)
    if checkout:
        env["PYTHONPATH"] = checkout   # its labkit, not the one installed in this environment
    return timing.Worker([sys.executable, script, "--serve-labkit"], name, env)


def labkit_knows_pool() -> bool:
    """Whether this labkit reads LABKIT_POOL at all (before the pool lands it does not,
    and the "pool off" rows measure the same runtime as the others)."""
    import labkit

    sources = Path(labkit.__file__).parent.rglob("*.py")
    return any("LABKIT_POOL" in path.read_text(errors="replace") for path in sources)


# --- 1. one container at a time ----------------------------------------------------------

def oci_argv(runtime, bundle) -> tuple:
    """`runtime run` of the bundle, and what removes it if the run fails."""
    return [runtime, "run", "--bundle", bundle, "{name}"], [runtime, "delete", "--force", "{name}"]


def measure_phases(runs: int, bundle: str, runtimes: list, same_work: dict | None = None,
                   rootless: dict | None = None, before: str | None = None) -> dict:
    """Every variant called in turn, `runs` rounds after WARMUP rounds. `runtimes`: the
    OCI runtimes (crun, runc) to time on `bundle` beside labkit. `same_work`: crun's
    bundle with labkit's work ({"bundle", "overlay"}: timing.make_profiled_bundle). `rootless`:
    more variants (rootless_variants), called in the same turns. `before`: another
    checkout, whose labkit is called in the same turns too ("labkit (before)")."""
    with labkit_worker("labkit client", pool=True) as pooled, \
            labkit_worker("labkit client, pool off", pool=False) as unpooled, \
            (labkit_worker("labkit client (before)", True, before) if before else contextlib.nullcontext()) as older:
        variants = {
            "labkit": lambda: pooled.ask({"op": "phases"}),
            **({"labkit (before)": lambda: older.ask({"op": "phases"})} if before else {}),
            "labkit --privileged": lambda: pooled.ask({"op": "phases", "privileged": True}),
            "labkit, pool off": lambda: unpooled.ask({"op": "phases"}),
            "labkit --privileged, pool off": lambda: unpooled.ask({"op": "phases", "privileged": True}),
            "bare fork+exec": lambda: {"exit": _seconds(bare)},
            "unshare (6 ns)": lambda: {"exit": _seconds(unshare)},
            **(rootless or {}),
        }
        workers = []
        try:
            for runtime in runtimes:
                workers.append(timing.command_worker(f"{runtime} worker"))
                variants[f"{runtime} run"] = _oci_variant(workers[-1], *oci_argv(runtime, bundle))
                if runtime == "crun" and same_work:
                    variants["crun run, same work"] = _oci_variant(workers[-1], *oci_argv(runtime, same_work["bundle"]),
                                                                   overlay=same_work["overlay"])
            taken = timing.in_turn(variants, runs, WARMUP)
        finally:
            for worker in workers:
                worker.close()
    rows = {}
    for name, answers in taken.items():
        row = {phase: timing.summary([a[phase] for a in answers]) for phase in PHASES
               if answers[0].get(phase) is not None}
        if "helper_cpu_s" in answers[0]:
            row["helper_cpu_ms"] = sum(a["helper_cpu_s"] for a in answers) / len(answers) * 1000
        rows[name] = row
    return rows


def measure_disk_busy(runs: int, bundle: str, install: bool, notes: list) -> dict | None:
    """labkit's and crun's (bare) start → exit, called in turn, with `stress-ng --iomix 1`
    running on the filesystem of LABKIT_HOME all along. None (and a note) without
    stress-ng or crun."""
    from labkit.home import labkit_home

    stress, why = timing.ensure_tool("stress-ng", install)
    if why:
        notes.append(f"the disk-busy row is missing: {why}")
        return None
    with tempfile.TemporaryDirectory(prefix="labkit-bench-iomix-", dir=labkit_home().parent) as where, \
            labkit_worker("labkit client, disk busy", pool=True) as pooled, \
            timing.command_worker("crun worker, disk busy") as crun, \
            _running([stress, "--iomix", "1", "--temp-path", where, "--timeout", "0", "--quiet"]):
        time.sleep(2)   # its workers under way
        taken = timing.in_turn({"labkit": lambda: pooled.ask({"op": "phases"}),
                                "crun run": _oci_variant(crun, *oci_argv("crun", bundle))}, runs, WARMUP)
    return {name: {phase: timing.summary([a[phase] for a in answers]) for phase in ("exit", "cleaned")}
            for name, answers in taken.items()}


@contextlib.contextmanager
def _running(argv):
    """`argv` running in a process group of its own, for the block; then stopped, all of it
    (SIGTERM: stress-ng removes its files; SIGKILL after 30 s)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _oci_variant(worker, argv, cleanup, overlay=None):
    def once():
        answer = worker.ask({"argv": argv, "cleanup": cleanup, "overlay": overlay})
        # crun deletes the container before it exits; the overlay root, when there is
        # one, is unmounted and its layer removed after that ("cleaned")
        return {"exit": answer["seconds"][0], "cleaned": answer["cleaned"][0]}

    return once


def _seconds(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def bare():
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    os.waitpid(pid, 0)


def unshare():
    subprocess.run(["unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--cgroup", "--fork", "/bin/true"],
                   check=True)


# --- 1b. rootless: the same start → exit as an ordinary user --------------------------------

@contextlib.contextmanager
def rootless_variants(layer: str, notes: list):
    """A throw-away user (tests/throwaway_users.py: made here, removed with all it ran), a
    rootless labkit worker and a rootless podman (runc) worker of theirs; yields the
    variants for measure_phases, or {} (with a note) where this host cannot."""
    import cli

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from throwaway_users import throwaway_user, why_user_cannot_run_this_checkout

    python = "/usr/bin/python3"   # this one may live in root's home, which the user cannot read
    if not os.path.exists("/usr/bin/newuidmap") or not os.access(python, os.X_OK):
        notes.append("no rootless rows: newuidmap (Debian package uidmap) or /usr/bin/python3 is missing")
        yield {}
        return
    if why_user_cannot_run_this_checkout():
        notes.append(f"no rootless rows: {why_user_cannot_run_this_checkout()}")
        yield {}
        return
    with throwaway_user("lkbench") as user, contextlib.ExitStack() as workers:
        import sysconfig

        runtime_dir = os.path.join(user.home, ".run")   # podman's XDG_RUNTIME_DIR, gone with the home
        os.mkdir(runtime_dir, 0o700)
        os.chown(runtime_dir, user.uid, user.gid)
        env = user.environment({"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}",
                                "PYTHONDONTWRITEBYTECODE": "1", "XDG_RUNTIME_DIR": runtime_dir})
        as_user = {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": user.home}
        labkit = workers.enter_context(timing.Worker(
            [python, os.path.abspath(__file__), "--serve-labkit", "--no-limits"], "labkit rootless client", env, **as_user))
        variants = {"labkit rootless": lambda: labkit.ask({"op": "phases"})}
        if shutil.which("podman") and shutil.which("runc"):
            rootfs = os.path.join(user.home, "rootfs")
            shutil.copytree(layer, rootfs, symlinks=True)   # podman writes /etc files into a --rootfs
            for directory, _, files in os.walk(rootfs):
                for path in [directory, *(os.path.join(directory, name) for name in files)]:
                    os.lchown(path, user.uid, user.gid)
            podman = workers.enter_context(timing.Worker(
                [python, os.path.join(ROOT, "benchmarks", "timing.py"), "--serve-commands", "--as-is"],
                "podman rootless worker", env, **as_user))
            argv = ["podman", "--runtime", "runc"] + cli.podman_command(rootfs)[1:]
            variants["podman rootless (runc)"] = _oci_variant(podman, argv, None)
        else:
            notes.append("no rootless podman row: podman or runc is not installed")
        yield variants


# --- 2. 100 sequential, 2×50 concurrent --------------------------------------------------

def measure_batches(count: int, repeats: int, bundle: str | None, before: str | None = None) -> dict:
    """`repeats` rounds of: labkit sequential, labkit 2×half concurrent, and the same for
    crun on `bundle` (None: no crun); with `before` (another checkout), its labkit
    sequential too. Each entry: wall seconds and CPU seconds per round."""
    half = count // 2
    runs = {name: _batch_record() for name in ("labkit sequential", "labkit concurrent")}
    if before:
        runs["labkit (before) sequential"] = _batch_record()
    with labkit_worker("labkit client A", pool=True) as first, labkit_worker("labkit client B", pool=True) as second, \
            (labkit_worker("labkit client (before)", True, before) if before else contextlib.nullcontext()) as older:
        crun_workers = [timing.command_worker(f"crun worker {n}") for n in "AB"] if bundle else []
        try:
            if bundle:
                runs.update({name: _batch_record() for name in ("crun sequential", "crun concurrent")})
                argv, cleanup = oci_argv("crun", bundle)
                for worker in crun_workers:
                    worker.ask({"argv": argv, "cleanup": cleanup, "repeat": WARMUP})
            for worker in (first, second, *([older] if before else [])):
                worker.ask({"op": "batch", "count": WARMUP})
            for _ in range(repeats):
                _record(runs["labkit sequential"], [first], {"op": "batch", "count": count})
                if before:
                    _record(runs["labkit (before) sequential"], [older], {"op": "batch", "count": count})
                _record(runs["labkit concurrent"], [first, second], {"op": "batch", "count": half})
                if bundle:
                    _record(runs["crun sequential"], crun_workers[:1],
                            {"argv": argv, "cleanup": cleanup, "repeat": count})
                    _record(runs["crun concurrent"], crun_workers,
                            {"argv": argv, "cleanup": cleanup, "repeat": half})
        finally:
            for worker in crun_workers:
                worker.close()
    cores = os.cpu_count() or 1
    result = {"count": count, "concurrent": f"2x{half}", "cores": cores, "runs": runs}
    if before:
        result["labkit (before)"] = {"sequential_s": statistics.median(runs["labkit (before) sequential"]["wall_s"])}
    for who in ("labkit", "crun"):
        if f"{who} sequential" not in runs:
            continue
        sequential = statistics.median(runs[f"{who} sequential"]["wall_s"])
        concurrent = statistics.median(runs[f"{who} concurrent"]["wall_s"])
        cpu = statistics.median(runs[f"{who} sequential"]["cpu_s"])
        bound = max(sequential / min(2, cores), cpu / cores)
        result[who] = {"sequential_s": sequential, "per_container_ms": sequential / count * 1000,
                       "sequential_goal_s": SEQUENTIAL_GOAL_MS * count / 1000,
                       "concurrent_s": concurrent, "sequential_cpu_s": cpu, "two_core_bound_s": bound,
                       "concurrent_to_sequential": concurrent / sequential,
                       "within_bound": concurrent <= bound * CONCURRENCY_SLACK,
                       "each_sequential": _each(runs[f"{who} sequential"]),
                       "each_concurrent": _each(runs[f"{who} concurrent"])}
    return result


def _each(record) -> dict:
    """Median and p90 of one container's start → exit within the batches (ms)."""
    summary = timing.summary([seconds for batch in record["each_s"] for seconds in batch])
    return {key: summary[key] for key in ("median_ms", "p90_ms", "runs")}


def _batch_record() -> dict:
    return {"wall_s": [], "cpu_s": [], "each_s": []}


def _record(into: dict, workers: list, request: dict) -> None:
    """One batch on each worker at once; wall from the first start to the last end (the
    last teardown included), CPU of all, and each container's own start → exit."""
    for worker in workers:
        worker.send(request)
    answers = [worker.receive() for worker in workers]
    into["wall_s"].append(max(a["end"] for a in answers) - min(a["start"] for a in answers))
    into["cpu_s"].append(sum(a["cpu_seconds"] for a in answers))
    into["each_s"].append([seconds for a in answers for seconds in a["seconds"]])


# --- the report ----------------------------------------------------------------------------

def measure(runs, batch_count, repeats, cli_runs, install=True, before=None) -> dict:
    import cli

    from labkit.images import get_image

    layer = str(get_image("busybox").layer_dirs[0])
    notes = []
    crun, why = timing.ensure_tool("crun", install)
    if why:
        notes.append(why)
    runtimes = [name for name, present in (("crun", crun), ("runc", shutil.which("runc"))) if present]
    if not labkit_knows_pool():
        notes.append("this labkit does not read LABKIT_POOL: the 'pool off' rows run the same runtime as the others")
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as directory, \
            rootless_variants(layer, notes) as rootless:
        bundle = timing.make_bundle(os.path.join(directory, "bare"), layer)
        same_work = None
        if crun:
            same_work = {"bundle": timing.make_profiled_bundle(os.path.join(directory, "same-work"), layer)}
            os.mkdir(os.path.join(directory, "layers"))
            same_work["overlay"] = {"lower": layer, "root": os.path.join(same_work["bundle"], "rootfs"),
                                    "scratch": os.path.join(directory, "layers")}
        phases = measure_phases(runs, bundle, runtimes, same_work, rootless, before)
        disk_busy = measure_disk_busy(max(3, runs // 3), bundle, install, notes) if crun else None
        batches = measure_batches(batch_count, repeats, bundle if crun else None, before)
    command_line = cli.measure(cli_runs, layer, install)
    notes += command_line.pop("notes")
    return {"phases": phases, "disk_busy": disk_busy, "batches": batches, "cli": command_line, "notes": notes,
            "parameters": {"runs": runs, "batch": batch_count, "repeats": repeats, "cli_runs": cli_runs}}


def report(data: dict) -> None:
    phases, batches = data["phases"], data["batches"]
    crun = phases.get("crun run", {}).get("exit", {}).get("median_ms")
    print(f"one container, `true` (median / p90 ms of {data['parameters']['runs']}, variants called in turn)")
    print(f"{'':30} {'request→exec':>15} {'→exit':>15} {'→cleaned':>15} {'exit ÷ crun':>12}")
    for name, row in phases.items():
        cells = [f"{row[p]['median_ms']:7.2f} /{row[p]['p90_ms']:6.2f}" if p in row else "" for p in PHASES]
        ratio = f"{row['exit']['median_ms'] / crun:12.2f}" if crun else ""
        print(f"{name:30} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {ratio}")
    profile = phases["labkit"]["helper_cpu_ms"] - phases["labkit --privileged"]["helper_cpu_ms"]
    print(f"Docker's default profile costs {profile:.2f} ms of CPU a start in the helper and its processes "
          f"({phases['labkit']['helper_cpu_ms']:.2f} vs {phases['labkit --privileged']['helper_cpu_ms']:.2f} ms)")
    if crun:
        ratio = phases["labkit"]["exit"]["median_ms"] / crun
        print(f"labkit / crun, start → exit = {ratio:.2f} (goal ≤ {STARTUP_GOAL}: {verdict(ratio <= STARTUP_GOAL)})")
    same = phases.get("crun run, same work", {}).get("exit", {}).get("median_ms")
    if same:
        ratio = phases["labkit"]["exit"]["median_ms"] / same
        print(f"labkit / crun with the same work, start → exit = {ratio:.2f} "
              f"(goal ≤ {SAME_WORK_GOAL}: {verdict(ratio <= SAME_WORK_GOAL)})")
    busy = data.get("disk_busy")
    if busy:
        ratio = busy["labkit"]["exit"]["median_ms"] / busy["crun run"]["exit"]["median_ms"]
        print(f"with the disk busy (stress-ng --iomix 1): labkit {busy['labkit']['exit']['median_ms']:.2f} ms, "
              f"crun {busy['crun run']['exit']['median_ms']:.2f} ms, start → exit = {ratio:.2f} "
              f"(goal ≤ {DISK_BUSY_GOAL}: {verdict(ratio <= DISK_BUSY_GOAL)})")
    older = phases.get("labkit (before)", {}).get("exit", {}).get("median_ms")
    if older:
        print(f"labkit after ÷ before, start → exit = {phases['labkit']['exit']['median_ms'] / older:.2f}; "
              f"request → exec = {phases['labkit']['exec']['median_ms'] / phases['labkit (before)']['exec']['median_ms']:.2f}"
              " (same turns)")
    rootless = phases.get("labkit rootless", {}).get("exit", {}).get("median_ms")
    if rootless:
        podman = phases.get("podman rootless (runc)", {}).get("exit", {}).get("median_ms")
        versus = f"; ÷ rootless podman (runc) = {rootless / podman:.2f}" if podman else ""
        print(f"rootless labkit, start → exit ÷ root labkit = {rootless / phases['labkit']['exit']['median_ms']:.2f}"
              f"{versus} (same run, in turn)")
    print(f"\n{batches['count']} containers (median of {len(batches['runs']['labkit sequential']['wall_s'])} rounds, "
          f"{batches['cores']} cores)")
    for who in ("labkit", "crun"):
        if who in batches:
            row = batches[who]
            print(f"  {who:7} sequential {row['sequential_s']:6.2f} s = {row['per_container_ms']:.1f} ms a container "
                  f"({row['sequential_cpu_s']:.2f} s CPU; one start → exit: median "
                  f"{row['each_sequential']['median_ms']:.1f} ms)")
            print(f"  {'':7} {batches['concurrent']} concurrent {row['concurrent_s']:6.2f} s = "
                  f"{row['concurrent_to_sequential']:.2f}× sequential; 2-core bound {row['two_core_bound_s']:.2f} s "
                  f"(one start → exit: median {row['each_concurrent']['median_ms']:.1f} ms)")
    if "labkit (before)" in batches:
        older = batches["labkit (before)"]["sequential_s"]
        print(f"  labkit (before) sequential {older:6.2f} s: after ÷ before = "
              f"{batches['labkit']['sequential_s'] / older:.2f} (same rounds, in turn)")
    labkit = batches["labkit"]
    goal = labkit["sequential_goal_s"]
    print(f"  labkit: {batches['count']} sequential ≤ {goal:.2f} s: {verdict(labkit['sequential_s'] <= goal)}; "
          f"{batches['concurrent']} within the 2-core bound (+{CONCURRENCY_SLACK - 1:.0%}): {verdict(labkit['within_bound'])}")
    print()
    import cli

    cli.report(data["cli"])
    for note in data["notes"]:
        print(f"note: {note}")


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="containers per variant, one at a time")
    parser.add_argument("--batch", type=int, default=100,
                        help="containers in the sequential batch (half in each client concurrently)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the batches")
    parser.add_argument("--cli-runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks that everything runs")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install a missing crun or podman")
    parser.add_argument("--json", help="also write the rows and raw samples to this file")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also time the labkit of another checkout (e.g. a worktree of main), in the same turns")
    parser.add_argument("--serve-labkit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-limits", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_labkit:
        serve_labkit(limits=not options.no_limits)
        return
    if os.geteuid() != 0:
        sys.exit("benchmarks/startup.py needs root: containers make namespaces, cgroups and mounts")
    if options.quick:
        options.runs, options.batch, options.repeats, options.cli_runs = 3, 6, 1, 2
    data = measure(options.runs, options.batch, options.repeats, options.cli_runs, install=not options.no_install,
                   before=options.before and os.path.abspath(options.before))
    report(data)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(data, handle, indent=1)


if __name__ == "__main__":
    main()
