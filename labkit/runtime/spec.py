"""ContainerSpec: everything a container is, as data. Validated before anything is made.

Options that mean more than their text are parsed here once, into types the rest of the
runtime reads: `--net` into a NetworkMode, the user namespace's map into a
UserNamespaceMap, and `--userns` into the spec fields it stands for (`userns_fields`).

Shared: the caller builds and validates it (runtime/client/); the helper and a ready
slot's supervisor read its DEFAULT_NAMESPACES."""

import math
import os
import posixpath
import re
import stat
import time
from collections import namedtuple
from dataclasses import dataclass, field

from labkit.errors import ConfigError
from labkit.linux.namespaces import BY_NAME, in_initial_user_namespace
from labkit.linux.rootless import ORDINARY_IDS, SUBGID, SUBUID, granted_ranges, running_rootless
from labkit.security.options import capability_name, device_rules, parse_security_opts
from labkit.units import parse_assignments, parse_bytes, parse_count, parse_cpus, parse_seconds

# Six kinds, as Docker: user and time namespaces are opt-in.
DEFAULT_NAMESPACES = ("mnt", "uts", "ipc", "pid", "net", "cgroup")
# \Z, not $: $ also matches before a final newline, and "web\n" was a valid name and hostname.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
USER_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.-]{0,31}\$?\Z")   # useradd's, with a machine account's $
MAX_ID = 4294967294          # uid_t's top value, (uid_t)-1, means "unchanged" to setresuid
MIN_MEMORY = 6 << 20         # Docker's floor: below it a container dies before its command runs
PID_MAX_LIMIT = 4194304      # the kernel refuses a pids.max above it (PID_MAX_LIMIT on 64-bit)
KTIME_SEC_MAX_HALF = 4611686018   # a time namespace's clocks must stay in [0, KTIME_SEC_MAX/2]
# The kernel's own filesystems in the container: labkit mounts them (masked and read-only
# where Docker does) and a mount over one would undo that. runc refuses /proc and anything
# inside it; over /sys or /dev the container would lose its sysfs or its device nodes.
KERNEL_FILESYSTEMS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class NetworkMode:
    """`--net`: none (a network namespace with loopback only), host (the host's own),
    bridge (an address on labkit's bridge), pasta (the host's address and routes through
    pasta, what rootless podman does; labkit.net.pasta) or container:NAME (NAME's
    namespace, shared)."""
    kind: str                       # "none", "host", "bridge", "pasta" or "container"
    peer: str | None = None         # container:NAME's NAME

    @classmethod
    def parse(cls, value) -> "NetworkMode":
        if isinstance(value, NetworkMode):
            return value
        text = str(value)
        kind, colon, peer = text.partition(":")
        if (not colon and kind in ("none", "host", "bridge", "pasta")) or (kind == "container" and NAME_PATTERN.match(peer)):
            return cls(kind, peer or None)
        raise ConfigError(f"--net {text!r} is not one of none, host, bridge, pasta, container:NAME")

    @property
    def is_host(self) -> bool:
        return self.kind == "host"

    @property
    def is_bridge(self) -> bool:
        return self.kind == "bridge"

    @property
    def managed(self) -> bool:
        """Does labkit.net take part (an address to lease, a peer's namespace to join)?
        With none and host there is nothing for it to do."""
        return self.kind in ("bridge", "container", "pasta")

    def __str__(self) -> str:
        return f"container:{self.peer}" if self.peer else self.kind


class UserNamespaceMap(namedtuple("UserNamespaceMap", ("uid", "count"), defaults=(100000, 65536))):
    """A user namespace's map: its root is host uid (and gid) `uid`, and `count` ids
    from there are mapped (`0 uid count` in uid_map and gid_map). A (uid, count) tuple
    is one too."""
    __slots__ = ()

    @classmethod
    def parse(cls, value) -> "UserNamespaceMap":
        try:
            uid, count = (int(number) for number in value)
        except (TypeError, ValueError):
            raise ConfigError(f"user_map {value!r} is not (host uid, count), e.g. (100000, 65536)") from None
        if uid < 1 or count < 1:
            raise ConfigError(f"user_map {value!r}: the host uid and the count must be positive "
                              "(uid 0 would make the container's root the host's)")
        return cls(uid, count)


