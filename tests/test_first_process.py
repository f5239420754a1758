"""A container's PID 1 forked by the helper itself (runtime/helper/first_process.py), on the
real kernel: no labkit process is left in the container's namespaces, the helper is back
in its own PID namespace after every fork (else its next fork would be born inside a
container), PID 1 leads a session of its own as runc's does, and the rootless way (a
supervisor between the two) still serves where the helper may not go back."""

import os
import subprocess
import sys

import pytest

from labkit.runtime import Container, ContainerSpec
from labkit.runtime.spec import userns_fields
from labkit.runtime.client.helper_client import get_helper, pool_filled, shutdown_helper
from test_exit_path import namespaces_held_by
from test_pool import a_root_is_made_ahead, a_slot_is_ready

pytestmark = pytest.mark.root

KINDS = ("uts", "ipc", "net", "pid", "mnt", "cgroup")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("PPid:"))


def namespace(pid, kind) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def processes_in(link: str, kind: str) -> set:
    """Every process on the host in the namespace `link` (`uts:[4026...]`), as lsns counts."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/{kind}") == link:
                found.add(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return found


@pytest.fixture(params=["fresh", "slot"])
def way(request, monkeypatch, labkit_home):
    """A helper of the test's own: with no pool (every PID 1 forked at its start), or with a
    slot ready (PID 1 forked ahead, into the slot)."""
    shutdown_helper()
    monkeypatch.setenv("LABKIT_POOL", "0" if request.param == "fresh" else "3")
    if request.param == "slot":
        a_slot_is_ready()
    yield request.param
    shutdown_helper()


def test_no_labkit_process_stays_in_the_containers_namespaces(no_leftovers, way):
    container = Container(ContainerSpec(command=["sleep", "30"]))
    container.start(detach=True)
    try:
        assert container.pooled == (way == "slot")
        helper = get_helper().pid
        assert parent_of(container.pid) == helper
        for kind in KINDS:
            link = namespace(container.pid, kind)
            assert link != namespace(helper, kind), kind
            assert processes_in(link, kind) == {container.pid}, kind   # lsns: NPROCS 1
        # The helper holds the mount namespace by a descriptor (test_exit_path.py says why).
        # (Read with test_exit_path's namespaces_held_by: a helper busy remaking a slot closes
        # fds between the listing and the readlink, which a fresh clone caught.)
        assert namespace(container.pid, "mnt") in namespaces_held_by(helper)
    finally:
        container.remove()


def test_the_helper_forks_in_its_own_pid_namespace_again(no_leftovers, way):
    """After each PID namespace it made, the helper's children are born in its own again:
    /proc/PID/ns/pid_for_children names the namespace its next child is born in."""
    for _ in range(3):
        Container(ContainerSpec(command=["true"])).run().check()
    # Read once the pool is full again: while the helper forks a slot, between its unshare
    # and the child's birth, the link reads ENOENT (a fresh clone under load caught that).
    pool_filled()
    helper = get_helper().pid
    assert namespace(helper, "pid_for_children") == namespace(helper, "pid")


def test_without_going_back_the_next_child_would_be_born_elsewhere():
    """What the check above would see without the `setns` back: a process that made a PID
    namespace and did not go back has its children born in that namespace."""
    script = ("import os, signal\nfrom labkit.linux import syscalls\n"
              "syscalls.unshare(syscalls.CLONE_NEWPID)\n"
              "child = os.fork()\n"   # the namespace's PID 1 (its link reads ENOENT until there is one)
              "if child == 0:\n    signal.pause()\n"
              "print(os.readlink('/proc/self/ns/pid_for_children') != os.readlink('/proc/self/ns/pid'))\n"
              "os.kill(child, signal.SIGKILL); os.waitpid(child, 0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def session_and_group(result) -> str:
    return result.check().stdout.strip()


SESSION = "read pid comm state ppid pgrp session rest < /proc/1/stat; echo $pgrp $session"


@pytest.mark.parametrize("options", [{}, {"init": True}])
def test_pid_1_leads_a_session_and_group_of_its_own_as_runcs(no_leftovers, way, options):
    """runc's PID 1 shows `pgrp=1 sid=1` (`podman run --runtime runc` on this host); so does
    labkit's, forked alone, from a slot, or with --init (the reaper is PID 1)."""
    container = Container(ContainerSpec(command=["sh", "-c", SESSION], **options))
    assert session_and_group(container.run()) == "1 1"


def test_a_supervised_pid_1_leads_its_session_too(no_leftovers):
    """--userns takes the supervisor's way (a user namespace is made above PID 1)."""
    container = Container(ContainerSpec(command=["sh", "-c", SESSION], **userns_fields(True)))
    assert session_and_group(container.run()) == "1 1"


PROBE = """
import sys
from labkit.linux import seccomp, syscalls
from labkit.runtime.helper import first_process
if sys.argv[1] == "filtered":
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["setns"], "action": "SCMP_ACT_ERRNO"}]}
    syscalls.prctl_set_no_new_privs()
    seccomp.load_filter(seccomp.Profile.from_json(profile).compile(["sys_admin"]))
import os
forks = []
os.register_at_fork(before=lambda: forks.append(1))
print(first_process.own_pid_namespace() is not None, len(forks))
"""


@pytest.mark.parametrize("how", ["filtered", "plain"])
def test_a_helper_that_may_unshare_but_not_go_back_forks_no_pid_1_itself(how):
    """A profile that lets `unshare` through and refuses `setns` (a custom seccomp profile
    around labkit itself): found out in a child, before the helper's own unshare, so the
    helper takes the supervisor's way instead of being stuck with its children born in a
    container's PID namespace. With no filter (and CAP_SYS_ADMIN) nothing can refuse them:
    the answer is yes, and no child is forked to ask."""
    done = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["False", "1"] if how == "filtered" else ["True", "0"])


