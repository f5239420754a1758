"""What a probe looks at, resolved to real kernel state: a process (its host PID and the
cgroup the kernel says it is in) or a finished container's evidence.

A probe is written once and asks the current *world* to resolve its targets:

- in the student's kernel (`check` cells in JupyterLab, feedback only) the world is the
  kernel itself: a container name is one of its running Containers, `Answer("x")` is the
  object in the notebook;
- in `labkit grade run` the world is the grader's (labkit.grading.judge): names are
  looked up in the sandbox's LABKIT_HOME, every process and cgroup must be inside the
  sandbox, `Answer("x")` is a literal the kernel sent. Nothing the student made is called.

A target is a container name, a host PID (an int) or a cgroup path (a string starting
with "/"), given directly or through `Answer("variable")`.
"""

import contextvars
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from labkit.files import read_regular
from labkit.linux.processes import parent_of, start_time
from labkit.grading.checks import Observation, ProbeFailed


class Answer:
    """A notebook variable, read when the check runs: `Answer("box_pid")`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Answer({self.name!r})"

    def value(self):
        return current_world().answer(self.name)


@dataclass
class Process:
    """A process found from a target: what the kernel says about it, nothing more."""
    label: str                    # in words: "container ns-box", "PID 4242", "cgroup /x"
    pid: int                      # its host PID (the first process of a container)
    cgroup: object = None         # a labkit Cgroup over the real directories, or None


@dataclass
class Finished:
    """What the kernel showed of a container that may have ended (an OOM kill, forks
    refused at the pids limit, throttling), gathered while the cells ran."""
    label: str
    ran: bool                     # a process ran in its cgroup
    oom_kills: int = 0
    pids_limit_hits: int = 0
    throttled_periods: int = 0
    evidence: list = field(default_factory=list)     # kernel log lines, in words


def value_of(target):
    return target.value() if isinstance(target, Answer) else target


def running_process(target) -> Process:
    return current_world().process(value_of(target))


def finished_container(target) -> Finished:
    return current_world().finished(value_of(target))


def running_words(process, stats) -> str:
    """What a finished-or-not probe saw of a process that is still running."""
    return f"still running in cgroup /{process.cgroup.name}, {stats.oom_kills} OOM kill(s) there"


def poll(look, deadline: float, interval: float = 0.1) -> Observation:
    """Call `look()` until it passes or `deadline` seconds have gone; the last look counts."""
    end = time.monotonic() + deadline
    while True:
        seen = look()
        if seen.passed or time.monotonic() >= end:
            return seen
        time.sleep(interval)


# --- kernel state shared by both worlds ------------------------------------------------

def namespace_pids(pid) -> list:
    """NSpid: the process's PID in each PID namespace it is in, outermost first."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return [int(word) for word in line.split()[1:]]
    return [int(pid)]


_inside = threading.local()     # .root: this thread's root is a process's (in_root)


class _NoImportsInsideARoot:
    """Refuses every import in a thread that in_root moved into a process's root: the
    module files there are the sandbox's, which its root may have mounted over."""

    def find_spec(self, name, path=None, target=None):
        if getattr(_inside, "root", None):
            raise ImportError(f"no import ({name}) while reading inside the root of process {_inside.root}")
        return None


def in_root(pid, fn, *args, cwd=None):
    """`fn(*args)` in a new thread of ours whose root (and working directory, `cwd` as the
    process sees it) is process `pid`'s: unshare(CLONE_FS), then chroot to /proc/PID/root.
    Every path fn opens resolves as that process sees it, an absolute symlink or `..`
    included, so a link the student planted cannot lead the grader to a file of the host's
    (through /proc/PID/root alone, an absolute symlink resolves from the reader's root).
    The thread runs fn in a copy of the caller's context (its world) and ends with it;
    imports are refused while it is inside."""
    from labkit.linux import syscalls
    from labkit.linux.threads import call_in_thread

    context = contextvars.copy_context()

    def work():
        syscalls.unshare(syscalls.CLONE_FS)     # this thread's root and cwd, not the process's
        os.chroot(f"/proc/{pid}/root")
        os.chdir("/")
        _inside.root = pid
        if cwd is not None:
            os.chdir(cwd)
        return context.run(fn, *args)

    try:
        return call_in_thread(f"labkit-root-{pid}", work, daemon=True)
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise ProbeFailed(f"process {pid} is gone") from None
        raise


