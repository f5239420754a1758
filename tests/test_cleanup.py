"""Nothing leaks: not after many containers, not when they fail, time out or are
OOM-killed, not when their owner is killed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from leak_checks import container_cgroup_leaf, labkit_cgroups, labkit_mounts
from labkit.runtime import Container, ContainerSpec, gc

pytestmark = pytest.mark.root

OWNER = """
import sys, time
from labkit.runtime import Container, ContainerSpec
container = Container(ContainerSpec(command="sleep 100; echo never", name="orphan"))
container.start(detach=True)
print(container.id, container._helper.pid, container.pid, flush=True)
time.sleep(100)
"""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# The `labkit` command's way: its helper is a fork of itself, not a new interpreter.
FORKING_OWNER = "from labkit.runtime.client.helper_client import fork_from_caller; fork_from_caller()\n" + OWNER


def start_owner(labkit_home, script=OWNER):
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    ident, helper_pid, container_pid = owner.stdout.readline().split()
    return owner, ident, int(helper_pid), int(container_pid)


def cgroup_dirs(ident):
    leaf = container_cgroup_leaf(ident)
    return {path for path in labkit_cgroups() if path.endswith("/" + leaf)}


@pytest.mark.slow
def test_two_hundred_containers_of_every_ending_leave_nothing(no_leftovers):
    endings = {
        "ok": dict(command="true"),
        "failing": dict(command="exit 7"),
        "missing command": dict(command=["no-such-command"]),
        "timed out": dict(command="sleep 10", timeout=0.2),
        "OOM-killed": dict(command="dd if=/dev/zero of=/dev/null bs=64M count=1", memory="16m"),
        "fork bomb": dict(command="b() { b | b & }; b; sleep 0.5", pids=8, timeout=2),
        "writes": dict(command="mkdir -p /a/b && dd if=/dev/zero of=/a/b/f bs=64k count=4 2>/dev/null"),
    }
    seen = {}
    for index in range(200):
        label = list(endings)[index % len(endings)]
        result = Container(ContainerSpec(**endings[label])).run()
        seen.setdefault(label, set()).add(result.cause)
    assert seen["ok"] == {"exited 0"}
    assert seen["failing"] == {"exited 7"}
    assert seen["missing command"] == {"setup failed"}
    assert seen["timed out"] == {"timed out"}
    assert seen["OOM-killed"] == {"OOM-killed"}
    # (no_leftovers asserts: no container dirs, cgroups or mounts remain)


@pytest.mark.parametrize("script", [OWNER, FORKING_OWNER], ids=["helper-exec", "helper-forked"])
def test_killing_the_owner_removes_its_containers_at_once(labkit_home, script):
    owner, ident, helper_pid, container_pid = start_owner(labkit_home, script)
    with open(f"/proc/{helper_pid}/cmdline", "rb") as cmdline:
        forked = b"-m\0labkit.runtime.helper\0" not in cmdline.read()
    assert forked == (script is FORKING_OWNER)
    assert alive(container_pid) and cgroup_dirs(ident)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    # The helper sees its socket close and tears everything down itself.
    assert wait_until(lambda: not alive(helper_pid)), "helper outlived its owner"
    assert not alive(container_pid)
    assert not (labkit_home / "containers" / ident).exists()
    assert cgroup_dirs(ident) == set()


def kill_owner_and_helper(labkit_home, script) -> str:
    """Start an owner with a container, SIGKILL its helper and then the owner; the
    container's id. The kernel's parent-death signals take the container down with its
    helper, but its directories and cgroups stay until someone sweeps."""
    owner, ident, helper_pid, container_pid = start_owner(labkit_home, script)
    os.kill(helper_pid, signal.SIGKILL)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert wait_until(lambda: not alive(container_pid)), "container outlived its helper"
    assert (labkit_home / "containers" / ident).exists() and cgroup_dirs(ident)
    return ident


@pytest.mark.parametrize("script", [OWNER, FORKING_OWNER], ids=["helper-exec", "helper-forked"])
def test_killing_owner_and_helper_is_swept_by_the_next_start(labkit_home, script):
    """The README's promise, through a real next start: a new process's first container
    (`labkit run`) sweeps what the dead owner left, with no `labkit gc`."""
    mounts_before = labkit_mounts()
    ident = kill_owner_and_helper(labkit_home, script)
    started = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--", "echo", "next"],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    assert (started.returncode, started.stdout) == (0, "next\n"), started.stderr
    assert not (labkit_home / "containers" / ident).exists()
    assert cgroup_dirs(ident) == set()
    assert labkit_mounts() == mounts_before


@pytest.mark.parametrize("script", [OWNER, FORKING_OWNER], ids=["helper-exec", "helper-forked"])
def test_killing_owner_and_helper_is_swept_by_gc(labkit_home, script):
    mounts_before = labkit_mounts()
    ident = kill_owner_and_helper(labkit_home, script)
    removed = gc()
    assert "container orphan" in removed
    assert not (labkit_home / "containers" / ident).exists()
    assert cgroup_dirs(ident) == set()
    assert labkit_mounts() == mounts_before


def test_interrupting_a_run_kills_and_removes_the_container(no_leftovers):
    container = Container(ContainerSpec(command="sleep 30"))

    def interrupt(stream, text):
        raise KeyboardInterrupt

    container.spec.command = ["sh", "-c", "echo go; sleep 30; echo slept"]
    with pytest.raises(KeyboardInterrupt):
        container.run(on_output=interrupt)
    # Killed, not finished: the sleep never ended (no clock needed to tell).
    assert container.result.interrupted and container.state == "removed"
    assert container.result.exit_code is None and "slept" not in container.result.stdout


def test_an_interrupt_at_any_moment_of_a_run_leaves_nothing(no_leftovers):
    """The stop button can land anywhere: before the request leaves, while the helper
    sets up, while the command runs, while it is being removed."""
    import random

    def interrupt(*_):
        raise KeyboardInterrupt

    # First use imports what a run needs: an interrupt inside a class body being defined
    # comes out as RuntimeError on Python 3.11 (__set_name__), not as the KeyboardInterrupt
    # this test is about.
    Container(ContainerSpec(command="true")).run()
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for _ in range(60):
            signal.setitimer(signal.ITIMER_REAL, random.uniform(0.0002, 0.03))
            try:
                Container(ContainerSpec(command="sleep 5")).run()
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert interrupted == 60
    # (no_leftovers: no container dir, cgroup or mount of these 60 remains)


def test_a_container_whose_directory_vanished_does_not_take_the_helper_down(no_leftovers):
    import shutil

    container = Container(ContainerSpec(command="sleep 30"))
    container.start(detach=True)
    helper = container._helper
    shutil.rmtree(container.dir)   # someone removes it by hand while it runs
    container.kill()
    container.remove()
    assert helper.process.poll() is None and helper.gone is None
    assert Container(ContainerSpec(command="echo still here")).run().stdout == "still here\n"


def test_an_interrupt_before_the_start_request_leaves_gives_a_killed_result_not_a_crash(no_leftovers, monkeypatch):
    """The stop button between "created" and the request leaving (the plan being encoded):
    the helper answers the kill with "no such running container", which is not an exit."""
    from labkit.runtime.client import container as container_module

    def interrupted_to_wire(plan):
        raise KeyboardInterrupt

    monkeypatch.setattr(container_module.launch, "to_wire", interrupted_to_wire)
    container = Container(ContainerSpec(command="sleep 5"))
    with pytest.raises(KeyboardInterrupt):
        container.run()
    assert container.result is not None and container.result.signal == signal.SIGKILL


def test_a_start_never_takes_the_lock_an_interrupt_could_leave_held(no_leftovers, monkeypatch):
    """Popen.poll() takes a lock that an interrupt landing at the wrong bytecode leaves held,
    and the helper's close at exit then waits on it forever (a full run hung so). The stop
    button lands at every start: a start must not call it."""
    Container(ContainerSpec(command=["true"])).run()

    def poll(self):
        raise AssertionError("Popen.poll() on a container's start")

    monkeypatch.setattr(subprocess.Popen, "poll", poll)
    for _ in range(2):
        assert Container(ContainerSpec(command=["true"])).run().exit_code == 0


def test_a_helper_that_died_is_reaped_and_replaced(no_leftovers):
    from labkit.runtime.client import helper_client as helper

    Container(ContainerSpec(command=["true"])).run()
    helper.settle()   # its teardown done: a helper killed during one leaves a directory to the sweep
    old = helper.get_helper()
    os.kill(old.pid, signal.SIGKILL)
    assert wait_until(lambda: old.gone is not None), "the reader never saw the helper go"
    assert Container(ContainerSpec(command=["echo", "again"])).run().stdout == "again\n"
    assert helper.get_helper() is not old
    assert not os.path.exists(f"/proc/{old.pid}"), "the dead helper was left a zombie"
