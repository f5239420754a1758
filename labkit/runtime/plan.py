"""The launch plan: what the helper needs to make a container (or an `exec` into one),
as typed data. `ContainerSpec` is what a user asks for; `Container._plan` compiles it,
with the image and the network's answer, into a `StartPlan`; the helper receives it
over its socket, adds where the cgroup is (`CgroupPlacement`), and the supervisor and
the container's first process (runtime/supervisor/, runtime/inside/) read it attribute
by attribute.

Shared by every process: the client compiles it (`start_plan`, `process_plan`), the
helper decodes and completes it, the processes it forks read it.

Across the socket a plan is JSON. `to_wire`/`from_wire` are strict on purpose: a field
the other side does not know, or one it expects and does not get, is an error, never a
silently ignored option. Adding an option is: a field on the spec, a field here (and
its line in `start_plan`), and the step in runtime/inside/ that reads it.
"""

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from labkit.cgroups.base import Limits
from labkit.runtime.container_dir import ContainerDir
from labkit.security.options import SecurityPlan, security_plan


class PlanError(ValueError):
    """A plan that does not match this module's declaration (a version mismatch or a bug)."""


@dataclass
class ProcessPlan:
    """The process to exec, shared by `start` and `exec`."""
    command: list                    # argv
    env: list                        # "KEY=VALUE", image + runtime + user, merged
    workdir: str                     # inside the container
    user: str | None                 # "uid[:gid]" or a name from the image's /etc/passwd
    security: SecurityPlan           # capabilities, seccomp, no_new_privs (exec: the container's own)
    image: str                       # the image's name, for error messages
    tty: bool = False                # its stdin is a terminal it takes as its controlling one (`-t`)


@dataclass
class VolumeMount:
    source: str                      # host path, resolved
    target: str                      # absolute path inside the container
    readonly: bool


@dataclass
class UserMap:
    uid: int                         # host uid (and gid) that the container's root maps to
    count: int


@dataclass
class NetworkInside:
    """eth0 as the container process sets it up from inside (labkit.net.inside)."""
    interface: str
    address: str
    netmask: str
    gateway: str | None


@dataclass
class ContainerRecord:
    """What state.json says about a container (plus the helper's owner fields and status)."""
    id: str
    name: str
    image: str
    image_layers: list
    command: list
    created: float
    client_pid: int


@dataclass
class LogPlan:
    """A detached container's stdout/stderr: written by the helper into the container's
    directory, each file rotated at `max_size` bytes, `max_files` of each kept."""
    max_size: int
    max_files: int


@dataclass
class CgroupPlacement:
    """Filled in by the helper once it made (or found) the cgroup: never sent by the client."""
    procs_files: list                # cgroup.procs file(s) to write our PID into
    version: int                     # 1 or 2
    v1_mounts: list                  # [(directory name, controllers)] for a v1 cgroup namespace


@dataclass
class StartPlan:
    id: str
    dir: str                         # LABKIT_HOME/containers/<id>
    rootfs: str                      # where the overlay is mounted
    upper: str                       # the read-write layer
    work: str                        # overlay's work dir
    lower: list                      # top first: the init layer, then the image's layers
    init_files: dict                 # /etc/<name> -> text, in dir/<name>, bind-mounted over the init layer's placeholder
    hostname: str
    namespaces: list                 # kinds to create, in labkit.linux.namespaces order
    process: ProcessPlan
    init: bool                       # a reaping PID 1 in front of the command
    hold: bool                       # stop before exec until the runtime releases it
    auto_remove: bool                # the helper removes the directories at exit
    volumes: list[VolumeMount]
    masked_paths: list               # kernel paths hidden (Docker's list; none with --privileged)
    readonly_paths: list             # kernel paths made read-only (likewise)
    read_only: bool                  # the overlay root mounted read-only
    tmpfs: list                      # [path inside, MS_* flags, tmpfs data] per --tmpfs
    limits: Limits
    time_offsets: dict               # clock name -> seconds, for a time namespace
    user_map: UserMap | None         # set when a user namespace is made
    join: dict                       # namespace kind -> /proc/PID/ns/<kind> to join instead
    network_inside: NetworkInside | None
    record: ContainerRecord
    storage_size: int | None         # bytes: the read-write layer on a tmpfs of this size (None: unbounded)
    logs: LogPlan | None             # set for a detached container (by start()): the helper writes its logs
    cgroup: CgroupPlacement | None = None   # the helper's part
    overlay: str = "kernel"          # the helper's part: "kernel", or "fuse" (images/rootless_overlay.py)
    fuse_fds: list | None = None     # the supervisor's part: [/dev/fuse fd its fuse-overlayfs serves, "mounted" pipe]


