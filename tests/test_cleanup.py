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
from labkit.runtime.protocol import Op

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


def where(pid) -> str:
    """What the process `pid` is doing, for a message: its state and the kernel function it waits in."""
    try:
        with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/wchan") as wchan:
            return f"state {stat.read().rsplit(')', 1)[1].split()[0]}, in {wchan.read() or '-'}"
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


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
    ident = kill_owner_and_helper(labkit_home, script)
    started = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--", "echo", "next"],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    assert (started.returncode, started.stdout) == (0, "next\n"), started.stderr
    assert not (labkit_home / "containers" / ident).exists()
    assert cgroup_dirs(ident) == set()
    assert labkit_mounts(labkit_home) == []


@pytest.mark.parametrize("script", [OWNER, FORKING_OWNER], ids=["helper-exec", "helper-forked"])
def test_killing_owner_and_helper_is_swept_by_gc(labkit_home, script):
    ident = kill_owner_and_helper(labkit_home, script)
    removed = gc()
    assert "container orphan" in removed
    assert not (labkit_home / "containers" / ident).exists()
    assert cgroup_dirs(ident) == set()
    assert labkit_mounts(labkit_home) == []


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
        # As the stop button does: SIGINT, which the client holds off while it files a
        # message it has read. Raising from the alarm's own handler would skip that
        # hold-off and could lose the message, which no user's interrupt does.
        os.kill(os.getpid(), signal.SIGINT)

    # First use imports what a run needs: an interrupt inside a class body being defined
    # comes out as RuntimeError on Python 3.11 (__set_name__), not as the KeyboardInterrupt
    # this test is about.
    Container(ContainerSpec(command="true")).run()
    previous = signal.signal(signal.SIGALRM, interrupt)
    # Python's own SIGINT handler, also where the run was started with SIGINT ignored (a
    # shell's background job): there the signal would not interrupt anything.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
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
        signal.signal(signal.SIGINT, previous_int)
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
    kill_and_see_it_go(old)
    assert helper.get_helper() is not old
    assert not os.path.exists(f"/proc/{old.pid}"), "the dead helper was left a zombie"


def test_an_interrupt_as_the_client_takes_its_lock_does_not_blind_the_reader(no_leftovers):
    """The stop button can land as a `with` takes a lock. Through Condition's own
    __enter__ (a Python function), an interrupt at its return leaves the lock held by the
    main thread: the reader thread then waits for it forever, and the helper's death goes
    unseen (a stressed run failed so). The interrupt is placed there exactly, by a trace
    function; through the C lock's `with` there is no such place."""
    from labkit.runtime.client import helper_client as helper

    Container(ContainerSpec(command=["true"])).run()
    helper.settle()
    old = helper.get_helper()
    placed = []

    def on_call(frame, event, arg):
        return at_return if frame.f_code.co_name == "__enter__" else None

    def at_return(frame, event, arg):
        if event == "return" and not placed:
            placed.append(frame.f_code.co_filename)
            raise KeyboardInterrupt
        return at_return

    sys.settrace(on_call)
    try:
        for _ in range(3):
            try:
                old.take("nothing", (Op.PONG,))
                old.wait_for("nothing", (Op.PONG,), timeout=0.2)
            except KeyboardInterrupt:
                pass
    finally:
        sys.settrace(None)
    kill_and_see_it_go(old, f" (interrupt placed in {placed})")


def kill_and_see_it_go(old, context=""):
    """SIGKILL the helper behind client `old`: the client must see it go, and the next
    container must run (on a new helper)."""
    os.kill(old.pid, signal.SIGKILL)
    # SIGKILL takes effect when the helper next leaves the kernel: on a host busy with I/O
    # a call it is in (a mount, an unmount's sync) may hold it there for many seconds. The
    # client cannot see an exit that has not happened, so its time starts at the exit.
    assert wait_until(lambda: not alive(old.pid), seconds=300), f"SIGKILL did not end the helper: {where(old.pid)}"
    assert wait_until(lambda: old.gone is not None), \
        f"the helper exited and the client never saw it go{context}: {reader_state(old)}"
    assert Container(ContainerSpec(command=["echo", "again"])).run().stdout == "again\n"


def reader_state(client) -> str:
    """What a helper client's reader thread is doing, for a message."""
    import traceback

    from labkit.runtime.client.helper_client import _readable

    frame = sys._current_frames().get(client.reader.ident)
    pidfd_readable = client.exit_fd is not None and bool(_readable([client.exit_fd], 0))
    return (f"reader alive {client.reader.is_alive()}, waiting {client.waiting}, read_lock held "
            f"{client.read_lock.locked()}, pidfd {client.exit_fd} readable {pidfd_readable}, at "
            + ("".join(traceback.format_stack(frame)[-4:]) if frame else "-"))


def _copy_of_descriptor(pid: int, fd: int) -> int:
    """A copy, in this process, of descriptor `fd` of process `pid` (pidfd_getfd(2), Linux 5.6)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(438, pidfd, fd, 0)   # SYS_pidfd_getfd, the same number on every architecture
        if copy < 0:
            errno = ctypes.get_errno()
            pytest.skip(f"pidfd_getfd(2) is not available here: {os.strerror(errno)}")
        return copy
    finally:
        os.close(pidfd)


def test_a_dead_helper_is_replaced_even_while_a_stray_process_holds_its_socket(no_leftovers):
    """The socket's end-of-file is not the helper's death: a copy of the helper's end held
    by any other process (here this one, taken with pidfd_getfd) keeps the socket open after
    the helper has died. The client then kept the dead helper, and every container after it
    failed with "Broken pipe". It must find the exit from the kernel and start a new one."""
    from labkit.runtime.client import helper_client as helper

    Container(ContainerSpec(command=["true"])).run()
    helper.settle()
    old = helper.get_helper()
    with open(f"/proc/{old.pid}/environ", "rb") as environ:
        variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
    stray = _copy_of_descriptor(old.pid, int(variables[b"LABKIT_HELPER_FD"]))
    try:
        kill_and_see_it_go(old, " (a stray copy of its socket held open)")
        assert helper.get_helper() is not old
    finally:
        os.close(stray)


def test_a_client_whose_descriptors_are_numbered_past_1024_runs_and_sees_its_helper_die(no_leftovers):
    """A notebook kernel that has opened many files gets descriptors numbered 1024 and up,
    which select(2) cannot take: the client waits with poll(2). With select, the start
    failed ("filedescriptor out of range") and the reader thread stopped for good."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}: this needs 1,200")
    probe = (
        "import os, resource, signal, time\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (1200, {hard}))\n"
        "null = os.open('/dev/null', os.O_RDONLY)\n"
        "held = [os.dup(null) for _ in range(1100)]   # what a busy kernel has open\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "from labkit.runtime.client import helper_client\n"
        "print(Container(ContainerSpec(command='echo ran')).run().stdout.strip())\n"
        "helper_client.settle()   # its teardown done: a helper killed during one leaves it to the sweep\n"
        "helper = helper_client.get_helper()\n"
        "assert min(helper.sock.fileno(), helper.exit_fd) >= 1024, (helper.sock.fileno(), helper.exit_fd)\n"
        "os.kill(helper.pid, signal.SIGKILL)\n"
        "deadline = time.monotonic() + 60\n"
        "while helper.gone is None and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('seen gone' if helper.gone else 'never seen gone')\n"
        "print(Container(ContainerSpec(command='echo again')).run().stdout.strip())\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["ran", "seen gone", "again"]
