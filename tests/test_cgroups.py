"""The cgroup backends against real cgroup filesystems.

v1: the controllers this host mounts under /sys/fs/cgroup/<controller>.
v2: the protocol (create, join, kill, events, delete) on whatever cgroup2 mount exists
(here the hybrid host's almost empty /sys/fs/cgroup/unified), and limits wherever a v2
hierarchy offers memory, cpu and pids (the VM lane in CI: `.ci/v2-lane`).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit.cgroups import CgroupV1, HierarchyV1, HierarchyV2, Limits, detect_mode, host_hierarchy
from labkit.cgroups.base import cpu_quota_us, read_keyed
from labkit.cgroups.v1 import controller_mounts
from labkit.cgroups.v2 import unified_mount
from labkit.errors import HostError

V1 = controller_mounts()
needs_v1 = pytest.mark.skipif(not {"memory", "cpu", "cpuacct", "pids"} <= set(V1),
                              reason="no cgroup v1 memory, cpu, cpuacct and pids hierarchies on this host")
UNIFIED = unified_mount()
needs_unified = pytest.mark.skipif(UNIFIED is None, reason="no cgroup2 filesystem mounted on this host")


def v2_with_controllers():
    if UNIFIED is None:
        return None
    hierarchy = HierarchyV2(UNIFIED)
    return hierarchy if {"memory", "cpu", "pids"} <= hierarchy.controllers else None


V2_FULL = v2_with_controllers()
cgroup_v2 = [pytest.mark.cgroup_v2, pytest.mark.skipif(
    V2_FULL is None, reason="no cgroup v2 hierarchy with memory, cpu and pids controllers here "
                            "(this host is cgroup v1/hybrid; CI runs these in a VM: .ci/v2-lane)")]


def leaf():
    return f"test-{os.getpid()}-{time.monotonic_ns()}"


def sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def run_inside(cgroup, argv, timeout=300):
    """Start `argv` held on stdin, move it into `cgroup`, then let it go: everything it
    does happens inside. Returns (returncode, stderr bytes)."""
    process = subprocess.Popen(["sh", "-c", 'read _; exec "$@"', "sh", *argv],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    cgroup.add_process(process.pid)
    _, err = process.communicate(b"go\n", timeout=timeout)
    return process.returncode, err


def allocate(megabytes):
    code = f"b = bytearray({megabytes} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
    return [sys.executable, "-c", code]


# --- pure logic -------------------------------------------------------------------

def test_cpu_fraction_becomes_a_quota_per_100ms_period():
    assert cpu_quota_us(0.5) == 50_000
    assert cpu_quota_us(2) == 200_000
    assert cpu_quota_us(0.001) == 1000  # the kernel's minimum


def test_keyed_files_parse_into_numbers(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert read_keyed(events)["oom_kill"] == 1
    assert read_keyed(tmp_path / "missing") == {}


def test_limits_name_the_controllers_they_need():
    assert Limits(memory=1, pids=3).needs() == {"memory", "pids"}
    assert Limits(io_read_bps={"8:0": 1}).needs() == {"io"}


def test_this_host_mode_is_detected():
    assert detect_mode() in ("v1", "v2")
    assert host_hierarchy().version == (1 if detect_mode() == "v1" else 2)


# --- v1 on this host ----------------------------------------------------------------

@pytest.mark.root
@needs_v1
def test_v1_limits_are_written_in_kernel_units():
    cgroup = HierarchyV1().create(leaf(), Limits(memory=64 << 20, cpus=0.5, pids=7))
    try:
        read = lambda c, f: open(os.path.join(cgroup.dirs[c], f)).read().strip()  # noqa: E731
        assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
        assert read("cpu", "cpu.cfs_quota_us") == "50000"
        assert read("cpu", "cpu.cfs_period_us") == "100000"
        assert read("pids", "pids.max") == "7"
        if os.path.exists(os.path.join(cgroup.dirs["memory"], "memory.memsw.limit_in_bytes")):
            assert read("memory", "memory.memsw.limit_in_bytes") == str(64 << 20)  # no swap
    finally:
        cgroup.delete()
    assert not cgroup.exists()


@pytest.mark.root
@needs_v1
def test_v1_add_process_stats_kill_and_delete():
    cgroup = HierarchyV1().create(leaf())
    process = sleeper()
    try:
        cgroup.add_process(process.pid)
        assert cgroup.pids() == [process.pid]
        stats = cgroup.stats()
        # (memory already charged elsewhere stays there: v1 moves no charges by default)
        assert stats.pids_current == 1 and stats.memory_current is not None
        cgroup.delete()
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert not cgroup.exists()
    finally:
        process.kill()
        process.wait()
        cgroup.delete()


@pytest.mark.root
@needs_v1
def test_v1_memory_limit_oom_kills_and_counts_it():
    cgroup = HierarchyV1().create(leaf(), Limits(memory=48 << 20))
    try:
        returncode, _ = run_inside(cgroup, allocate(200), timeout=60)
        assert returncode == -signal.SIGKILL
        stats = cgroup.stats()
        assert stats.oom_kills >= 1
        assert stats.memory_peak <= 48 << 20
    finally:
        cgroup.delete()


@pytest.mark.root
@needs_v1
def test_v1_delete_tolerates_a_cgroup_already_gone():
    cgroup = HierarchyV1().create(leaf())
    cgroup.delete()
    cgroup.delete()
    assert not cgroup.exists()


def removed_between_open_and_read(directory):
    """labkit's read_text, with the cgroup's directory removed (rmdir, for real) after the
    open and before the read: what another process's teardown does to a sweep reading it."""
    def read_text(path):
        with open(path) as handle:
            if os.path.dirname(path) == directory:
                os.rmdir(directory)
            return handle.read()
    return read_text


