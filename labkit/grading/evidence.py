"""What the grader sees of a submission's containers while its cells run.

A container run with `--out NAME` is gone (its cgroup deleted, its directory removed)
before any check cell can look, and the Result the student holds proves nothing (anyone
can build one). So while the cells run, the grader watches the sandbox's LABKIT_HOME
itself: every container directory that appears gives its name and cgroup, and the
cgroup's counters (OOM kills, forks refused at the pids limit, throttled periods) are
read while it exists. The kernel's own log (`box.kernel_log()`) adds the events it
prints with the cgroup's path: an OOM kill (`oom_memcg=`) and a refused fork. The
state.json files are the student's to forge; what counts is the real cgroup they lead
to, inside the sandbox.
"""

import json
import os
import threading
import time
from dataclasses import dataclass

from labkit.grading.targets import cgroup_at

LIST_EVERY = 0.005        # seconds between looks for new container directories
COUNT_EVERY = 0.02        # seconds between reads of the known cgroups' counters
STATE_MOST = 1 << 16      # bytes of a state.json read (labkit's are a few hundred)


@dataclass
class Sighting:
    id: str
    name: str
    cgroup: str                  # as state.json names it (below the sandbox's cgroup root)
    first_seen: float
    ran: bool = False            # a process was seen in its cgroup
    oom_kills: int = 0
    pids_limit_hits: int = 0
    throttled_periods: int = 0


class Watch:
    """A thread of the grader that records every container of a sandbox as it appears."""

    def __init__(self, box):
        self.box = box
        self.sightings = {}          # container id -> Sighting
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        self._cgroups = {}           # container id -> labkit Cgroup (owned by the box) or None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="labkit-grade-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _run(self):
        last_count = 0.0
        while not self._stop.wait(LIST_EVERY):
            try:
                self.look()
                if time.monotonic() - last_count >= COUNT_EVERY:
                    self.count()
                    last_count = time.monotonic()
            except Exception:  # noqa: BLE001 — a look that failed is retried at the next tick
                pass

    def look(self) -> None:
        root = os.path.join(self.box.home, "containers")
        try:
            entries = os.listdir(root)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry in self.sightings:
                continue
            try:
                with open(os.path.join(root, entry, "state.json"), "rb") as handle:
                    state = json.loads(handle.read(STATE_MOST))   # the student's file: read a bounded part
            except (OSError, ValueError):
                continue            # being written: the next tick reads it
            if not isinstance(state, dict):
                continue
            sighting = Sighting(entry, str(state.get("name") or ""), str(state.get("cgroup") or f"labkit/{entry}"),
                                time.monotonic())
            with self._lock:
                self.sightings[entry] = sighting
            self._count_one(sighting)

    def count(self) -> None:
        for sighting in list(self.sightings.values()):
            self._count_one(sighting)

    def _count_one(self, sighting) -> None:
        cgroup = self.cgroup_of(sighting)
        if cgroup is None:
            return
        try:
            stats = cgroup.stats()
            pids = cgroup.pids()
        except OSError:
            return
        with self._lock:
            # a process seen in its cgroup, or CPU time charged there: a container that started
            # and exited between two looks (a short one, started from a ready slot) still ran
            sighting.ran = sighting.ran or bool(pids) or bool(stats.cpu_seconds)
            sighting.oom_kills = max(sighting.oom_kills, stats.oom_kills or 0)
            sighting.pids_limit_hits = max(sighting.pids_limit_hits, stats.pids_limit_hits or 0)
            sighting.throttled_periods = max(sighting.throttled_periods, stats.throttled_periods or 0)

    def cgroup_of(self, sighting):
        """The real cgroup a sighting names, if it is (still) there and inside the sandbox."""
        cached = self._cgroups.get(sighting.id)
        if cached is not None and cached.exists():
            return cached
        for cgroup in candidate_cgroups(self.box, sighting.cgroup):
            if cgroup.exists() and owned(self.box, cgroup):
                self._cgroups[sighting.id] = cgroup
                return cgroup
        return None

    def named(self, name) -> list:
        """Sightings of containers called `name`, newest last."""
        with self._lock:
            return sorted((s for s in self.sightings.values() if s.name == name), key=lambda s: s.first_seen)


def candidate_cgroups(box, relative: str) -> list:
    """The host cgroups a name below "the" root could be: below the hierarchies' roots (a
    sandbox without a cgroup namespace) or below the sandbox's own cgroups."""
    relative = "/" + relative.strip("/")
    found = [cgroup_at(_every_controller(relative))]
    roots = sandbox_roots(box)
    if roots:
        found.append(cgroup_at({c: root.rstrip("/") + relative for c, root in roots.items()}))
    return found


def _every_controller(relative) -> dict:
    return {c: relative for c in ("memory", "cpu", "cpuacct", "pids", "unified")}


def sandbox_roots(box) -> dict:
    """{controller: the sandbox's cgroup as a path below its hierarchy's root}."""
    from labkit.cgroups.v1 import controller_mounts
    from labkit.cgroups.v2 import unified_mount

    mounts = dict(controller_mounts())
    unified = unified_mount()
    if unified:
        mounts["unified"] = unified
    roots = {}
    for controller, path in box.cgroup_paths.items():
        point = mounts.get(controller)
        if point and path.startswith(point.rstrip("/") + "/"):
            roots[controller] = path[len(point.rstrip("/")):]
    if "cpu" in roots and "cpuacct" in mounts and mounts.get("cpuacct") == mounts.get("cpu"):
        roots.setdefault("cpuacct", roots["cpu"])
    return roots


def owned(box, cgroup) -> bool:
    """Every directory of this cgroup in a hierarchy the sandbox has a cgroup of is inside
    the sandbox's subtree (and there is at least one)."""
    if hasattr(cgroup, "dirs"):
        dirs = [d for c, d in cgroup.dirs.items() if c in box.cgroup_paths]
    else:
        dirs = [cgroup.path]
    existing = [d for d in dirs if os.path.isdir(d)]
    return bool(existing) and all(box.owns_cgroup(d) for d in existing)


def log_names(box, relative: str) -> list:
    """How the kernel's log would name this cgroup (its path below a hierarchy's root)."""
    relative = "/" + relative.strip("/")
    names = {relative}
    names.update(root.rstrip("/") + relative for root in sandbox_roots(box).values())
    return sorted(names)


def kernel_events(box, relative: str) -> tuple:
    """(OOM kills, refused forks, the log lines) the kernel logged for this cgroup."""
    names = log_names(box, relative)
    oom = forks = 0
    lines = []
    for _, text in box.kernel_log():
        if "oom-kill:" in text and any(f"oom_memcg={n}," in text or text.endswith(f"oom_memcg={n}") for n in names):
            oom += 1
            lines.append("the kernel logged an OOM kill in its cgroup")
        elif "fork rejected by pids controller in" in text and any(text.rstrip().endswith(f" in {n}") for n in names):
            forks += 1
            lines.append("the kernel logged a fork refused by its pids limit")
    return oom, forks, lines
