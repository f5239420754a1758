"""The cgroups lab's probes on a cgroup v2 kernel (memory.max, cpu.max, pids.max, cpu.stat,
memory.events, pids.events), passing and just failing. They run where the host is v2 with
memory, cpu and pids controllers, and in CI inside the VM of `.ci/v2-lane`."""

import os

import pytest

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture
from labkit.grading import probes as p
from test_grading_sandbox import sandbox_leak_check  # noqa: F401 — autouse: its leak check, here too

SLOW = 900   # seconds a cell (and the kernel's start) may take under emulation
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


# --- the grading sandbox's own cgroup v2 path ------------------------------------------------

def test_the_sandbox_on_v2_caps_what_it_delegates_and_its_containers_run_inside(labkit_kernelspec):
    """The sandbox's cgroup on v2: limits the grader wrote that the student cannot raise, a
    delegated subtree in which a nested container gets its own capped cgroup, and the grader
    reading that container's limit from outside, below box.cgroup_paths."""
    from nbclient.exceptions import DeadKernelError
    from test_grading_sandbox import run_cells, sandbox, shell

    # Two CPUs: capped at one, an emulated guest's labkit helper took over its 30 s to answer.
    with sandbox(memory="512m", pids=256, cpus=2.0, wall_seconds=SLOW * 2) as box:
        # Under emulation (the lane's VM) a kernel takes minutes to start and to import labkit.
        try:
            (out,) = run_cells(box, shell("""
                sh("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max")
                sh("echo max > /sys/fs/cgroup/pids.max && echo raised-pids")
                sh("echo max > /sys/fs/cgroup/memory.max && echo raised-memory")
                from labkit.runtime import Container, ContainerSpec
                c = Container(ContainerSpec(name="v2-nested", memory="64m", command=["sleep", "600"])).start(detach=True)
                print("nested", c.cgroup_name)"""), timeout=SLOW)
        except DeadKernelError:
            log = (box.directory / "kernel" / "kernel.log").read_text()[-3000:]
            pytest.fail(f"the kernel died (sandbox out of time: {box.timed_out}); its log:\n{log}")
        unified = box.cgroup_paths["unified"]
        assert int(open(os.path.join(unified, "memory.max")).read()) == 512 << 20
        found = [path for path, _dirs, files in os.walk(unified) if "memory.max" in files
                 and open(os.path.join(path, "memory.max")).read().strip() == str(64 << 20)]
    assert f"{512 << 20}\n256\n" in out, out
    assert "raised-pids" not in out and "raised-memory" not in out, out
    assert "nested" in out and len(found) == 1 and box.owns_cgroup(found[0]), (out, found)