@dataclass
class ExecPlan:
    target: str                      # the container's id
    namespaces: list                 # kinds to join
    process: ProcessPlan
    target_pid: int | None = None    # the helper's part: the container's first process
    cgroup_procs: list = field(default_factory=list)   # the helper's part


# --- strict JSON-ready form -------------------------------------------------------------

def to_wire(plan) -> dict:
    """A plain dict (JSON-ready) with every field, nested plans included (values are
    shared, not copied: encode it, do not change it)."""
    return _encode(plan)


_PLAIN = frozenset({str, int, float, bool, type(None), bytes, dict})   # as they are


def _encode(value):
    # On every start's path (~110 values a plan): most are plain, and a type lookup
    # answers for them before is_dataclass() and isinstance() (57 µs a plan without it).
    if type(value) in _PLAIN:
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if dataclasses.is_dataclass(value):
        return {name: _encode(getattr(value, name)) for name in _field_names(type(value))}
    return value


@functools.lru_cache(maxsize=None)
def _field_names(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls))


def from_wire(cls, data):
    """The `cls` that `data` describes. Raises PlanError on an unknown or missing field
    (at any depth), naming it."""
    return _decode(cls, data, cls.__name__)


def _decode(cls, data, where):
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = _field_types(cls)
    if data.keys() != fields.keys():
        unknown = sorted(set(data) - set(fields))
        missing = sorted(set(fields) - set(data))
        if unknown:
            raise PlanError(f"{where}: unknown field(s) {', '.join(unknown)} (client and helper disagree?)")
        raise PlanError(f"{where}: missing field(s) {', '.join(missing)} (client and helper disagree?)")
    values = {}
    for name, (nested, many) in fields.items():
        value = data[name]
        if nested is not None and value is not None:
            if many:
                value = [_decode(nested, item, f"{where}.{name}[{index}]") for index, item in enumerate(value)]
            else:
                value = _decode(nested, value, f"{where}.{name}")
        values[name] = value
    return cls(**values)


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict:
    """name -> (nested dataclass or None, is a list of it), from the annotations. They are
    read as the objects they are (`list[X]`, `X | None`, `Optional[X]` all carry
    __origin__/__args__), not through the typing module, whose import alone costs more
    than the rest of a plan's decoding (~5 ms, in every `labkit run`'s helper)."""
    found = {}
    for item in dataclasses.fields(cls):
        hint = item.type
        if isinstance(hint, str):  # a forward reference: only typing can resolve it
            import typing

            hint = typing.get_type_hints(cls)[item.name]
        many = getattr(hint, "__origin__", None) is list
        if many:
            hint = hint.__args__[0]
        arguments = getattr(hint, "__args__", ())
        if type(None) in arguments:
            hint = next(arg for arg in arguments if arg is not type(None))
        found[item.name] = (hint if dataclasses.is_dataclass(hint) else None, many)
    return found


# Docker's default lists (moby's oci defaults): kernel files a container has no business
# reading (host-wide timers, keys, hardware) are masked; kernel settings shared with
# the host (/proc/sys: a write there changes the host) are read-only. A path this host
# lacks is skipped. `--privileged` sends empty lists. /proc/interrupts and the CPUs'
# thermal_throttle counters are moby's 2025 additions (advisory GHSA-6fw5-f8r9-fgfm: they
# let a container watch the host's activity); moby expands the CPUs at spec time on the
# host, labkit expands the pattern where the container's mounts are made (inside/mounts.py).
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
                "/sys/devices/system/cpu/cpu*/thermal_throttle")
