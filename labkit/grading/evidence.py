"""What the grader sees of a submission's containers while its cells run.

A container run with `--out NAME` is gone (its cgroup deleted, its directory removed)
before any check cell can look, and the Result the student holds proves nothing (anyone
can build one). So while the cells run, the grader watches the sandbox's LABKIT_HOME
itself: every container directory that appears gives its name and cgroup, and the
cgroup's counters (OOM kills, forks refused at the pids limit, throttled periods) are
read while it exists. The kernel's own log (`box.kernel_log()`) adds the events it
prints with the cgroup's path, for a container gone before a count: an OOM kill and a
refused fork, read only in the kernel's exact words from the start of a record, and only
for a cgroup the watch saw inside the sandbox (a kernel message can quote the student's
text: overlayfs echoes its mount options, so "oom_memcg=<cgroup>," inside some record is
no evidence). The state.json files are the student's to forge; what counts is the real
cgroup they lead to, inside the sandbox.

Images are watched the same way: an image's history may say its top layer was committed
from a container, but the manifest is the student's to write. When a manifest that says
so first appears, the watch takes the digest a commit of that container's read-write
layer would have (labkit.images.commit.upper_digest) while it is there; a commit check
compares the image's top layer with that (layers.commit_excludes_init). A layer made by
hand and ascribed to a container already removed finds no read-write layer to match.
"""

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.files import read_regular
from labkit.grading.layers import committed_from, upper_digest_or_none
from labkit.grading.targets import cgroup_at, in_root
from labkit.images.store import Store
from labkit.linux.processes import start_time
from labkit.runtime.container_dir import ContainerDir

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
    logged_as: dict = field(default_factory=dict)   # {controller: its real cgroup's path as the
                                                    # kernel logs it}, once the watch saw it
    processes: set = field(default_factory=set)     # {(host PID, start time)} seen in its cgroup


@dataclass
class CommitSeen:
    image: str
    layer: str                   # the top layer's digest, as the manifest names it
    container: str               # the container id its history names
    upper: str | None            # the digest a commit of that container's read-write layer
                                 # had when the manifest first appeared; None: it was gone


