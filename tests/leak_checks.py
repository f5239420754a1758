"""What a test looks at to find leftovers on this host: labkit's cgroups and mounts, a
container's cgroup (by the name its state records), the helper's pool slots.

A plain module, not conftest.py: notebooks/labs/ has a conftest.py of its own, and in a
session that collects both, `from conftest import ...` inside a test may find that one."""

import errno
import os
import re


def labkit_cgroups() -> set:
    """Every cgroup below a labkit parent, in every hierarchy of this host."""
    found = set()
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        depth = root.count("/") - 3
        if depth > 3:
            dirs[:] = []
            continue
        if os.path.basename(root) == "labkit":
            found.update(os.path.join(root, d) for d in dirs)
            dirs[:] = []
    return found


_cgroup_leaves = {}   # container id -> the leaf name of its cgroup, once seen


def container_cgroup_leaf(ident, home=None) -> str:
    """The leaf name of a container's cgroup: `<id>`, or the pool slot's name that served
    it (runtime/helper/ready_slots.py), as its state.json records. Remembered from the first look, so
    that a check for leftovers still knows it after the state is gone."""
    if ident not in _cgroup_leaves:
        from labkit.runtime.container_dir import ContainerDir

        directory = ContainerDir(os.path.join(home, "containers", ident)) if home else ContainerDir.of(ident)
        state = directory.read_state() or {}
        if not state.get("cgroup"):
            return ident   # not made yet (or never): ask again later
        _cgroup_leaves[ident] = state["cgroup"].rsplit("/", 1)[-1]
    return _cgroup_leaves[ident]


def helper_identity(helper) -> tuple:
    """(PID, start time) of a helper, as its slots' names carry it. A PID alone is reused (this
    host's pid_max is 32768, and a busy host wraps it in minutes): a dead helper's slot
    cgroups not swept yet would count as those of a new helper that got its PID. Give the
    pair itself for a helper that may be gone; a PID is looked up now."""
    from labkit.linux.processes import start_time

    return tuple(helper) if isinstance(helper, tuple) else (helper, start_time(helper))


def helper_slot_cgroups(helper) -> dict:
    """{cgroup path: its pids} for the slots of this helper (a PID, or (PID, start time))."""
    from labkit.cgroups.slot_cgroups import owner_of

    identity = helper_identity(helper)
    slots = {}
    for path in labkit_cgroups():
        owner = owner_of(path.rsplit("/", 1)[-1])
        if owner is not None and owner == identity:
            try:
                with open(os.path.join(path, "cgroup.procs")) as procs:
                    slots[path] = {int(line) for line in procs if line.strip()}
            except FileNotFoundError:
                pass
            except OSError as error:   # ENODEV: removed between open and read (a slot discarded)
                if error.errno != errno.ENODEV:
                    raise
    return slots


def only_ready_slots_left(helper, timeout=10.0) -> dict:
    """The helper's slot cgroups that are not ready slots (each holds exactly one process,
    named labkit-slot, waiting for a plan): a used slot torn down holds nothing and must
    be gone. Retried for `timeout` seconds: a slot being made is empty for a moment."""
    import time

    from labkit.runtime.inside.slot import SLOT_PROCESS_NAME

    def not_ready():
        wrong = {}
        for path, pids in helper_slot_cgroups(helper).items():
            names = set()
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/comm") as comm:
                        names.add(comm.read().strip())
                except FileNotFoundError:
                    names.add("?")
            if len(pids) != 1 or names != {SLOT_PROCESS_NAME}:
                wrong[path] = sorted(pids)
        return wrong

    deadline = time.monotonic() + timeout
    while (wrong := not_ready()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return wrong


def empty_slot_cgroups(helper, timeout=10.0) -> list:
    """The helper's slot cgroups with no process in them: a slot used by a container that
    has exited, not torn down. (A ready slot holds its waiting first process; one used by
    a container still running, maybe another test's, holds that container.) Retried for
    `timeout` seconds: a slot being made is empty for a moment."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        empty = sorted(path for path, pids in helper_slot_cgroups(helper).items() if not pids)
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(0.05)


def labkit_mounts() -> list:
    with open("/proc/self/mountinfo") as table:
        return [line for line in table if "labkit" in line or re.search(r" - overlay ", line)]