# Root's --userns containers: their ids on the host. Far above what useradd hands out to
# users (/etc/subuid ranges from 100,000 up to SUB_UID_MAX, 600,100,000 by default) and
# above the grader's sandboxes (1,000,000,000 + 2^18 a sandbox). Root's default was
# 100,000 once: the very range Debian's useradd gives the first user, who could then
# signal root's --userns containers and write into their read-write layers (an audit).
ROOT_USERNS_FIRST_ID = 1_500_000_000
SUBID_FILES = (SUBUID, SUBGID)


def user_map_for(value) -> UserNamespaceMap:
    """The --userns map of a spec (`value` None: the default for where labkit runs):
    rootless, a part of the user's own range (rootless_user_map); as the host's root,
    ROOT_USERNS_FIRST_ID on, and refused where a user of this host has any of its ids;
    in another user namespace (a grading sandbox's nested labkit), 100,000 on."""
    if running_rootless():
        return rootless_user_map(UserNamespaceMap() if value is None else UserNamespaceMap.parse(value))
    if not in_initial_user_namespace():
        return UserNamespaceMap() if value is None else UserNamespaceMap.parse(value)
    user_map = UserNamespaceMap(ROOT_USERNS_FIRST_ID) if value is None else UserNamespaceMap.parse(value)
    refuse_ids_of_users(user_map, SUBID_FILES)
    return user_map


def refuse_ids_of_users(user_map: UserNamespaceMap, files=SUBID_FILES) -> None:
    """A map that shares a host id with a range /etc/subuid or /etc/subgid gives a user is
    refused: that user's own user namespaces have those ids, and could signal the
    container's processes and write what they own."""
    first, last = user_map.uid, user_map.uid + user_map.count - 1
    for path in files:
        for owner, start, count in granted_ranges(path):
            if start <= last and first <= start + count - 1:
                raise ConfigError(
                    f"the --userns map (host ids {first}-{last}) shares ids with the range {path} gives "
                    f"{owner} ({start}-{start + count - 1}): that user could signal this container's "
                    f"processes and write its files; give a map outside every range of /etc/subuid and "
                    f"/etc/subgid (user_map=(FIRST, COUNT)), or leave user_map out for labkit's own "
                    f"({ROOT_USERNS_FIRST_ID} on)")


def rootless_user_map(user_map: UserNamespaceMap) -> UserNamespaceMap:
    """A `--userns` map for rootless labkit, whose containers are made inside the user's
    own user namespace: it may map only ids that namespace has (1 onwards: its range; 0,
    the user, is kept out).

    Ordinary rootless containers run in that namespace itself, with its ids 0 to 65,535
    (ORDINARY_IDS: an image's, nobody included). The default map keeps a `--userns`
    container's ids apart from theirs, as root's are apart from the host's users': the
    65,536 ids after them, where the range holds them (131,071 ids or more). A smaller range
    (65,536 is Debian's default) cannot: the map is then its first 65,536 ids, so the
    container's root is uid 1 of ordinary containers, and that is said once, in one line
    naming the fix."""
    from labkit.linux.rootless import ids_of_the_user_namespace, say_userns_shares_ids_once

    ids = ids_of_the_user_namespace()
    free = ids - 1
    if free < 1:
        raise ConfigError("--userns rootless maps the container's ids onto your /etc/subuid range, and you have "
                          "none; as root: `apt-get install uidmap` and `usermod --add-subuids FIRST-LAST "
                          "--add-subgids FIRST-LAST USER` with 65536 ids no other user has (useradd picks such a "
                          "range itself), or run without --userns")
    if user_map == UserNamespaceMap():
        if ids - ORDINARY_IDS >= user_map.count:
            return UserNamespaceMap(ORDINARY_IDS, user_map.count)
        say_userns_shares_ids_once(free)
        return UserNamespaceMap(1, min(user_map.count, free))
    if user_map.uid + user_map.count - 1 > free:
        raise ConfigError(f"user_map {tuple(user_map)!r}: rootless, a user namespace's ids come from your range, "
                          f"ids 1 to {free} of labkit's user namespace; give a map within them, e.g. (1, {free})")
    return user_map


