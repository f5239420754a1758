"""Device control: which device files a container may open, as Docker allows them.

A rule is the v1 `devices` controller's own line: `TYPE MAJOR:MINOR ACCESS`, TYPE one of
`a` (all), `b` (block), `c` (char), a number or `*` for MAJOR and MINOR, ACCESS made of
`r` (read), `w` (write), `m` (mknod). A container under device control may use only what
some rule allows; everything else is refused with EPERM at open(2) or mknod(2).

cgroup v1 enforces the rules in the `devices` hierarchy (`devices.deny`, `devices.allow`);
cgroup v2 has no such files: the rules become a small BPF_PROG_TYPE_CGROUP_DEVICE program
(`labkit.cgroups.device_filter`) attached to the container's cgroup, as runc and crun do.
"""

import re
from dataclasses import dataclass

from labkit.errors import ConfigError

ACCESS_BITS = {"m": 1, "r": 2, "w": 4}   # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
TYPE_CODES = {"b": 1, "c": 2}            # BPF_DEVCG_DEV_BLOCK, _CHAR

_LINE = re.compile(r"^([abc]) (\*|\d+):(\*|\d+) ([rwm]{1,3})\Z")


@dataclass(frozen=True)
class DeviceRule:
    type: str             # "a", "b" or "c"
    major: int | None     # None: any
    minor: int | None
    access: str           # subset of "rwm"

    @classmethod
    def parse(cls, line: str) -> "DeviceRule":
        match = _LINE.match(line.strip())
        if not match or len(set(match.group(4))) != len(match.group(4)):
            raise ConfigError(f"device rule {line!r} is not 'TYPE MAJOR:MINOR ACCESS', e.g. 'c 1:3 rwm' or 'b *:* m'")
        kind, major, minor, access = match.groups()
        return cls(kind, None if major == "*" else int(major), None if minor == "*" else int(minor), access)

    def __str__(self):
        number = lambda n: "*" if n is None else str(n)  # noqa: E731
        return f"{self.type} {number(self.major)}:{number(self.minor)} {self.access}"

    @property
    def access_mask(self) -> int:
        return sum(ACCESS_BITS[letter] for letter in self.access)


# Docker's default: mknod of anything (a node is harmless until it is opened), and
# read/write only of these: runc's allowed devices (libcontainer/specconv: AllowedDevices,
# tun re-added in runc 1.2.4) and moby's spec (daemon/pkg/oci/defaults.go), which denies
# /dev/fuse (c 10:229) explicitly, so it is not here.
DOCKER_DEFAULT = (
    "c *:* m", "b *:* m",
    "c 1:3 rwm",      # /dev/null
    "c 1:5 rwm",      # /dev/zero
    "c 1:7 rwm",      # /dev/full
    "c 1:8 rwm",      # /dev/random
    "c 1:9 rwm",      # /dev/urandom
    "c 5:0 rwm",      # /dev/tty
    "c 5:1 rwm",      # /dev/console
    "c 5:2 rwm",      # /dev/ptmx
    "c 136:* rwm",    # /dev/pts/*
    "c 10:200 rwm",   # /dev/net/tun
)


def enforceable(rules):
    """`rules`, or None in a non-initial user namespace: writing device rules (v1
    devices.allow, v2 a BPF program) needs the host's CAP_SYS_ADMIN. There, the device
    rules of the enclosing cgroup (a grading sandbox's, set by the host) hold for us.
    Rootless, also None: root of the user's namespace may not mknod, and the host's
    nodes bound in open only as far as the user himself may open them."""
    from labkit.linux.namespaces import in_initial_user_namespace
    from labkit.linux.rootless import running_rootless

    return rules if rules is None or (in_initial_user_namespace() and not running_rootless()) else None


def parse_rules(lines) -> list:
    return [rule if isinstance(rule, DeviceRule) else DeviceRule.parse(rule) for rule in lines]
