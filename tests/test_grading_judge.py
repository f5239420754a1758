"""The grader's world on the real kernel: processes made by hand with `unshare` and cgroups
made with `mkdir` inside a sandbox are found by PID and by cgroup path (the notebook's
view of both), and the same kinds of things outside the sandbox are refused."""

import os
import subprocess
import time

import pytest

from labkit.grading import expect
from labkit.grading.cell_source import AnswerRef  # noqa: F401 — documents what Answer becomes
from labkit.grading.checks import run_checks
from labkit.grading.targets import Answer, reset_world, using_world

pytestmark = pytest.mark.root


def by_hand_in(box, script) -> subprocess.Popen:
    """Run a shell script inside the sandbox, as a student's cell would (no kernel needed)."""
    return subprocess.Popen(box.launch_prefix() + ["sh", "-c", script], cwd=str(box.scratch),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def judged(world, *expectations):
    token = using_world(world)
    try:
        return run_checks("t", list(expectations), quiet=False)
    finally:
        reset_world(token)


@pytest.fixture
def sandbox():
    from labkit.grading.evidence import Watch
    from labkit.grading.judge import GraderWorld
    from labkit.grading.sandbox import Sandbox

    answers = {}
    with Sandbox(kind="namespaces") as box, Watch(box) as watch:
        world = GraderWorld(box, lambda name: (repr(answers[name]), None), watch)
        yield box, world, answers


def inner_pid1(box) -> tuple:
    """(host PID, sandbox PID) of a process that is PID 1 of a namespace made inside the sandbox."""
    from labkit.grading.targets import namespace_pids

    level = len(namespace_pids(box.pid)) - 1
    for pid in box.pids():
        seen = namespace_pids(pid)
        if len(seen) == level + 2 and seen[-1] == 1:
            return pid, seen[level]
    return None


def test_a_process_made_by_hand_with_unshare_is_found_by_its_pid(sandbox):
    from labkit.grading import probes

    box, world, answers = sandbox
    by_hand_in(box, "exec unshare --fork --pid --uts --ipc --net --mount-proc sh -c 'hostname lab; exec sleep 60'")
    host, inside = wait_for(lambda: inner_pid1(box))
    answers["box_pid"] = inside
    report = judged(world,
                    expect("hostname", 1, probes.hostname(Answer("box_pid"), "lab")),
                    expect("own", 1, probes.own_namespaces(Answer("box_pid"), ("pid", "net", "ipc"))),
                    expect("pid 1", 1, probes.pid_view(Answer("box_pid"))))
    assert [o.passed for o in report.outcomes] == [True, True, True], [o.observed for o in report.outcomes]


def test_a_cgroup_made_with_mkdir_is_found_by_its_path(sandbox):
    from labkit.cgroups import detect_mode
    from labkit.grading import probes

    box, world, answers = sandbox
    if detect_mode() == "v2":
        script = ("mkdir /sys/fs/cgroup/mine && echo 67108864 > /sys/fs/cgroup/mine/memory.max && "
                  "echo $$ > /sys/fs/cgroup/mine/cgroup.procs && exec sleep 60")
        answers["mine"] = "/sys/fs/cgroup/mine"
    else:
        script = ("mkdir /sys/fs/cgroup/memory/mine && echo 67108864 > /sys/fs/cgroup/memory/mine/memory.limit_in_bytes"
                  " && echo $$ > /sys/fs/cgroup/memory/mine/cgroup.procs && exec sleep 60")
        answers["mine"] = "/sys/fs/cgroup/memory/mine"
    by_hand_in(box, script)
    def passed():
        report = judged(world, expect("limit", 1, probes.memory_limit(Answer("mine"), "64m")))
        return report.outcomes[0].passed and report
    assert wait_for(passed)


def test_processes_and_cgroups_outside_the_sandbox_are_refused(sandbox):
    from labkit.cgroups import Limits, host_hierarchy
    from labkit.grading import probes
    from labkit.grading.targets import KernelWorld

    box, world, answers = sandbox
    outside = subprocess.Popen(["unshare", "--fork", "--pid", "--mount-proc", "sleep", "60"])
    cgroup = host_hierarchy().create(f"grader-outside-{os.getpid()}", Limits(memory=64 << 20))
    try:
        cgroup.add_process(outside.pid)
        path = cgroup.dirs["memory"] if hasattr(cgroup, "dirs") else cgroup.path
        answers.update(pid=outside.pid, path=path)
        probes_to_try = [expect("pid", 1, probes.own_namespaces(Answer("pid"), ("pid",))),
                         expect("cgroup", 1, probes.memory_limit(Answer("path"), "64m"))]
        refused = judged(world, *probes_to_try)
        assert [o.passed for o in refused.outcomes] == [False, False]
        assert "in this submission" in refused.outcomes[1].observed
        # without the sandbox's ownership checks (the student's own kernel on the host), both count
        token = using_world(KernelWorld())
        try:
            import __main__

            __main__.pid, __main__.path = outside.pid, path
            accepted = run_checks("t", probes_to_try, quiet=False)
        finally:
            reset_world(token)
            del __main__.pid, __main__.path
        assert accepted.outcomes[1].passed
    finally:
        outside.kill()
        outside.wait()
        cgroup.delete()