def read_while_removed(monkeypatch, cgroup, directory, read):
    """What `read` ("pids" or "stats") gives for a cgroup whose `directory` is removed
    between the open and the read of its file. pids() reads through its backend's module,
    stats() through base's read_int and read_keyed."""
    from labkit.cgroups import base

    module = sys.modules[type(cgroup).__module__] if read == "pids" else base
    monkeypatch.setattr(module, "read_text", removed_between_open_and_read(directory))
    try:
        return getattr(cgroup, read)()
    finally:
        monkeypatch.undo()
        cgroup.delete()


# The sweep before every helper start reads each labkit cgroup on the host (pids), and
# Container.stats() and %container stats read while the helper tears a container down:
# meanwhile the kernel answers ENODEV for a file opened before the rmdir, which means gone.
@pytest.mark.root
@needs_v1
@pytest.mark.parametrize("read", ["pids", "stats"])
def test_v1_a_cgroup_removed_while_read_reads_as_gone(monkeypatch, read):
    cgroup = HierarchyV1().create(leaf())
    controller = "pids" if read == "pids" else "memory"
    got = read_while_removed(monkeypatch, cgroup, cgroup.dirs[controller], read)
    assert got == [] if read == "pids" else (got.memory_current, got.oom_kills) == (None, 0)


@pytest.mark.root
@needs_unified
@pytest.mark.parametrize("read", ["pids", "stats"])
def test_v2_a_cgroup_removed_while_read_reads_as_gone(monkeypatch, read):
    cgroup = HierarchyV2(UNIFIED).create(leaf())
    got = read_while_removed(monkeypatch, cgroup, cgroup.path, read)
    assert got == [] if read == "pids" else (got.cpu_seconds, got.memory_current) == (None, None)


def test_a_limit_the_host_cannot_enforce_is_refused_by_name():
    hierarchy = HierarchyV1(mounts={"memory": "/nonexistent"})
    with pytest.raises(HostError, match="pids limit needs the pids cgroup controller"):
        hierarchy.create(leaf(), Limits(pids=5))


@needs_v1
def test_v1_mount_table_groups_controllers_by_hierarchy():
    cgroup = CgroupV1("labkit/x", {c: os.path.join(V1[c], "labkit/x") for c in ("memory", "cpu", "cpuacct")})
    names = {options for _directory, options in cgroup.mount_table()}
    if V1["cpu"] == V1["cpuacct"]:
        assert "cpu,cpuacct" in names
    else:
        assert {"cpu", "cpuacct"} <= names


# --- v2 protocol on a real cgroup2 mount ---------------------------------------------

@pytest.mark.root
@needs_unified
def test_v2_create_join_kill_and_delete_on_a_real_cgroup2():
    hierarchy = HierarchyV2(UNIFIED)
    cgroup = hierarchy.create(leaf())
    process = sleeper()
    try:
        cgroup.add_process(process.pid)
        assert cgroup.pids() == [process.pid]
        assert cgroup.events()["populated"] == 1
        cgroup.kill()  # cgroup.kill: the whole subtree, atomically
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert cgroup.events()["populated"] == 0
        cgroup.delete()
        assert not cgroup.exists()
    finally:
        process.kill()
        process.wait()
        cgroup.delete()


@needs_unified
def test_v2_refuses_limits_for_controllers_it_lacks():
    hierarchy = HierarchyV2(UNIFIED)
    missing = {"memory", "cpu", "pids"} - hierarchy.controllers
    if not missing:
        pytest.skip("this cgroup2 mount has every controller")
    kind = sorted(missing)[0]
    with pytest.raises(HostError, match=f"{kind} limit needs the {kind} cgroup controller"):
        hierarchy.create(leaf(), Limits(**{"memory": {"memory": 1 << 20}, "cpu": {"cpus": 0.5},
                                           "pids": {"pids": 3}}[kind]))


# --- v2 with controllers (the VM lane) ---------------------------------------------------