if not any(isinstance(finder, _NoImportsInsideARoot) for finder in sys.meta_path):
    sys.meta_path.insert(0, _NoImportsInsideARoot())


def cgroup_of_pid(pid):
    """The cgroup the kernel has `pid` in (/proc/PID/cgroup), as a labkit Cgroup."""
    return cgroup_at(host_cgroup_paths(pid))


def host_cgroup_paths(pid) -> dict:
    """{controller: path below its hierarchy's root} of `pid`, as the grader's cgroup
    namespace (the host's) sees it."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            lines = handle.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        raise ProbeFailed(f"no process {pid} is running") from None
    return _relative_paths(lines)


# The names labkit's runtime gives its own processes (prctl PR_SET_NAME in runtime/): the
# helper that forks every container, a detached container's monitor, a ready slot's first
# process, the --init reaper, the janitor.
LABKIT_RUNTIME_PROCESSES = frozenset({"labkit-helper", "labkit-monitor", "labkit-slot", "labkit-init",
                                      "labkit-janitor"})


def labkit_runtime_ancestor(pid, owns_pid) -> int | None:
    """The nearest of `pid` and its ancestors that is a process of labkit's runtime, looked
    for as far up as the processes are the submission's (`owns_pid`); None if none is."""
    seen = set()
    while pid > 1 and pid not in seen and owns_pid(pid):
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/comm") as handle:
                if handle.read().strip() in LABKIT_RUNTIME_PROCESSES:
                    return pid
        except OSError:
            return None
        pid = parent_of(pid)
        if pid is None:
            return None
    return None


def _relative_paths(lines) -> dict:
    """{controller: path below its hierarchy's root} ("unified" for cgroup v2)."""
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in (controllers.split(",") if controllers else ["unified"]):
            paths[controller] = path
    return paths


def cgroup_at(relative: dict):
    """A labkit Cgroup over the host directories of {controller: relative path}."""
    from labkit.cgroups import detect_mode
    from labkit.cgroups.v1 import CgroupV1, controller_mounts
    from labkit.cgroups.v2 import CgroupV2, unified_mount

    if detect_mode() == "v2":
        path = relative.get("unified", "/")
        return CgroupV2(path.strip("/"), os.path.join(unified_mount(), path.lstrip("/")))
    mounts = controller_mounts()
    dirs = {c: os.path.join(mounts[c], relative[c].lstrip("/")) for c in ("memory", "cpu", "cpuacct", "pids")
            if c in mounts and c in relative}
    name = relative.get("memory") or relative.get("pids") or next(iter(relative.values()), "/")
    return CgroupV1(name.strip("/"), dirs)


def cgroup_from_path(path: str) -> dict:
    """{controller: relative path} for a cgroup path a student gives: a host directory
    under a cgroup mount (/sys/fs/cgroup/memory/x) or a path below the roots (/x)."""
    from labkit.cgroups import detect_mode
    from labkit.cgroups.v1 import controller_mounts
    from labkit.cgroups.v2 import unified_mount

    path = os.path.normpath(path)
    if detect_mode() == "v2":
        root = unified_mount()
        relative = path[len(root):] if path.startswith(root.rstrip("/") + "/") else path
        return {"unified": relative or "/"}
    mounts = controller_mounts()
    for point in sorted(set(mounts.values()), key=len, reverse=True):
        if path.startswith(point.rstrip("/") + "/"):
            relative = path[len(point.rstrip("/")):]
            return {c: relative for c in mounts}
    return {c: path for c in mounts}


def first_process(pids) -> int | None:
    """A cgroup's first process: PID 1 of its own PID namespace if it has one, else the
    oldest (by start time)."""
    found = []
    for pid in pids:
        try:
            inner = namespace_pids(pid)[-1]
        except (OSError, ValueError, IndexError):
            continue
        started = start_time(pid)
        if started is not None:
            found.append((inner != 1, started, pid))
    return min(found)[2] if found else None


# --- the world: who resolves names -------------------------------------------------------

