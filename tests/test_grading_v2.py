"""The cgroups lab's probes on a cgroup v2 kernel (memory.max, cpu.max, pids.max, cpu.stat,
memory.events, pids.events), passing and just failing. They run where the host is v2 with
memory, cpu and pids controllers, and in CI inside the VM of `.ci/v2-lane`."""

import pytest

from labkit.grading import probes as p

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2, pytest.mark.usefixtures("cgroup_v2_host")]


@pytest.fixture
def capped(labkit_home):
    from labkit.runtime import Container, ContainerSpec

    container = Container(ContainerSpec(name="gv2-capped", memory="64m", cpus="0.25", pids=32,
                                        command=["sh", "-c", "while :; do :; done"])).start(detach=True)
    yield container
    container.remove()


def test_limits_read_back_from_v2_files(capped):
    assert p.memory_limit(capped, "64m")().passed and not p.memory_limit(capped, "62m")().passed
    assert p.cpu_limit(capped, 0.25)().passed and not p.cpu_limit(capped, 0.2)().passed
    assert p.pids_limit(capped, 32)().passed and not p.pids_limit(capped, 31)().passed


def test_throttling_and_share_from_v2_cpu_stat(capped):
    assert p.throttled(capped)().passed
    # the quota caps the loop at 0.25 cores: 0.35 ± 10 % cannot be reached
    assert not p.cpu_share(capped, 0.35, tolerance=0.10, deadline=2)().passed


def test_oom_and_pids_events_from_v2_results(labkit_home):
    from labkit.runtime import run

    assert p.oom_killed(run("dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null", memory="32m"))().passed
    assert not p.oom_killed(run("true", memory="32m"))().passed
    burst = "for i in $(seq 60); do sleep 1 & done 2>/dev/null; wait"
    assert p.fork_bomb_held(run(burst, pids=16))().passed
    assert not p.fork_bomb_held(run(burst, pids=100))().passed