def userns_fields(on: bool) -> dict:
    """What `--userns` means for a spec: the default namespaces and a user namespace (mapped
    by the spec's `user_map`). The one translation of the flag; each front end calls it."""
    return {"namespaces": DEFAULT_NAMESPACES + ("user",)} if on else {}


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
    env: list = field(default_factory=list)  # "KEY=VALUE", or "KEY": the caller's value (none if unset)
    env_file: list = field(default_factory=list)  # files of KEY=VALUE lines (Docker's --env-file)
    workdir: str | None = None
    volumes: list = field(default_factory=list)   # Volume or "SRC:DST[:ro]"
    user: str | None = None                  # "uid[:gid]" or a name from the image
    timeout: float | None = None             # seconds, then the container is killed
    network: object = "none"                 # none | host | bridge | container:NAME (a NetworkMode once validated)
    init: bool = False                       # a reaping PID 1 in front of the command
    time_offset: float = 0.0                 # seconds added to CLOCK_MONOTONIC/BOOTTIME (time ns)
    user_map: tuple = None                   # host uid/gid range for a user namespace (None: user_map_for's)
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
    tmpfs: list = field(default_factory=list)     # writable tmpfs mounts, "PATH[:OPTIONS]" (Docker's)
    python: bool = False                     # mount labkit's Python read-only (runtime/python_mounts.py)
    storage_opt: list = field(default_factory=list)   # "size=1g": the read-write layer's size (docker --storage-opt)
    log_opt: list = field(default_factory=list)       # "max-size=10m", "max-file=3": a detached container's logs
    # Filled by validated() from the two above and the class defaults (labkit.defaults):
    storage_size: int | None = None          # bytes the read-write layer may hold (None: unbounded)
    log_max_size: int | None = None          # bytes of stdout.log (and of stderr.log) before it is rotated
    log_max_files: int | None = None         # files of each kept, the current one included
    limits_from_defaults: tuple = ()         # the limits (memory, pids, cpus) the class defaults filled

    def limits(self):
        """The cgroup limits this (validated) spec asks for."""
        from labkit.cgroups import Limits
        from labkit.cgroups.devices import enforceable

        return Limits(memory=self.memory, cpus=self.cpus, pids=self.pids,
                      io_read_bps=dict(self.device_read_bps), io_write_bps=dict(self.device_write_bps),
                      devices=enforceable(device_rules(self)))

    def asked_limits(self) -> dict:
        """Each cgroup limit this (validated) spec sets, by kind, as the user asked for it
        (`--memory 64m`, or the class default and its file): what a line says when the
        limit cannot hold."""
        from labkit.defaults import ITEMS, class_defaults
        from labkit.units import format_bytes

        asked = {}
        for kind, item in (("memory", "memory"), ("cpu", "cpus"), ("pids", "pids")):
            value = getattr(self, item)
            if value is not None:
                how = f"{ITEMS[item].option} {ITEMS[item].show(value)}"
                if item in self.limits_from_defaults:
                    how += f" (the class default in {class_defaults().path})"
                asked[kind] = how
        rates = [(option, rule) for option, rules in (("--device-read-bps", self.device_read_bps),
                                                      ("--device-write-bps", self.device_write_bps))
                 for rule in dict(rules).items()]
        if rates:
            asked["io"] = " ".join(f"{option} {device}:{format_bytes(rate)}/s" for option, (device, rate) in rates)
        return asked

    def validated(self) -> "ContainerSpec":
        """A copy with units parsed and every value checked; raises ConfigError."""
        spec = ContainerSpec(**self.__dict__)
        if isinstance(spec.command, str):
            spec.command = ["sh", "-c", spec.command]
        spec.command = [str(part) for part in spec.command]
        for part in spec.command:
            _no_nul(part, "the command's argument")
        if spec.entrypoint is not None:
            _no_nul(str(spec.entrypoint), "--entrypoint")
        if isinstance(spec.image, str):
            _image_name(spec.image)
        if spec.name is not None and not NAME_PATTERN.match(spec.name):
            raise ConfigError(f"--name {spec.name!r}: a container name must be letters, digits, '_', '.' or '-' (at most 63)")
        if spec.hostname is not None and not re.match(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})\Z", spec.hostname):
            raise ConfigError(f"--hostname {spec.hostname!r} is not a valid hostname (letters, digits, '.' and '-')")
        spec.namespaces = tuple(self._namespaces())
        spec.memory = None if spec.memory is None else _memory(spec.memory)
        spec.cpus = None if spec.cpus is None else parse_cpus(spec.cpus, "--cpus")
        spec.pids = None if spec.pids is None else parse_count(spec.pids, "--pids-limit", most=PID_MAX_LIMIT)
        _apply_class_defaults(spec)
        spec.env = [item for item in (parse_env(entry) for entry in env_files(spec.env_file) + list(spec.env))
                    if item is not None]
        spec.env_file = []   # read once: their lines are in env now
        if "user" in spec.namespaces:
            spec.user_map = user_map_for(spec.user_map)
        else:
            spec.user_map = UserNamespaceMap() if spec.user_map is None else UserNamespaceMap.parse(spec.user_map)
        spec.user = parse_user(spec.user, spec.namespaces, spec.user_map)
        if spec.python:
            from labkit.runtime.python_mounts import with_python

            spec.volumes, spec.command = with_python(spec.volumes, spec.command)
        spec.volumes = [v if isinstance(v, Volume) else Volume.parse(v) for v in spec.volumes]
        for volume in spec.volumes:
            _no_nul(volume.source, "--volume source")
            if not os.path.exists(volume.source):
                raise ConfigError(f"--volume source {volume.source!r} does not exist on the host; create it or fix the path")
            volume.target = mount_target(volume.target, "--volume target")
            volume.source = os.path.realpath(volume.source)
        spec.cap_add = [capability_name(name, "--cap-add") for name in spec.cap_add]
        spec.cap_drop = [capability_name(name, "--cap-drop") for name in spec.cap_drop]
        security = parse_security_opts(spec.security_opt, spec.seccomp, spec.no_new_privileges)
        spec.seccomp, spec.no_new_privileges = security.seccomp, security.no_new_privileges
        spec.device_read_bps = _device_rates(spec.device_read_bps, "--device-read-bps")
        spec.device_write_bps = _device_rates(spec.device_write_bps, "--device-write-bps")
        spec.read_only = bool(spec.read_only)
        spec.tmpfs = [format_tmpfs(*parse_tmpfs(entry)) for entry in spec.tmpfs]
        spec.workdir = parse_workdir(spec.workdir)
        spec.timeout = parse_timeout(spec.timeout)
        spec.time_offset = _time_offset(spec.time_offset)
        spec.network = NetworkMode.parse(spec.network)
        if spec.publish:
            from labkit.net.ports import PortMapping   # its proxy's threads: only when ports are published

            for entry in spec.publish:
                PortMapping.parse(entry)
        if spec.publish and spec.network.kind not in ("bridge", "pasta"):
            raise ConfigError(f"publishing ports ({', '.join(spec.publish)}) needs --net bridge (or, without root, --net pasta); "
                              f"with --net {spec.network} there is no container address to forward to")
        if spec.network.is_host:
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