# /sys last: a fresh sysfs is mounted read-only already; the host's, borrowed in a user
# namespace, is made so here.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/sys")


def kernel_path_lists(spec) -> dict:
    """Docker's masked and read-only paths for the plan; none with --privileged."""
    if getattr(spec, "privileged", False):  # ContainerSpec.privileged comes with --privileged (issue 10, part A)
        return {"masked_paths": [], "readonly_paths": []}
    return {"masked_paths": list(MASKED_PATHS), "readonly_paths": list(READONLY_PATHS)}


# --- compiling a spec -------------------------------------------------------------------

def start_plan(spec, image, *, id, name, hostname, directory, command, hold, auto_remove) -> StartPlan:
    """The plan for a validated ContainerSpec on `image`, in `directory` (the network's
    part, `join` and `network_inside`, is filled in by the runtime after labkit.net answers)."""
    from labkit.runtime.spec import parse_tmpfs   # the client's module: not loaded where plans are read

    paths = ContainerDir(directory)
    return StartPlan(
        id=id, dir=str(paths.path), rootfs=str(paths.rootfs), upper=str(paths.upper), work=str(paths.work),
        lower=[str(paths.init)] + [str(layer) for layer in reversed(image.layer_dirs)],
        init_files=init_files(hostname), hostname=hostname, namespaces=list(spec.namespaces),
        process=process_plan(spec, image, hostname, command), init=spec.init, hold=hold, auto_remove=auto_remove,
        volumes=[VolumeMount(v.source, v.target, v.readonly) for v in spec.volumes],
        **kernel_path_lists(spec),
        read_only=spec.read_only, tmpfs=[list(parse_tmpfs(entry)) for entry in spec.tmpfs], limits=spec.limits(),
        time_offsets={"monotonic": spec.time_offset, "boottime": spec.time_offset} if spec.time_offset else {},
        user_map=UserMap(spec.user_map.uid, spec.user_map.count) if "user" in spec.namespaces else None,
        join={}, network_inside=None,
        record=ContainerRecord(id=id, name=name, image=image.name, image_layers=list(image.layers),
                               command=list(command), created=time.time(), client_pid=os.getpid()),
        storage_size=spec.storage_size, logs=None,
    )


def process_plan(spec, image, hostname, command, env=(), workdir=None, user=None, tty=False) -> ProcessPlan:
    """The process of a container (or of an `exec` into it, with its own overrides).
    `tty`: on a terminal, with TERM=xterm unless set (Docker's -t)."""
    return ProcessPlan(
        command=list(command), tty=tty,
        # HOME, unless set, comes from the user's passwd entry inside (setup.home_of), as runc
        env=merge_env([f"HOSTNAME={hostname}"], ["TERM=xterm"] if tty else [], image.config.env, spec.env, env),
        workdir=workdir or spec.workdir or image.config.workdir or "/",
        user=next(u for u in (user, spec.user, image.config.user, "") if u is not None) or None,
        security=security_plan(spec), image=image.name)


def init_files(hostname) -> dict:
    """The container's /etc/hostname, /etc/hosts and /etc/resolv.conf (bind-mounted over the
    init layer's empty placeholders, as Docker does)."""
    hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"127.0.1.1\t{hostname}\n")
    return {"hostname": hostname + "\n", "hosts": hosts, "resolv.conf": host_resolv_conf()}


def merge_env(*layers) -> list:
    """Later KEY=VALUE entries win; order of first appearance kept."""
    merged = {}
    for layer in layers:
        for item in layer:
            key, _, value = item.partition("=")
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def host_resolv_conf() -> str:
    try:
        with open("/etc/resolv.conf") as handle:
            lines = [line for line in handle if not line.startswith("nameserver 127.")]
    except FileNotFoundError:
        lines = []
    return "".join(lines) or "# no name servers (labkit --net none)\n"
