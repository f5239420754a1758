"""ContainerSpec: everything a container is, as data. Validated before anything is made."""

import os
import re
import stat
from dataclasses import dataclass, field

from labkit.errors import ConfigError
from labkit.linux.namespaces import BY_NAME
from labkit.security.options import capability_name, device_rules, parse_security_opts
from labkit.units import parse_bytes, parse_count, parse_cpus

# Six kinds, as Docker: user and time namespaces are opt-in.
DEFAULT_NAMESPACES = ("mnt", "uts", "ipc", "pid", "net", "cgroup")
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


@dataclass
class Volume:
    source: str
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, text: str) -> "Volume":
        """`SRC:DST[:ro|rw]`, as `docker run -v`."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ConfigError(f"--volume {text!r} is not SRC:DST or SRC:DST:ro")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise ConfigError(f"--volume {text!r}: mode must be ro or rw, not {mode!r}")
        return cls(parts[0], parts[1], mode == "ro")


@dataclass
class ContainerSpec:
    image: object = "busybox"               # a name, or an images.Image
    command: list = field(default_factory=list)   # empty: the image's CMD
    entrypoint: str | None = None            # replaces the image's ENTRYPOINT ("" for none) and CMD
    name: str | None = None
    hostname: str | None = None
    namespaces: tuple = DEFAULT_NAMESPACES
    memory: object = None                    # bytes, or "64m"
    cpus: object = None                      # fraction of cores, "0.5"
    pids: object = None                      # most processes at once
    env: list = field(default_factory=list)  # "KEY=VALUE"
    workdir: str | None = None
    volumes: list = field(default_factory=list)   # Volume or "SRC:DST[:ro]"
    user: str | None = None                  # "uid[:gid]" or a name from the image
    timeout: float | None = None             # seconds, then the container is killed
    network: str = "none"                    # none | host | bridge | container:NAME
    init: bool = False                       # a reaping PID 1 in front of the command
    time_offset: float = 0.0                 # seconds added to CLOCK_MONOTONIC/BOOTTIME (time ns)
    user_map: tuple = (100000, 65536)        # host uid/gid range for a user namespace
    publish: list = field(default_factory=list)   # "HOSTPORT:CONTAINERPORT[/tcp]"
    cap_add: list = field(default_factory=list)   # capabilities beyond Docker's default set (or ALL)
    cap_drop: list = field(default_factory=list)  # capabilities taken from it (or ALL)
    privileged: bool = False                 # all capabilities, no seccomp, every device, no masks
    security_opt: list = field(default_factory=list)   # "seccomp=unconfined|FILE", "no-new-privileges"
    seccomp: object = "default"              # "default", "unconfined", a profile file, or a dict
    no_new_privileges: bool = False
    device_read_bps: list = field(default_factory=list)   # "DEVICE:RATE", e.g. "/dev/vda:1m"
    device_write_bps: list = field(default_factory=list)
    read_only: bool = False                  # the root filesystem mounted read-only (docker --read-only)
    tmpfs: list = field(default_factory=list)     # writable tmpfs mounts, absolute paths inside
    python: bool = False                     # mount labkit's Python read-only (runtime/python_mounts.py)

    def limits(self):
        """The cgroup limits this (validated) spec asks for."""
        from labkit.cgroups import Limits
        from labkit.cgroups.devices import enforceable

        return Limits(memory=self.memory, cpus=self.cpus, pids=self.pids,
                      io_read_bps=dict(self.device_read_bps), io_write_bps=dict(self.device_write_bps),
                      devices=enforceable(device_rules(self)))

    def validated(self) -> "ContainerSpec":
        """A copy with units parsed and every value checked; raises ConfigError."""
        spec = ContainerSpec(**self.__dict__)
        if isinstance(spec.command, str):
            spec.command = ["sh", "-c", spec.command]
        spec.command = [str(part) for part in spec.command]
        if spec.name is not None and not NAME_PATTERN.match(spec.name):
            raise ConfigError(f"--name {spec.name!r}: a container name must be letters, digits, '_', '.' or '-' (at most 63)")
        if spec.hostname is not None and not re.match(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$", spec.hostname):
            raise ConfigError(f"--hostname {spec.hostname!r} is not a valid hostname (letters, digits, '.' and '-')")
        spec.namespaces = tuple(self._namespaces())
        spec.memory = None if spec.memory is None else parse_bytes(spec.memory, "--memory")
        spec.cpus = None if spec.cpus is None else parse_cpus(spec.cpus, "--cpus")
        spec.pids = None if spec.pids is None else parse_count(spec.pids, "--pids-limit")
        for item in spec.env:
            if "=" not in item or item.startswith("="):
                raise ConfigError(f"--env {item!r} is not KEY=VALUE")
        if spec.python:
            from labkit.runtime.python_mounts import with_python

            spec.volumes, spec.command = with_python(spec.volumes, spec.command)
        spec.volumes = [v if isinstance(v, Volume) else Volume.parse(v) for v in spec.volumes]
        for volume in spec.volumes:
            if not os.path.exists(volume.source):
                raise ConfigError(f"--volume source {volume.source!r} does not exist on the host; create it or fix the path")
            if not os.path.isabs(volume.target):
                raise ConfigError(f"--volume target {volume.target!r} must be an absolute path inside the container")
            volume.source = os.path.realpath(volume.source)
        spec.cap_add = [capability_name(name, "--cap-add") for name in spec.cap_add]
        spec.cap_drop = [capability_name(name, "--cap-drop") for name in spec.cap_drop]
        security = parse_security_opts(spec.security_opt, spec.seccomp, spec.no_new_privileges)
        spec.seccomp, spec.no_new_privileges = security.seccomp, security.no_new_privileges
        spec.device_read_bps = _device_rates(spec.device_read_bps, "--device-read-bps")
        spec.device_write_bps = _device_rates(spec.device_write_bps, "--device-write-bps")
        spec.read_only = bool(spec.read_only)
        spec.tmpfs = [_tmpfs_target(path) for path in spec.tmpfs]
        if spec.workdir is not None and not spec.workdir.startswith("/"):
            raise ConfigError(f"--workdir {spec.workdir!r} must be an absolute path")
        if spec.timeout is not None:
            try:
                spec.timeout = float(spec.timeout)
            except ValueError:
                raise ConfigError(f"--timeout {spec.timeout!r} is not a number of seconds") from None
            if spec.timeout <= 0:
                raise ConfigError(f"--timeout {spec.timeout!r} must be more than zero seconds")
        if not (spec.network in ("none", "host", "bridge") or spec.network.startswith("container:")):
            raise ConfigError(f"--net {spec.network!r} is not one of none, host, bridge, container:NAME")
        if spec.publish and spec.network != "bridge":
            raise ConfigError(f"publishing ports ({', '.join(spec.publish)}) needs --net bridge; "
                              f"with --net {spec.network} there is no container address to forward to")
        if spec.network == "host":
            spec.namespaces = tuple(n for n in spec.namespaces if n != "net")
        if spec.time_offset and "time" not in spec.namespaces:
            spec.namespaces = spec.namespaces + ("time",)
        return spec

    def _namespaces(self):
        kinds = list(self.namespaces)
        for kind in kinds:
            if kind not in BY_NAME:
                raise ConfigError(f"unknown namespace kind {kind!r}; the kinds are {', '.join(BY_NAME)}")
        if "mnt" not in kinds:
            raise ConfigError("a container needs its own mount namespace (mnt) for its root filesystem")
        return [kind for kind in BY_NAME if kind in kinds]


def _tmpfs_target(path) -> str:
    """An absolute, normalised path inside the container that is not "/" itself."""
    text = str(path)
    if not text.startswith("/"):
        raise ConfigError(f"--tmpfs {text!r} must be an absolute path inside the container, e.g. /tmp")
    normal = os.path.normpath(text)
    if normal in ("/", "//") or "," in normal:
        raise ConfigError(f"--tmpfs {text!r}: give a directory below / without ',' (e.g. /tmp or /run)")
    return normal


def _device_rates(entries, what) -> dict:
    """["/dev/vda:1m"] -> {"253:0": 1048576}: cgroups name block devices by major:minor."""
    if isinstance(entries, dict):
        return dict(entries)
    rates = {}
    for entry in entries:
        device, _, rate = str(entry).rpartition(":")
        if not device or not rate:
            raise ConfigError(f"{what} {entry!r} is not DEVICE:RATE, e.g. /dev/vda:1m")
        try:
            st = os.stat(device)
        except FileNotFoundError:
            raise ConfigError(f"{what} {entry!r}: {device} does not exist on the host") from None
        if not stat.S_ISBLK(st.st_mode):
            raise ConfigError(f"{what} {entry!r}: {device} is not a block device")
        rates[f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"] = parse_bytes(rate, f"{what} {entry!r}: rate")
    return rates