# `--tmpfs PATH[:OPTIONS]` as Docker reads it: OPTIONS are mount(8)'s for tmpfs, comma
# separated; a tmpfs is nosuid, nodev and noexec unless an option says otherwise (Docker's
# defaults, moby's daemon/oci_linux.go), and the options the kernel's tmpfs takes as data
# (size=, mode=, uid=, gid=, nr_inodes=, nr_blocks=) pass through to it.
TMPFS_FLAGS = {"ro": ("rdonly", True), "rw": ("rdonly", False), "nosuid": ("nosuid", True),
               "suid": ("nosuid", False), "nodev": ("nodev", True), "dev": ("nodev", False),
               "noexec": ("noexec", True), "exec": ("noexec", False), "noatime": ("noatime", True),
               "atime": ("noatime", False), "nodiratime": ("nodiratime", True),
               "diratime": ("nodiratime", False), "relatime": ("relatime", True),
               "norelatime": ("relatime", False), "strictatime": ("strictatime", True)}
TMPFS_DEFAULTS = ("nosuid", "nodev", "noexec")
TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks")
MOUNT_FLAG_BITS = {"rdonly": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                   "relatime": 1 << 21, "strictatime": 1 << 24}


def parse_tmpfs(entry) -> tuple:
    """"/tmp:size=1m,exec" -> ("/tmp", MS_* flags, "size=1m"): where, how, and the data the
    kernel's tmpfs reads, each option checked here (a typo is a clear line, not EINVAL
    from mount(2) deep in the container's setup)."""
    text = str(entry)
    _no_nul(text, "--tmpfs")
    path, _, options = text.partition(":")
    if "," in path:
        raise ConfigError(f"--tmpfs {text!r}: the options come after a ':', e.g. /tmp:size=64m,mode=1777")
    target = mount_target(path, "--tmpfs")
    flags = dict.fromkeys(TMPFS_DEFAULTS, True)
    data = {}
    for option in filter(None, options.split(",")) if options else ():
        key, equals, value = option.partition("=")
        if not equals and key in TMPFS_FLAGS:
            name, on = TMPFS_FLAGS[key]
            flags[name] = on
        elif equals and key in TMPFS_DATA:
            data[key] = _tmpfs_value(text, key, value)
        else:
            raise ConfigError(f"--tmpfs {text!r}: unknown option {option!r}; give PATH[:OPTIONS] with options "
                              f"such as size=64m, mode=1777, uid=N, gid=N, exec, ro (mount(8)'s for tmpfs)")
    bits = sum(MOUNT_FLAG_BITS[name] for name, on in flags.items() if on)
    return target, bits, ",".join(f"{key}={value}" for key, value in data.items())


