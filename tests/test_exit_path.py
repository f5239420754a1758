"""The exit's path: a container's exit is reported when its last process has exited, not
once the kernel has taken its mount namespace down (the overlay's unmount and the sync
of its upper layer), and what that leaves is still torn down, always."""

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest

from kernel_fixtures import wait_until
from labkit.runtime import Container, ContainerSpec


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("PPid:"))


def namespaces_held_by(pid: int) -> set:
    """The namespaces (`mnt:[4026...]`) that process `pid` holds open as file descriptors."""
    held = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if re.fullmatch(r"mnt:\[\d+\]", target):
            held.add(target)
    return held


@pytest.mark.root
@pytest.mark.parametrize("pool", ["slot", "fresh"])
def test_the_runtime_holds_the_containers_mount_namespace(no_leftovers, monkeypatch, pool):
    """Held from outside, the namespace outlives the container's last process: its
    teardown is not part of that process's exit (nor of the wait for it). As root the
    holder is PID 1's parent, the helper (runtime/helper/first_process.py); rootless, the
    supervisor."""
    from labkit.runtime.client.helper_client import shutdown_helper

    shutdown_helper()   # a helper of this test's own, with or without a pool
    monkeypatch.setenv("LABKIT_POOL", "3" if pool == "slot" else "0")
    container = Container(ContainerSpec(command=["sleep", "30"]))
    container.start(detach=True)
    try:
        container_namespace = os.readlink(f"/proc/{container.pid}/ns/mnt")
        assert container_namespace != os.readlink("/proc/self/ns/mnt")
        holder = parent_of(container.pid)
        assert container_namespace in namespaces_held_by(holder)
    finally:
        container.remove()
        shutdown_helper()
    # (no_leftovers asserts: nothing is mounted, no directory or cgroup is left)


def root_mount_options(container_spec, remove):
    """The super options of the container's own root mount, as the container sees them."""
    container = Container(container_spec)
    try:
        result = container.run(remove=remove).check()
    finally:
        container.remove()
    root = next(line for line in result.stdout.splitlines() if line.split()[4] == "/")
    return root.split(" - ", 1)[1].split()[2].split(",")


@pytest.mark.root
def test_an_upper_nothing_keeps_is_volatile_and_one_that_may_be_committed_is_not(no_leftovers):
    # Linux 6.x shows the option as fsync=volatile, 5.10–5.x as volatile.
    spec = ContainerSpec(command=["cat", "/proc/self/mountinfo"])
    volatile = {"volatile", "fsync=volatile"}
    assert volatile & set(root_mount_options(spec, remove=True))
    assert not volatile & set(root_mount_options(spec, remove=False))


@pytest.mark.root
def test_a_commit_right_after_the_exit_holds_every_byte_written(no_leftovers):
    """Committed as soon as the exit is reported (the namespace may still be held, the
    overlay still mounted): the upper holds what the container wrote, whole."""
    from labkit.images.containers import commit_container
    from labkit.images.diff import diff
    from labkit.runtime.client.state import find_container

    script = "head -c 3000000 /dev/urandom > /blob && sha256sum /blob > /blob.sum && mkdir -p /d/e && echo x > /d/e/f"
    container = Container(ContainerSpec(command=["sh", "-c", script]))
    try:
        assert container.run(remove=False).exit_code == 0
        image = commit_container(find_container(container.name), "committed-at-exit", store=container.image.store)
        layer = image.layer_dirs[-1]
        digest = hashlib.sha256((layer / "blob").read_bytes()).hexdigest()
        assert (layer / "blob").stat().st_size == 3000000
        assert (layer / "blob.sum").read_text().split()[0] == digest
        assert (layer / "d" / "e" / "f").read_text() == "x\n"
        assert diff(layer).lines()
    finally:
        container.remove()


