"""The whole runtime on a cgroup v2 kernel: what `%%container` does, with v2 limits.

These run where the host's own cgroup mode is v2 with memory, cpu and pids controllers:
on most users' machines, and in CI inside the VM of `.ci/v2-lane` (this project's
machines are cgroup v1 hybrid, where they skip)."""

import pytest

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2, pytest.mark.usefixtures("cgroup_v2_host")]


def test_a_container_runs_with_v2_limits_visible_inside(labkit_home):
    from labkit.runtime import run

    result = run("echo $$; hostname; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max;"
                 " cat /proc/self/cgroup", hostname="v2box", memory="64m", pids=20, cpus=0.5).check()
    lines = result.stdout.splitlines()
    assert lines[:2] == ["1", "v2box"]
    assert lines[2:5] == [str(64 << 20), "20", "50000 100000"]
    assert lines[5] == "0::/"


def test_memory_max_oom_kills_the_container_on_v2(labkit_home):
    from labkit.runtime import run

    result = run("dd if=/dev/zero of=/dev/null bs=96M count=1", memory="32m")
    assert result.oom_killed and result.cause == "OOM-killed"
    if result.memory_peak is not None:  # memory.peak: Linux 5.19 and newer
        assert result.memory_peak <= 32 << 20


def test_pids_max_holds_a_fork_bomb_on_v2(labkit_home):
    from labkit.runtime import run

    result = run("bomb() { bomb | bomb & }; bomb; sleep 2; true", pids=12, timeout=60)
    assert result.stats["pids_limit_hits"] > 0
    assert not result.timed_out


def test_cpu_max_throttles_on_v2(labkit_home):
    from labkit.runtime import run

    result = run("timeout 2 sh -c 'while :; do :; done'; true", cpus="0.2", timeout=120).check()
    assert result.stats["throttled_periods"] > 0
    assert result.cpu_seconds < 0.6 * result.duration


def test_nothing_is_left_in_the_v2_hierarchy(labkit_home):
    from leak_checks import only_ready_slots_left
    from labkit.cgroups import host_hierarchy
    from labkit.cgroups.slot_cgroups import owner_of
    from labkit.runtime import run
    from labkit.runtime.client.helper_client import get_helper, settle, shutdown_helper

    for _ in range(5):
        run("true").check()
    settle()
    helper = get_helper().pid
    # While the helper lives, only its ready pool slots (runtime/helper/ready_slots.py) remain...
    assert only_ready_slots_left(helper) == {}
    assert [name for name in host_hierarchy().children()
            if (owner_of(name.rsplit("/", 1)[-1]) or (None,))[0] != helper] == []
    # ...and once it is gone, nothing.
    shutdown_helper()
    assert [name for name in host_hierarchy().children()] == []