class Watch:
    """A thread of the grader that records every container of a sandbox as it appears."""

    def __init__(self, box):
        self.box = box
        self.sightings = {}          # container id -> Sighting
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        self._cgroups = {}           # container id -> labkit Cgroup (owned by the box) or None
        self.commits = {}            # (top layer digest, container id) -> CommitSeen, the first seen
        self._manifests = set()      # (file name, inode) of every manifest looked at

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="labkit-grade-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _run(self):
        # Evidence of a short container exists only while its cgroup does (a few ms after
        # its exit): on a busy host this thread must not wait behind the work it watches.
        # Root may raise a thread's priority; elsewhere it stays as it is.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        except OSError:
            pass
        last_count = 0.0
        while not self._stop.wait(LIST_EVERY):
            try:
                self.look()
                self.look_at_images()
                if time.monotonic() - last_count >= COUNT_EVERY:
                    self.count()
                    last_count = time.monotonic()
                else:
                    self.count(not_yet_ran=True)
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
                # the student's file: a bounded part of a regular file, never a FIFO (its open
                # would wait for a writer, and this thread with it, for ever) nor a symlink
                state = json.loads(read_regular(os.path.join(root, entry, "state.json"), STATE_MOST, follow=False))
            except (OSError, ValueError):
                continue            # being written: the next tick reads it
            if not isinstance(state, dict):
                continue
            sighting = Sighting(entry, str(state.get("name") or ""), str(state.get("cgroup") or f"labkit/{entry}"),
                                time.monotonic())
            with self._lock:
                self.sightings[entry] = sighting
            self._count_one(sighting)

    def look_at_images(self) -> None:
        """Take the evidence of each image manifest that appeared since the last look: its
        directory is listed here (by descriptor, never through a symlink), what is new is
        read in the sandbox's root, as the kernel sees it."""
        try:
            descriptor = os.open(os.path.join(self.box.home, "images"),
                                 os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            with os.scandir(descriptor) as listing:
                new = {(e.name, e.inode()) for e in listing if e.name.endswith(".json")} - self._manifests
        finally:
            os.close(descriptor)
        if not new:
            return
        if self.box.pid:
            seen = in_root(self.box.pid, commits_in, str(self.box.home), sorted(name for name, _ in new))
        else:
            seen = commits_in(str(self.box.home), sorted(name for name, _ in new))
        with self._lock:
            for commit in seen:
                self.commits.setdefault((commit.layer, commit.container), commit)
            self._manifests |= new

    def commit_seen(self, layer: str, container: str) -> CommitSeen | None:
        with self._lock:
            return self.commits.get((layer, container))

    def count(self, not_yet_ran=False) -> None:
        """Read the counters of every sighting's cgroup (or only of those not yet seen
        running: at every tick. A container that lives less than COUNT_EVERY, its cgroup
        deleted right after its exit, could be seen only while it was still being made,
        and go down as "never ran"; a loaded run graded a correct lab so)."""
        for sighting in list(self.sightings.values()):
            if not (not_yet_ran and sighting.ran):
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
        seen = {(pid, started) for pid in pids if (started := start_time(pid)) is not None}
        with self._lock:
            sighting.processes |= seen
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
                with self._lock:
                    sighting.logged_as = sighting.logged_as or names_in_log(cgroup)
                return cgroup
        return None

    def container_that_had(self, pid: int):
        """The sighting in whose cgroup the watch saw this very process (PID and start
        time), or None: a process labkit's runtime made, wherever it is now."""
        started = start_time(pid)
        with self._lock:
            return next((s for s in self.sightings.values() if (pid, started) in s.processes), None)

    def named(self, name) -> list:
        """Sightings of containers called `name`, newest last."""
        with self._lock:
            return sorted((s for s in self.sightings.values() if s.name == name), key=lambda s: s.first_seen)


def commits_in(home: str, manifests: list) -> list:
    """A CommitSeen for each of these manifest files whose history says its top layer was
    committed from a container, with the digest of that container's read-write layer now."""
    store = Store(home)
    seen = []
    for file_name in manifests:
        try:
            image = store.image(file_name[:-len(".json")])
            made_from = committed_from(image)
        except Exception:  # noqa: BLE001 — the student's file: not an image, nothing to record
            continue
        if made_from is not None:
            upper = upper_digest_or_none(ContainerDir.of(made_from["id"], Path(home)).upper)
            seen.append(CommitSeen(image.name, image.layers[-1], made_from["id"], upper))
    return seen


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


def in_labkit_subtree(box, pid: int) -> bool:
    """The kernel has the process in a cgroup of labkit's runtime: below `labkit/` of the
    sandbox's cgroup (or of the host's, with no sandbox), where it makes its containers'."""
    from labkit.grading.targets import host_cgroup_paths

    roots = sandbox_roots(box)
    for controller, path in host_cgroup_paths(pid).items():
        root = roots.get(controller)
        if root is None or not (path + "/").startswith(root.rstrip("/") + "/"):
            continue
        below = path[len(root.rstrip("/")):]
        if below.startswith("/labkit/") or root.rstrip("/").endswith("/labkit") and below.startswith("/"):
            return True
    return False


def owned(box, cgroup) -> bool:
    """Every directory of this cgroup in a hierarchy the sandbox has a cgroup of is inside
    the sandbox's subtree (and there is at least one)."""
    if hasattr(cgroup, "dirs"):
        dirs = [d for c, d in cgroup.dirs.items() if c in box.cgroup_paths]
    else:
        dirs = [cgroup.path]
    existing = [d for d in dirs if os.path.isdir(d)]
    return bool(existing) and all(box.owns_cgroup(d) for d in existing)


def names_in_log(cgroup) -> dict:
    """{controller: the cgroup's path below its hierarchy's mount}, as the kernel's log
    prints it (pr_cont_cgroup_path: from the hierarchy's root, whatever the cgroup
    namespace of the reader)."""
    from labkit.cgroups.v1 import controller_mounts
    from labkit.cgroups.v2 import unified_mount

    dirs = dict(cgroup.dirs) if hasattr(cgroup, "dirs") else {"unified": cgroup.path}
    mounts = dict(controller_mounts())
    unified = unified_mount()
    if unified:
        mounts["unified"] = unified
    names = {}
    for controller, directory in dirs.items():
        point = (mounts.get(controller) or "").rstrip("/")
        real = os.path.realpath(directory)
        if point and real.startswith(point + "/"):
            names[controller] = real[len(point):]
    return names


# The kernel's own records, whole (mm/oom_kill.c dump_oom_summary, kernel/cgroup/pids.c
# pids_event): each starts the record, so a message that quotes a student's text after a
# prefix of its own ("overlayfs: failed to resolve '...'") is never one of them. A cgroup's
# name may hold a comma, so the one oom_memcg= is found by the name looked for.
OOM_RECORD = re.compile(r"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=")
FORK_RECORD = re.compile(r"cgroup: fork rejected by pids controller in (?P<cgroup>/.*)")
KERNEL_FACILITY, INFO_LEVEL = 0, 6       # both records are pr_info of the kernel's


def _from_the_kernel(record) -> bool:
    """A record's syslog prefix, where the reader keeps it: facility kern, level info. A
    write to /dev/kmsg (root's only) is never facility 0: the kernel makes it LOG_USER."""
    if len(record) < 3 or record[2] is None:
        return True
    prefix = int(record[2])
    return prefix >> 3 == KERNEL_FACILITY and prefix & 7 == INFO_LEVEL


def is_oom_kill_in(text: str, memory_cgroup: str) -> bool:
    return (OOM_RECORD.match(text) is not None and text.count(",oom_memcg=") == 1
            and f",oom_memcg={memory_cgroup},task_memcg=" in text)


def is_fork_refused_in(text: str, pids_cgroup: str) -> bool:
    seen = FORK_RECORD.fullmatch(text.rstrip("\n"))
    return seen is not None and seen.group("cgroup") == pids_cgroup


def names_from_state(box, relative: str) -> dict:
    """For a cgroup the watch never saw (made and gone between two of its looks: a container
    OOM-killed at once, on a busy host): how the kernel would log the cgroup its state.json
    names, below the sandbox's own cgroups (with no sandbox, below the hierarchies' roots).
    A record there is the kernel's word on a cgroup of this sandbox's."""
    relative = "/" + relative.strip("/")
    roots = sandbox_roots(box)
    if roots:
        return {controller: root.rstrip("/") + relative for controller, root in roots.items()}
    return _every_controller(relative)


def kernel_events(box, sighting) -> tuple:
    """(OOM kills, refused forks, the log lines) the kernel logged for this sighting's
    cgroup, by the path the kernel prints for it: the real cgroup the watch saw inside the
    sandbox, or else the one its state.json names there (names_from_state: requiring a
    sighting of the cgroup cost a fresh clone's honest lab 2 its OOM point, a container
    killed between two looks). Ask only once the cgroup is gone: while it is there, its
    own counters are the kernel's word."""
    names = sighting.logged_as or names_from_state(box, sighting.cgroup)
    memory = names.get("memory") or names.get("unified")
    pids = names.get("pids") or names.get("unified")
    oom = forks = 0
    lines = []
    for record in box.kernel_log():
        text = record[1]
        if not _from_the_kernel(record):
            continue
        if memory and is_oom_kill_in(text, memory):
            oom += 1
            lines.append("the kernel logged an OOM kill in its cgroup")
        elif pids and is_fork_refused_in(text, pids):
            forks += 1
            lines.append("the kernel logged a fork refused by its pids limit")
    return oom, forks, lines
