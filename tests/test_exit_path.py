"""The exit's path: a container's exit is reported when its last process has exited, not
once the kernel has taken its mount namespace down (the overlay's unmount and the sync
of its upper layer), and what that leaves is still torn down, always."""

import os
import re

import pytest

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
def test_the_supervisor_holds_the_containers_mount_namespace(no_leftovers, monkeypatch, pool):
    """Held from outside, the namespace outlives the container's last process: its
    teardown is not part of that process's exit (nor of the wait for it)."""
    from labkit.runtime.client.helper_client import shutdown_helper

    shutdown_helper()   # a helper of this test's own, with or without a pool
    monkeypatch.setenv("LABKIT_POOL", "3" if pool == "slot" else "0")
    container = Container(ContainerSpec(command=["sleep", "30"]))
    container.start(detach=True)
    try:
        container_namespace = os.readlink(f"/proc/{container.pid}/ns/mnt")
        assert container_namespace != os.readlink("/proc/self/ns/mnt")
        supervisor = parent_of(container.pid)
        assert container_namespace in namespaces_held_by(supervisor)
    finally:
        container.remove()
        shutdown_helper()
    # (no_leftovers asserts: nothing is mounted, no directory or cgroup is left)