FDS = "for fd in /proc/self/fd/*; do echo \"${fd##*/} $(readlink $fd)\"; done"


@pytest.mark.parametrize("options", [{}, {"volumes": ["/tmp:/host-tmp:ro"]}], ids=["its-root", "another-root"])
def test_a_container_from_a_slot_holds_no_descriptor_but_its_stdio(no_leftovers, way, options):
    """A slot's first process keeps an fd of the host's mount namespace while it waits
    (to leave a root made ahead for another plan's), and its plan socket: neither reaches
    the command, whether the plan takes the root made ahead or builds its own."""
    if way == "slot":
        a_root_is_made_ahead()   # both plans take a slot with a root built (and pivoted into) ahead
    container = Container(ContainerSpec(command=["sh", "-c", FDS], **options))
    result = container.run()
    assert container.pooled == (way == "slot")
    held = dict(line.split(" ", 1) for line in result.check().stdout.splitlines())
    assert set(held) - {"0", "1", "2"} <= {"3"} and not held.get("3", "/proc/").startswith(("mnt:", "socket:")), held
    assert not any(target.startswith(("mnt:", "pid:", "socket:")) for target in held.values()), held


@pytest.mark.parametrize("options", [{}, {"time_offset": 3600}], ids=["its-own", "supervised"])
def test_an_init_pid_1_holds_nothing_of_the_helpers(no_leftovers, way, options):
    """--init keeps PID 1 a Python reaper for the container's life: it holds its stdio and
    nothing the helper had open (other containers' pipes and namespaces, the owner's socket),
    which a process of the container could otherwise reopen through /proc/1/fd. Forked by
    the helper (fresh or a slot), or below a supervisor (--timens takes that way)."""
    other = Container(ContainerSpec(command=["sleep", "30"]))
    other.start(detach=True)   # the helper holds its pipes and its mount namespace meanwhile
    try:
        # The command's first look: the reaper holds nothing but stdio and is inside the
        # container's profile already (seccomp mode 2, the container's capabilities).
        look = "ls /proc/1/fd; grep -h -E '^(Seccomp|CapEff):' /proc/1/status /proc/self/status"
        container = Container(ContainerSpec(command=["sh", "-c", look], init=True, **options))
        fds, status = [], []
        for line in container.run().check().stdout.splitlines():
            (status if ":" in line else fds).append(line)
        assert sorted(fds) == ["0", "1", "2"]
        assert "Seccomp:\t2" in status and len({line for line in status if line.startswith("CapEff")}) == 1, status
    finally:
        other.remove()


@pytest.mark.parametrize("options", [{}, {"time_offset": 3600}], ids=["its-own", "supervised"])
def test_an_init_pid_1_shows_the_container_nothing_of_the_helpers_memory(no_leftovers, way, options):
    """The reaper never execs: its memory is the helper's, which holds the owner's
    environment (a Jupyter kernel's JUPYTER_TOKEN) and what is left of other containers'
    plans. An audit read both from inside (/proc/1/environ, /proc/1/mem): the reaper had
    the container's uid and capabilities and stayed dumpable. Now it is not dumpable.
    With CAP_SYS_PTRACE (not in Docker's default set) the same read works: it is a real
    attempt, refused by that rule alone."""
    look = "cat /proc/1/environ >/dev/null 2>&1 && echo environ-read; head -c 1 /proc/1/maps >/dev/null 2>&1 && echo maps-read; true"
    refused = Container(ContainerSpec(command=["sh", "-c", look], init=True, **options)).run().check()
    assert refused.stdout == ""
    allowed = Container(ContainerSpec(command=["sh", "-c", look], init=True, cap_add=["SYS_PTRACE"], **options)).run()
    assert allowed.check().stdout.split() == ["environ-read", "maps-read"]


def test_an_init_pid_1_forwards_a_signal_sent_the_moment_it_started(no_leftovers, way):
    """A SIGTERM sent as soon as the start is answered reaches the command: the reaper's
    signals are blocked from before its fork until its handlers are set. Before, one that
    came in between was dropped (PID 1 with no handler) and `sleep` ran on: a fresh
    clone's `make test` under load hung 60 s so."""
    import signal

    for _ in range(10):
        container = Container(ContainerSpec(command=["sleep", "100"], init=True))
        container.start(auto_remove=True)
        container.signal(signal.SIGTERM)
        assert container.wait(30).exit_code == 128 + signal.SIGTERM


@pytest.mark.parametrize("options", [{}, {"init": True}])
def test_a_working_directory_through_a_descriptor_of_the_first_process_is_refused(no_leftovers, way, options, tmp_path):
    """runc's CVE-2024-21626: `-w /proc/self/fd/N`, where N was a descriptor of a host
    directory the runtime still held at its chdir, gave the command a working directory
    outside its root. The first process holds none there (fresh or from a slot, with or
    without --init): every N is refused, and the error names the step and the path."""
    # The way in works on any process that holds a directory: this one, on the host.
    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.path.samefile(f"/proc/self/fd/{held}", tmp_path)
    finally:
        os.close(held)
    for number in range(3, 24):
        result = Container(ContainerSpec(command=["pwd"], workdir=f"/proc/self/fd/{number}", **options)).run()
        assert result.exit_code == 125, (number, result.stdout)
        assert f"change to the working directory: /proc/self/fd/{number}: " in result.error, result.error
