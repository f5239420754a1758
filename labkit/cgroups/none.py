"""No cgroup at all: what a rootless container gets where the user may write none.

An ordinary user may create a cgroup only in a subtree delegated to him (cgroup v2, as
systemd's `Delegate=yes` does for a user session). cgroup v1 has no delegation, so on a
v1 host (like the machines labkit grew up on) a rootless container runs in its owner's
cgroup, without limits of its own and without statistics: what rootless podman does
there. This backend keeps the runtime's path the same (create, join, stats, kill,
delete) while making nothing; `reason` says why, for the messages that name the fix.
"""

from labkit.cgroups.base import Cgroup, Hierarchy, Limits, Stats
from labkit.errors import HostError

# What a container may ask for without a cgroup of its own: device rules are not needed
# rootless (root of a user namespace may not mknod, and opens a host node only as the user).
NOT_NEEDED_ROOTLESS = {"devices"}


class NoCgroup(Cgroup):
    """A container's cgroup that was never made: it joins none, counts nothing."""
    version = 0

    def procs_files(self) -> list:
        return []

    def set_limits(self, limits: Limits) -> None:
        pass   # `NoCgroups.check` let through only what needs no cgroup

    def stats(self) -> Stats:
        return Stats()

    def pids(self) -> list:
        return []   # the helper kills the container through its PID 1 (its PID namespace ends with it)

    def exists(self) -> bool:
        return False

    def device_control(self) -> list:
        return []

    def mount_table(self) -> list:
        return []

    def allow_every_device(self) -> None:
        pass

    def _remove_dirs(self, deadline: float) -> None:
        pass


class NoCgroups(Hierarchy):
    """The hierarchy of a host where labkit may make no cgroup (`reason` says why)."""
    version = 0

    def __init__(self, reason: str, delegation=None):
        self.reason = reason
        self.delegation = delegation   # rootless: the Delegation that was not there

    @property
    def controllers(self) -> set:
        return set()

    def check(self, limits: Limits) -> None:
        asked = limits.needs() - NOT_NEEDED_ROOTLESS
        if asked:
            kinds = ", ".join(sorted(asked))
            raise HostError(f"the {kinds} limit needs a cgroup of the container's own, and {self.reason}; "
                            "run the container without it, or see `labkit doctor`")

    def open(self, name: str) -> Cgroup:
        return NoCgroup(name)

    def _make(self, name: str, limits: Limits) -> Cgroup:
        return NoCgroup(name)

    def children(self) -> list:
        return []
