"""The cgroup part of the helper's ready slots (runtime/helper/ready_slots.py explains them): how a
slot's cgroup is named and made, and how a container's limits go into it.

A slot's cgroup is made with the default device list and no limits, and used once: the
limits of the container it serves are written at its start, and it is deleted with that
container. It is never handed to a second container, because some counters cannot be
reset: v1's `memory.oom_control` oom_kill and `pids.events`, v2's `cpu.stat` and
`memory.events`. A reused cgroup would show a student the previous container's OOM
kills, refused forks and CPU time.
"""

import re

from labkit.cgroups.base import Cgroup, Hierarchy, Limits

_NAME = re.compile(r"^pool-(\d+)-(\d+)-(?:spare-)?\d+$")


def slot_devices() -> list:
    """The device list a slot's cgroup is made with: Docker's default allow-list. (Read
    when first needed: a helper that never makes a slot need not import it.)"""
    from labkit.cgroups.devices import DOCKER_DEFAULT, enforceable

    return enforceable(list(DOCKER_DEFAULT))


def slot_leaf(helper_pid: int, helper_start: int, number: int) -> str:
    """The leaf name of a slot's cgroup: whose it is (a PID is reused, a PID and start
    time are not), so that a sweep can tell a live helper's slot from a dead one's."""
    return f"pool-{helper_pid}-{helper_start}-{number}"


def spare_prefix(helper_pid: int, helper_start: int) -> str:
    """The start of a spare slot directory's name (a removed container's skeleton, kept
    for the next slot: runtime/container_dir.py): its helper's, as a slot's leaf."""
    return f"pool-{helper_pid}-{helper_start}-spare-"


def owner_of(leaf: str):
    """(helper pid, start time) of a slot's cgroup leaf name (or a spare slot directory's),
    or None for any other name."""
    match = _NAME.match(leaf)
    return (int(match.group(1)), int(match.group(2))) if match else None


def make_slot_cgroup(hierarchy: Hierarchy, leaf: str) -> Cgroup:
    """A fresh cgroup in every hierarchy a default container uses, with the default
    device list already written (it depends on the profile only, not on the spec)."""
    return hierarchy.create(leaf, Limits(devices=slot_devices()))


def can_serve(limits: Limits, version: int) -> bool:
    """Can a slot's cgroup take these limits? Not I/O limits (no blkio cgroup is made
    ahead); a different device list only on v1, where `devices.allow` takes "a" back."""
    if limits.io_read_bps or limits.io_write_bps:
        return False
    return limits.devices == slot_devices() or (limits.devices is None and version == 1)


def write_limits(cgroup: Cgroup, limits: Limits) -> None:
    """The container's limits into a slot's fresh cgroup (see `can_serve`)."""
    if limits.devices == slot_devices():
        limits = Limits(memory=limits.memory, cpus=limits.cpus, pids=limits.pids)   # written already
    elif limits.devices is None:
        cgroup.allow_every_device()
    cgroup.set_limits(limits)