def _tmpfs_value(text, key, value) -> str:
    if key == "mode":
        if not re.fullmatch(r"[0-7]{1,4}", value):
            raise ConfigError(f"--tmpfs {text!r}: mode={value!r} is not an octal mode such as 1777 or 755")
    elif key == "size":
        if not re.fullmatch(r"[0-9]{1,19}[kmgKMG]?|[0-9]{1,2}%", value):   # size=0: no limit, as mount(8)
            raise ConfigError(f"--tmpfs {text!r}: size={value!r} is not a size such as 64m, 1g or 50%")
    elif not value.isdigit() or int(value) > MAX_ID:
        raise ConfigError(f"--tmpfs {text!r}: {key}={value!r} is not a number (0 to {MAX_ID})")
    return value


def format_tmpfs(target, bits, data) -> str:
    """The shortest "PATH[:OPTIONS]" of parse_tmpfs's answer (the options that differ from
    Docker's defaults, then the data), which parse_tmpfs reads back the same: a spec is
    validated twice, by the front end and by Container."""
    words = []
    for name, bit in MOUNT_FLAG_BITS.items():
        on = bool(bits & bit)
        if on != (name in TMPFS_DEFAULTS):
            words.append(next(word for word, meaning in TMPFS_FLAGS.items() if meaning == (name, on)))
    options = ",".join(words + ([data] if data else []))
    return f"{target}:{options}" if options else target