def holders_of(namespace: str) -> list:
    """Every process that is in the namespace (`mnt:[4026...]`) or holds it as an fd."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == namespace or namespace in namespaces_held_by(int(pid)):
                found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


OWNER = """
import time
from labkit.runtime import Container, ContainerSpec
from labkit.runtime.client.helper_client import get_helper
container = Container(ContainerSpec(command=["sleep", "60"]))
container.start(detach=True)
print(get_helper().pid, container.pid, container.id, flush=True)
time.sleep(100)
"""


@pytest.mark.root
@pytest.mark.parametrize("helper_too", [False, True], ids=["owner-killed", "owner-and-helper-killed"])
def test_no_mount_namespace_outlives_a_killed_owner(labkit_home, helper_too):
    """The hold is let go however the container ends: its owner killed (the helper kills
    the container and has the janitor let go), or the helper SIGKILLed too (the kernel
    closes its fds). Nothing else of it is left either: the helper removes the rest, or,
    killed, leaves it to the sweep (`gc`). (Without that sweep this test left the
    container's cgroups under /sys/fs/cgroup/*/labkit on the host: no_leftovers cannot
    be used here, its settle() would start a helper of its own.)"""
    from leak_checks import container_cgroup_leaf, labkit_cgroups
    from labkit.runtime import gc

    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    try:
        helper, init, ident = owner.stdout.readline().split()
        helper, init = int(helper), int(init)
        leaf = container_cgroup_leaf(ident, str(labkit_home))   # read while its state.json is there
        namespace = os.readlink(f"/proc/{init}/ns/mnt")
        assert parent_of(init) == helper   # as root, PID 1 is the helper's child (first_process.py)
        assert namespace in namespaces_held_by(helper)
        if helper_too:
            os.kill(helper, signal.SIGKILL)
    finally:
        owner.kill()
        owner.wait()
    assert wait_until(lambda: holders_of(namespace) == [], timeout=30), holders_of(namespace)
    if helper_too:
        assert f"cgroup labkit/{leaf}" in gc()   # the sweep, not the test, removed them

    def left() -> list:
        cgroups = [path for path in labkit_cgroups() if path.rsplit("/", 1)[-1] == leaf]
        return cgroups + [str(path) for path in [labkit_home / "containers" / ident] if path.exists()]

    assert wait_until(lambda: left() == [], timeout=30), left()


def janitor_of(helper_pid: int) -> int | None:
    """The helper's janitor (runtime/helper/janitor.py), a child named labkit-janitor."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "labkit-janitor" and parent_of(int(pid)) == helper_pid:
                    return int(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


@pytest.mark.root
def test_a_killed_janitor_leaves_no_directory_behind(no_leftovers, monkeypatch):
    """Exited containers' directories are removed by the janitor, beside the helper. Held
    stopped, it removes nothing (the directories are there); SIGKILLed, what it had not
    confirmed is removed by the helper, and settle() returns once it is."""
    from labkit.runtime.client.helper_client import get_helper, settle, shutdown_helper

    shutdown_helper()
    monkeypatch.setenv("LABKIT_POOL", "3")
    spec = ContainerSpec(command=["true"])
    Container(spec).run().check()
    Container(spec).run().check()
    settle()
    janitor = janitor_of(get_helper().pid)
    assert janitor is not None
    os.kill(janitor, signal.SIGSTOP)
    try:
        left = []
        for _ in range(3):
            container = Container(spec)
            container.run().check()
            left.append(container.dir)
        # The helper hands them to the janitor when idle; stopped, it removes none of them.
        assert all(directory.exists() for directory in left)
    finally:
        os.kill(janitor, signal.SIGKILL)
    settle()
    assert [directory for directory in left if directory.exists()] == []
    Container(spec).run().check()   # a janitor again, for the next directories
    settle()
    shutdown_helper()


@pytest.mark.root
def test_a_container_gone_is_gone_for_its_owner_at_once(no_leftovers):
    """The helper forgets an exited `--rm` container (its state.json) right after it told
    the exit: in the owner's process, the name is free and `ps` does not list it as soon
    as run() returns, and its layers are not in use."""
    from labkit.runtime.client.state import host_containers, layers_in_use

    for _ in range(10):
        container = Container(ContainerSpec(command=["true"], name="janitor-box"))
        container.run().check()
        assert container.id not in [state.get("id") for state in host_containers()]
        assert layers_in_use() == set()
