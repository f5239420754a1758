"""What the benchmarks share: one timing loop, one summary of samples, workers that time
one thing per request, and one way to run crun or podman on this host.

Workers: a benchmark that compares A with B calls them in turn (a, b, a, b, ...), so
that a busy machine slows each alike and their ratio stays meaningful. Where A or B
needs a process of its own (its own labkit helper, another mount namespace), that
process is a worker: it reads one JSON request per line on stdin and answers one JSON
line on stdout (`serve`); the benchmark holds a `Worker` for it.

crun, and podman which runs crun, refuse a hybrid cgroup host ("cgroups in hybrid mode
not supported"). `command_worker()` is a worker inside a private mount namespace in
which the empty cgroup2 mount at /sys/fs/cgroup/unified is unmounted: the host's own
mounts are untouched. It times whole commands: `crun run`, `podman run`.

Benchmarks run as scripts, so this directory is on sys.path.
"""

import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HYBRID_CGROUP2 = "/sys/fs/cgroup/unified"


def samples(function, runs: int, warmup: int = 0) -> list:
    """Seconds taken by each of `runs` calls of `function()`, sorted, after `warmup` calls."""
    for _ in range(warmup):
        function()
    taken = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        taken.append(time.perf_counter() - started)
    return sorted(taken)


def in_turn(functions: dict, runs: int, warmup: int) -> dict:
    """{name: what each of `runs` calls returned}, the functions called in turn (a, b,
    a, b, …) so that a busy machine slows each alike, after `warmup` rounds not kept."""
    taken = {name: [] for name in functions}
    for round_number in range(warmup + runs):
        for name, function in functions.items():
            answer = function()
            if round_number >= warmup:
                taken[name].append(answer)
    return taken


def summary(seconds: list) -> dict:
    """Median, p90 and extremes in milliseconds, and the raw samples in seconds as given
    (in the order they were taken, where the caller kept it: a drift stays visible)."""
    ordered = sorted(seconds)
    return {"median_ms": statistics.median(ordered) * 1000, "p90_ms": percentile(ordered, 0.9) * 1000,
            "min_ms": ordered[0] * 1000, "max_ms": ordered[-1] * 1000, "runs": len(ordered),
            "samples_s": list(seconds)}


def percentile(ordered: list, fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def load_average() -> list:
    return list(os.getloadavg())


# --- tools a baseline needs --------------------------------------------------------------

def ensure_tool(name: str, install: bool = True):
    """(path, None) when `name` is on PATH, after `apt-get install -y name` if it was not
    and `install` allows; else (None, a sentence saying why it is missing)."""
    path = shutil.which(name)
    if path or not install:
        return path, None if path else f"{name} is not installed (apt-get install {name})"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, f"{name} is not installed and cannot be here (needs root and apt-get: apt-get install {name})"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):  # a fresh machine: no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", name], capture_output=True, text=True, env=env)
    path = shutil.which(name)
    if path is None:
        return None, f"apt-get install {name} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return path, None