STORAGE_OPTS = {"size": ("storage_size", parse_bytes)}
LOG_OPTS = {"max-size": ("log_max_size", parse_bytes), "max-file": ("log_max_files", parse_count)}


def _apply_class_defaults(spec) -> None:
    """--storage-opt and --log-opt parsed (Docker's KEY=VALUE), then every limit filled from
    the class defaults and checked against their max (labkit.defaults names the file)."""
    from labkit.defaults import class_defaults

    for option, given, known in (("--storage-opt", spec.storage_opt, STORAGE_OPTS), ("--log-opt", spec.log_opt, LOG_OPTS)):
        for key, value in parse_assignments(given, option).items():
            if key not in known:
                raise ConfigError(f"{option} {key}={value}: unknown option {key!r}; "
                                  f"the options are {', '.join(known)}")
            field_name, parse = known[key]
            setattr(spec, field_name, parse(value, f"{option} {key}"))
    defaults = class_defaults()
    # Kept through a second validation (a validated spec is validated again by Container).
    spec.limits_from_defaults = tuple(item for item in ("memory", "pids", "cpus")
                                      if item in spec.limits_from_defaults
                                      or (getattr(spec, item) is None and defaults.default(item) is not None))
    for item, field_name in (("memory", "memory"), ("pids", "pids"), ("cpus", "cpus"), ("storage", "storage_size"),
                             ("log_size", "log_max_size"), ("log_files", "log_max_files")):
        setattr(spec, field_name, defaults.resolve(item, getattr(spec, field_name)))


def mount_target(path, what) -> str:
    """Where a volume or tmpfs goes: absolute, normalised, below "/" and not over (or, for
    /proc, inside) a kernel filesystem the runtime mounts, as runc refuses."""
    text = str(path)
    _no_nul(text, what)
    if not text.startswith("/"):
        raise ConfigError(f"{what} {text!r} must be an absolute path inside the container, e.g. /data")
    normal = "/" + posixpath.normpath(text).lstrip("/")
    if normal == "/":
        raise ConfigError(f"{what} {text!r} would replace the container's root; mount below it, e.g. /data")
    if normal in KERNEL_FILESYSTEMS:
        raise ConfigError(f"{what} {text!r} would replace the container's {normal} (the kernel's own filesystem, "
                          "which labkit mounts and masks as Docker does); pick another path, e.g. /data")
    if normal.startswith("/proc/"):
        raise ConfigError(f"{what} {text!r} is inside /proc, where runc refuses mounts (one could unmask a "
                          "masked file); pick a path outside /proc")
    return normal


def parse_user(user, namespaces=(), user_map=(100000, 65536)) -> str | None:
    """`uid[:gid]` or `name[:group]` (None or "": the image's user), checked before anything
    is made: a uid the kernel cannot take fails at setresuid, deep in setup."""
    if user is None or user == "":
        return None
    text = str(user)
    name, colon, group = text.partition(":")
    parts = [("user", name)] + ([("group", group)] if colon else [])
    for kind, part in parts:
        if part.isdigit():
            if int(part) > MAX_ID:
                raise ConfigError(f"--user {text!r}: {kind} id {part} is out of range (0 to {MAX_ID})")
            if "user" in namespaces and int(part) >= user_map[1]:
                raise ConfigError(f"--user {text!r}: {kind} id {part} is not mapped in the user namespace "
                                  f"(ids 0 to {user_map[1] - 1} are); give one of those")
            if "user" not in namespaces and int(part) >= ORDINARY_IDS and running_rootless():
                raise ConfigError(f"--user {text!r}: rootless, a container without --userns runs as ids 0 to "
                                  f"{ORDINARY_IDS - 1}; the ids of your range past them are kept for --userns "
                                  "containers, apart from these; give one of 0 to "
                                  f"{ORDINARY_IDS - 1}, or add --userns")
        elif not USER_NAME.match(part):
            raise ConfigError(f"--user {text!r} is not uid[:gid] or name[:group] "
                              "(e.g. 1000, 1000:1000 or nobody)")
    return text