@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.skipif(V2_FULL is None, reason=cgroup_v2[1].kwargs["reason"])
def test_v2_limits_are_written_in_kernel_units():
    cgroup = V2_FULL.create(leaf(), Limits(memory=64 << 20, cpus=0.5, pids=7))
    try:
        read = lambda name: open(os.path.join(cgroup.path, name)).read().strip()  # noqa: E731
        assert read("memory.max") == str(64 << 20)
        assert read("cpu.max") == "50000 100000"
        assert read("pids.max") == "7"
        if os.path.exists(os.path.join(cgroup.path, "memory.swap.max")):
            assert read("memory.swap.max") == "0"
    finally:
        cgroup.delete()
    assert not cgroup.exists()


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.skipif(V2_FULL is None, reason=cgroup_v2[1].kwargs["reason"])
def test_v2_memory_max_oom_kills_and_memory_events_count_it():
    cgroup = V2_FULL.create(leaf(), Limits(memory=48 << 20))
    try:
        returncode, _ = run_inside(cgroup, allocate(200))
        assert returncode == -signal.SIGKILL
        stats = cgroup.stats()
        assert stats.oom_kills >= 1
        if stats.memory_peak is not None:
            assert stats.memory_peak <= 48 << 20
    finally:
        cgroup.delete()


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.skipif(V2_FULL is None, reason=cgroup_v2[1].kwargs["reason"])
def test_v2_cpu_max_throttles_a_busy_loop():
    cgroup = V2_FULL.create(leaf(), Limits(cpus=0.2))
    try:
        run_inside(cgroup, [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"])
        stats = cgroup.stats()
        assert stats.throttled_periods > 0
    finally:
        cgroup.delete()


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.skipif(V2_FULL is None, reason=cgroup_v2[1].kwargs["reason"])
def test_v2_pids_max_refuses_forks_past_the_limit():
    cgroup = V2_FULL.create(leaf(), Limits(pids=4))
    try:
        _, err = run_inside(cgroup, ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait"])
        stats = cgroup.stats()
        assert stats.pids_limit_hits > 0
        assert b"fork" in err.lower() or b"resource temporarily unavailable" in err.lower()
    finally:
        cgroup.delete()


def private_parent(hierarchy):
    """The same parent logic under a parent of this test's own: other labkit runs on this
    host (their cgroups under `labkit/`) can neither hide nor break what it checks."""
    hierarchy.parent = f"labkit-test-parent-{os.getpid()}-{time.monotonic_ns()}"
    return hierarchy


@pytest.mark.root
@needs_v1
def test_the_labkit_parent_goes_with_its_last_child():
    hierarchy = private_parent(HierarchyV1())
    assert hierarchy.children() == []
    first, second = hierarchy.create(leaf()), hierarchy.create(leaf())
    parent = os.path.dirname(first.dirs["memory"])
    first.delete()
    assert os.path.isdir(parent), "removed while another container still used it"
    second.delete()
    assert not os.path.isdir(parent)
    third = hierarchy.create(leaf())  # and it comes back when needed
    assert third.exists()
    third.delete()


@pytest.mark.root
@needs_unified
def test_the_v2_labkit_parent_goes_with_its_last_child():
    hierarchy = private_parent(HierarchyV2(UNIFIED))
    first, second = hierarchy.create(leaf()), hierarchy.create(leaf())
    assert sorted(hierarchy.children()) == sorted([first.name, second.name])
    first.delete()
    assert os.path.isdir(os.path.join(UNIFIED, hierarchy.parent)), "removed while another cgroup still used it"
    second.delete()
    assert not os.path.isdir(os.path.join(UNIFIED, hierarchy.parent))


# --- device control, as the kernel holds it ----------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("version", [1, pytest.param(2, marks=pytest.mark.cgroup_v2)])
def test_device_control_reads_the_v1_list_or_counts_the_v2_program(version):
    from labkit.cgroups.devices import DOCKER_DEFAULT

    if version == 1 and "devices" not in controller_mounts():
        pytest.skip("no cgroup v1 devices hierarchy on this host")
    if version == 2 and unified_mount() is None:
        pytest.skip("no cgroup2 filesystem mounted on this host")
    hierarchy = HierarchyV1() if version == 1 else HierarchyV2(unified_mount())
    made = []
    try:
        for rules in (list(DOCKER_DEFAULT), None):
            made.append(hierarchy.create(f"test-escapes-{os.getpid()}-{time.monotonic_ns()}", Limits(devices=rules)))
        controlled, free = (cgroup.device_control() for cgroup in made)
    finally:
        for cgroup in made:
            cgroup.delete()
    if version == 1:
        assert sorted(controlled) == sorted(DOCKER_DEFAULT) and free == []   # not in the devices hierarchy at all
    else:
        assert controlled == ["BPF_PROG_TYPE_CGROUP_DEVICE program attached (1)"] and free == []