class KernelWorld:
    """The student's own kernel: names are its running Containers (feedback in JupyterLab;
    nothing here counts for a grade)."""

    reference = "self"        # whose namespaces are "the notebook's"

    def answer(self, name):
        namespace = _user_namespace()
        if name not in namespace:
            raise ProbeFailed(f"`{name}` is not set: run your answer cell above first")
        return namespace[name]

    def process(self, target) -> Process:
        from labkit.runtime import Container, get

        if isinstance(target, str) and not target.startswith("/"):
            try:
                target = get(target)
            except Exception:
                raise ProbeFailed(f"no running container named {target!r} in this notebook") from None
        if isinstance(target, Container):
            if target.state != "running" or target.result is not None:
                cause = target.result.cause if target.result else target.state
                raise ProbeFailed(f"container {target.name} is not running ({cause})")
            return Process(f"container {target.name}", target.pid, target.cgroup)
        return process_by_id(target, owns_pid=lambda pid: True, owns_cgroup=lambda cgroup: True)

    def finished(self, target) -> Finished:
        from labkit.runtime import Result

        if not isinstance(target, Result):
            process = self.process(target)
            stats = process.cgroup.stats()
            return Finished(process.label, True, stats.oom_kills, stats.pids_limit_hits, stats.throttled_periods or 0,
                            [running_words(process, stats)])
        stats = target.stats or {}
        return Finished(f"container {target.name}", True, int(target.oom_killed or stats.get("oom_kills") or 0),
                        int(stats.get("pids_limit_hits") or 0), int(stats.get("throttled_periods") or 0),
                        [target.cause])

    def image(self, name):
        from labkit.images import get_image

        return get_image(name)

    def read_inside(self, fn, *args):
        """fn(*args) where this kernel's paths are (its own filesystem)."""
        return fn(*args)

    def file_of(self, pid, path: str, most: int) -> bytes:
        """At most `most` bytes of the regular file at `path` as process `pid` sees it."""
        return read_regular(f"/proc/{pid}/root{path}", most)

    def in_netns(self, fn, *args):
        """fn in a thread of its own: a kernel runs cells inside an event loop, in which
        pyroute2 refuses to start its own (see labkit.net.rtnl)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labkit-probe") as pool:
            return pool.submit(fn, *args).result()

    def host_pid(self, pid: int) -> int | None:
        return pid

    def committed_container(self, made_from: dict, layer: str) -> tuple:
        """(whether that container ran here, True, the digest a commit of its read-write
        layer would have now, None once it is removed). In the kernel no watch ran: this
        is the student's own look, never a grade."""
        from labkit.images.commit import upper_digest
        from labkit.runtime.client.state import find_container

        try:
            return True, True, upper_digest(find_container(made_from["id"])["upper"])
        except Exception:  # noqa: BLE001 — removed since (or unreadable): nothing to compare with
            return True, True, None


def process_by_id(target, owns_pid, owns_cgroup) -> Process:
    """A host PID (int) or a cgroup path ("/...") to a Process, if it is the sandbox's."""
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise ProbeFailed(f"expected a container name, a PID or a cgroup path, found {type(target).__name__}")
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        pid = int(target)
        if not os.path.exists(f"/proc/{pid}") or not owns_pid(pid):
            raise ProbeFailed(f"no process {pid} is running in this submission")
        return Process(f"PID {pid}", pid, cgroup_of_pid(pid))
    if not target.startswith("/"):
        raise ProbeFailed(f"no running container named {target!r}")
    cgroup = cgroup_at(cgroup_from_path(target))
    if not cgroup.exists() or not owns_cgroup(cgroup):
        raise ProbeFailed(f"no cgroup {target} in this submission")
    pid = first_process([p for p in cgroup.pids() if owns_pid(p)])
    if pid is None:
        raise ProbeFailed(f"cgroup {target} has no process")
    return Process(f"cgroup {target}", pid, cgroup)


def _user_namespace() -> dict:
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is not None:
        return shell.user_ns
    import __main__

    return vars(__main__)


_world = contextvars.ContextVar("labkit_grading_world", default=None)


def current_world():
    return _world.get() or KernelWorld()


def using_world(world):
    """Set the world for this thread's probes; returns a token for `_world.reset`."""
    return _world.set(world)


def reset_world(token) -> None:
    _world.reset(token)