def parse_workdir(workdir) -> str | None:
    if workdir is None:
        return None
    _no_nul(str(workdir), "--workdir")
    if not str(workdir).startswith("/"):
        raise ConfigError(f"--workdir {workdir!r} must be an absolute path")
    return str(workdir)


def parse_timeout(timeout) -> float | None:
    if timeout is None:
        return None
    seconds = parse_seconds(timeout, "--timeout")
    if seconds <= 0:
        raise ConfigError(f"--timeout {timeout!r} must be more than zero seconds")
    return seconds


def _time_offset(offset) -> float:
    """The kernel keeps a time namespace's CLOCK_MONOTONIC and CLOCK_BOOTTIME, offset
    included, between 0 and KTIME_SEC_MAX/2 as it stands now (ERANGE otherwise)."""
    seconds = parse_seconds(offset, "--timens")
    if seconds == 0:
        return 0.0
    least = -math.floor(time.clock_gettime(time.CLOCK_MONOTONIC))
    most = KTIME_SEC_MAX_HALF - math.ceil(time.clock_gettime(time.CLOCK_BOOTTIME))
    if not least <= seconds <= most:
        raise ConfigError(f"--timens {offset!r} would move the container's clocks out of the kernel's range: "
                          f"give from {least} (this host's uptime, back to zero) to {most} seconds")
    return seconds


def _memory(value) -> int:
    memory = parse_bytes(value, "--memory")
    if memory < MIN_MEMORY:
        raise ConfigError(f"--memory {value!r} is below Docker's minimum of 6 MiB, too little to start a "
                          "container; give at least 6m")
    return memory


def parse_env(item) -> str | None:
    """KEY=VALUE as given; a bare KEY takes the caller's value, and is not set at all when
    the caller has none (Docker's rule for `-e KEY` and an env file's `KEY` line)."""
    text = str(item)
    _no_nul(text, "--env")
    if text.startswith("=") or not text:
        raise ConfigError(f"--env {text!r} is not KEY=VALUE or KEY (to pass this environment's KEY on)")
    if "=" in text:
        return text
    value = os.environ.get(text)
    return None if value is None else f"{text}={value}"


def env_files(paths) -> list:
    """The KEY=VALUE and KEY lines of `--env-file` files, in order, as Docker reads them:
    blank lines and lines starting with # are skipped, leading whitespace is dropped, the
    value is everything after the first '=' (quotes included: no shell here)."""
    lines = []
    for path in paths:
        text = str(path)
        _no_nul(text, "--env-file")
        try:
            with open(text, encoding="utf-8") as file:
                content = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--env-file {text!r}: {getattr(error, 'strerror', None) or error}; "
                              "give a readable UTF-8 file of KEY=VALUE lines") from None
        for number, line in enumerate(content.splitlines(), 1):
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            key = line.partition("=")[0]
            if not key or any(c.isspace() for c in key):
                raise ConfigError(f"--env-file {text!r} line {number}: {line!r} is not KEY=VALUE or KEY "
                                  "(a name without spaces)")
            lines.append(line)
    return lines


def _image_name(name: str) -> None:
    from labkit.images.store import NAME_PATTERN as IMAGE_NAME

    if not IMAGE_NAME.fullmatch(name):
        raise ConfigError(f"--image {name!r} is not an image name: use letters, digits, '.', '_', ':' or '-' "
                          "(at most 128, starting with a letter or digit)")


def _no_nul(text: str, what) -> None:
    if "\0" in text:
        raise ConfigError(f"{what} {text!r} contains a NUL byte, which no path, argument or variable can hold")


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
