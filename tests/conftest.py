"""Shared fixtures. Tests that claim kernel behaviour run against the real kernel as root;
where the host cannot (not root, a controller missing) they skip and say what is missing."""

import os
import re

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root on a real kernel (namespaces, cgroups, mounts)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cgroup_v2_host():
    """Skips unless this host's own cgroups are v2 with memory, cpu and pids controllers: on
    most users' machines, and in CI inside the VM of `.ci/v2-lane` (this project's machines
    are cgroup v1 hybrid). Use with `pytest.mark.usefixtures("cgroup_v2_host")`."""
    from labkit.cgroups import detect_mode, host_hierarchy

    if not (detect_mode() == "v2" and {"memory", "cpu", "pids"} <= host_hierarchy().controllers):
        pytest.skip("the host's cgroups are not v2 with memory, cpu and pids controllers "
                    "(CI runs these in a VM: .ci/v2-lane)")


@pytest.fixture
def labkit_home(tmp_path, monkeypatch):
    """A fresh LABKIT_HOME for one test: its own images, containers and caches."""
    home = tmp_path / "labkit-home"
    home.mkdir()
    # Containers with a user namespace run as an unprivileged host uid, which must be able
    # to reach the layers: pytest's temp root is private (0700) by default.
    for directory in (tmp_path, *tmp_path.parents):
        if directory == directory.parent or str(directory) == "/tmp":
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o011)
    monkeypatch.setenv("LABKIT_HOME", str(home))
    return home


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
    it (runtime/pool.py), as its state.json records. Remembered from the first look, so
    that a check for leftovers still knows it after the state is gone."""
    if ident not in _cgroup_leaves:
        from labkit.runtime.container_dir import ContainerDir

        directory = ContainerDir(os.path.join(home, "containers", ident)) if home else ContainerDir.of(ident)
        state = directory.read_state() or {}
        if not state.get("cgroup"):
            return ident   # not made yet (or never): ask again later
        _cgroup_leaves[ident] = state["cgroup"].rsplit("/", 1)[-1]
    return _cgroup_leaves[ident]


def helper_slot_cgroups(helper_pid) -> dict:
    """{cgroup path: its pids} for the ready slots of the helper with this PID."""
    from labkit.cgroups.pool import owner_of

    slots = {}
    for path in labkit_cgroups():
        owner = owner_of(path.rsplit("/", 1)[-1])
        if owner is not None and owner[0] == helper_pid:
            try:
                with open(os.path.join(path, "cgroup.procs")) as procs:
                    slots[path] = {int(line) for line in procs if line.strip()}
            except FileNotFoundError:
                pass
    return slots


def only_ready_slots_left(helper_pid, timeout=10.0) -> dict:
    """The helper's slot cgroups that are not ready slots (each holds exactly one process,
    named labkit-slot, waiting for a plan): a used slot torn down holds nothing and must
    be gone. Retried for `timeout` seconds: a slot being made is empty for a moment."""
    import time

    from labkit.runtime.pool import SLOT_PROCESS_NAME

    def not_ready():
        wrong = {}
        for path, pids in helper_slot_cgroups(helper_pid).items():
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


def empty_slot_cgroups(helper_pid, timeout=10.0) -> list:
    """The helper's slot cgroups with no process in them: a slot used by a container that
    has exited, not torn down. (A ready slot holds its waiting first process; one used by
    a container still running, maybe another test's, holds that container.) Retried for
    `timeout` seconds: a slot being made is empty for a moment."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        empty = sorted(path for path, pids in helper_slot_cgroups(helper_pid).items() if not pids)
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(0.05)


def labkit_mounts() -> list:
    with open("/proc/self/mountinfo") as table:
        return [line for line in table if "labkit" in line or re.search(r" - overlay ", line)]


@pytest.fixture
def no_leftovers(labkit_home, monkeypatch):
    """Asserts the test left no container state, cgroup or mount of its own behind.
    (Only this test's containers are checked: other processes may run their own.) The
    helper's ready pool slots are not leftovers; an emptied slot cgroup is."""
    from labkit.runtime.container import Container

    made = []
    original = Container._plan

    def recording_plan(self, *args, **kwargs):
        made.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Container, "_plan", recording_plan)
    mounts_before = labkit_mounts()
    yield labkit_home
    from labkit.runtime.helper import settle

    settle()  # the helper tears a container down right after reporting its exit
    containers = labkit_home / "containers"
    left = sorted(os.listdir(containers)) if containers.exists() else []
    assert left == [], f"container directories left behind: {left}"
    leaves = {c.id for c in made} | {c.cgroup_name.rsplit("/", 1)[-1] for c in made if c.cgroup_name}
    ours = {path for path in labkit_cgroups() if path.rsplit("/", 1)[-1] in leaves}
    assert ours == set(), f"cgroups left behind: {sorted(ours)}"
    from labkit.runtime import helper

    if helper._helper is not None and helper._helper.gone is None:
        assert empty_slot_cgroups(helper._helper.pid) == [], "pool slot cgroups left behind"
    assert [line for line in labkit_mounts() if line not in mounts_before] == [], "mounts left behind"


@pytest.fixture
def loop_device(tmp_path):
    """A loop block device over a temp file of this test's own (the host's disks are not
    ours to touch); detached afterwards."""
    import shutil
    import subprocess

    if shutil.which("losetup") is None:
        pytest.skip("losetup (util-linux) is not installed")
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(8 << 20)
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