def version_of(command: list) -> str | None:
    """The first line a tool prints for its version, or None if it is not there."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else None


def make_bundle(directory, layer_dir) -> str:
    """An OCI bundle on a copy of the busybox files, with the limits labkit's rows use.
    Returns the bundle directory (`directory`)."""
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
    return directory


def make_profiled_bundle(directory, layer_dir) -> str:
    """The bundle of `make_bundle` with the work labkit does for a container: Docker's
    default capabilities, labkit's default seccomp profile (Docker's, in Docker's JSON
    format, resolved for these capabilities and this machine into the OCI form), Docker's
    masked and read-only paths, /dev/pts, /dev/shm, /dev/mqueue and a cgroup mount, and a
    root that is an overlay on the busybox layer with a fresh read-write layer, mounted
    for each run by the worker (`time_command`'s "overlay"), as podman's storage does
    before it calls crun. Returns the bundle directory (`directory`)."""
    from labkit.linux.capabilities import CONTAINER_DEFAULT
    from labkit.runtime.plan import MASKED_PATHS, READONLY_PATHS
    from labkit.security.default_seccomp import default_profile

    os.makedirs(os.path.join(directory, "rootfs"))
    caps = sorted(f"CAP_{name.upper()}" for name in CONTAINER_DEFAULT)
    masked = [found for path in MASKED_PATHS for found in (sorted(glob.glob(path)) if "*" in path else [path])]
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
                    "env": ["PATH=/bin:/usr/bin"], "cwd": "/",
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": False},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 100000, "period": 100000},
                          "pids": {"limit": 64}, "devices": [{"allow": False, "access": "rwm"}]},
            "seccomp": oci_seccomp(default_profile(), set(caps)),
            "maskedPaths": masked,
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle)
    return directory


def oci_seccomp(profile: dict, caps: set) -> dict:
    """A Docker-format profile as the OCI runtime spec's `linux.seccomp` for a process with
    `caps` on this machine (x86_64): rules whose `includes`/`excludes` (capabilities,
    architectures, kernel) do not apply are left out, as Docker does when it builds a spec."""
    native = "amd64"
    syscalls = []
    for rule in profile["syscalls"]:
        includes, excludes = rule.get("includes", {}), rule.get("excludes", {})
        if not set(includes.get("caps", [])) <= caps or native not in includes.get("arches", [native]):
            continue
        if set(excludes.get("caps", [])) & caps or native in excludes.get("arches", []):
            continue
        entry = {"names": rule["names"], "action": rule["action"]}
        if "errnoRet" in rule:
            entry["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            entry["args"] = [{"index": a["index"], "value": a["value"], "valueTwo": a.get("valueTwo", 0), "op": a["op"]}
                             for a in rule["args"]]
        syscalls.append(entry)
    arches = next(([arch, *subs] for arch, subs in ((m["architecture"], m["subArchitectures"])
                                                     for m in profile["archMap"]) if arch == "SCMP_ARCH_X86_64"), [])
    return {"defaultAction": profile["defaultAction"], "defaultErrnoRet": profile.get("defaultErrnoRet", 1),
            "architectures": arches, "syscalls": syscalls}


# --- workers -----------------------------------------------------------------------------

class Worker:
    """The benchmark's side of a worker process (see the module's docstring)."""

    def __init__(self, command: list, name: str, env: dict | None = None, **popen):
        """`popen`: more for subprocess.Popen (user=, group=, cwd= for a worker as another user)."""
        self.name = name
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.errors, text=True, env=env, **popen)

    def send(self, request: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.process.wait()
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.stderr_tail()}") from None

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def ask(self, request: dict) -> dict:
        self.send(request)
        return self.receive()

    def stderr_tail(self) -> str:
        self.errors.seek(0)
        return self.errors.read().strip()[-500:]

    def close(self) -> None:
        """Closing stdin ends the worker's loop; it then exits (and stops its helper)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(handle) -> None:
    """The worker's side: answer each request line with `handle(request)` as one JSON
    line, or {"error": ...}. stdout is kept for the answers: anything else the worker
    or a library prints goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as error:  # noqa: BLE001 — reported to the benchmark, which stops
            reply = {"error": f"{type(error).__name__}: {error}"}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


def command_worker(name: str) -> Worker:
    """A worker that times whole commands in a mount namespace without the hybrid cgroup2
    mount (see the module's docstring). Requests: see `time_command`."""
    command = ["unshare", "--mount", "--propagation", "private", sys.executable, os.path.abspath(__file__),
               "--serve-commands"]
    return Worker(command, name)


def hide_hybrid_cgroup2() -> None:
    """Unmount the empty cgroup2 of a hybrid host, in this process's own mount namespace only."""
    if not os.path.ismount(HYBRID_CGROUP2):
        return  # pure v1 or pure v2 (there crun works as it is)
    # The benchmark started this worker through `unshare --mount`: its mount namespace
    # (the parent's) must differ from ours, or the unmount would hit the host.
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        raise RuntimeError("refusing to unmount the host's cgroup2: not in a private mount namespace")
    subprocess.run(["umount", HYBRID_CGROUP2], check=True)


def time_command(request: dict) -> dict:
    """Run request["argv"] request.get("repeat", 1) times, one after another; "{name}" in
    it becomes a fresh container name each time. On a failure, request["cleanup"] (same
    substitution) runs and the worker answers with the error. The answer: each run's
    seconds, the batch's start and end on the system-wide monotonic clock (which
    perf_counter is on Linux), and the CPU its reaped children used."""
    argv, cleanup, overlay = request["argv"], request.get("cleanup"), request.get("overlay")
    seconds, cleaned = [], []
    cpu_before = _children_cpu()
    start = time.perf_counter()
    for _ in range(request.get("repeat", 1)):
        name = f"labkit-bench-{os.getpid()}-{next(_names)}"
        command = [part.replace("{name}", name) for part in argv]
        began = time.perf_counter()
        layer = mount_overlay_root(overlay, name) if overlay else None
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds.append(time.perf_counter() - began)
        if layer:
            unmount_overlay_root(overlay, layer)
        cleaned.append(time.perf_counter() - began)
        if done.returncode != 0:
            if cleanup:
                subprocess.run([part.replace("{name}", name) for part in cleanup], stderr=subprocess.DEVNULL)
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): "
                               f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    end = time.perf_counter()
    return {"seconds": seconds, "cleaned": cleaned, "start": start, "end": end,
            "cpu_seconds": _children_cpu() - cpu_before}


def mount_overlay_root(overlay: dict, name: str) -> str:
    """The bundle's root as a container's: an overlay of overlay["lower"] under a fresh
    read-write layer (made next to the bundle), mounted at overlay["root"]. Returns the
    layer's directory, for `unmount_overlay_root`."""
    from labkit.linux import syscalls

    layer = os.path.join(overlay["scratch"], name)
    os.makedirs(os.path.join(layer, "upper"))
    os.mkdir(os.path.join(layer, "work"))
    syscalls.mount("overlay", overlay["root"], "overlay", 0,
                   f"lowerdir={overlay['lower']},upperdir={layer}/upper,workdir={layer}/work,"
                   "redirect_dir=off,index=off,metacopy=off" + (",volatile" if overlay.get("volatile") else ""))
    return layer


def unmount_overlay_root(overlay: dict, layer: str) -> None:
    from labkit.linux import syscalls

    syscalls.umount2(overlay["root"], 0)
    shutil.rmtree(layer)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_names = iter(range(10 ** 9))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-commands"]:
        hide_hybrid_cgroup2()
        serve(time_command)
    elif sys.argv[1:] == ["--serve-commands", "--as-is"]:
        serve(time_command)   # an ordinary user's worker: rootless podman with runc needs no unmount
    else:
        sys.exit("usage: (a worker started by the benchmarks) timing.py --serve-commands [--as-is]")
