"""Linux capabilities: names, the caller's set, and the bounding set a container keeps."""

from labkit.linux import syscalls

NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)

# The set Docker and Podman give a container by default: enough to act as root over
# its own files, not enough to load modules, change the clock or remount the host.
CONTAINER_DEFAULT = frozenset({
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap",
})


def decode(mask: int) -> set:
    return {name for bit, name in enumerate(NAMES) if mask & (1 << bit)}


def of_process(pid="self") -> dict:
    """{'CapEff': {...}, 'CapPrm': {...}, 'CapBnd': {...}, ...} from /proc/<pid>/status."""
    sets = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Cap"):
                key, value = line.split(":")
                sets[key] = decode(int(value, 16))
    return sets


def has(name: str, pid="self") -> bool:
    return name in of_process(pid)["CapEff"]


def mask(names) -> int:
    return sum(1 << NAMES.index(name) for name in set(names))


def keep_only_own(keep) -> None:
    """This process's own effective and permitted sets become `keep` (its inheritable set
    empty): for a process that stays in a container without an exec, which would
    otherwise keep every capability it had (the bounding set only limits what an exec
    gives)."""
    kept = mask(set(keep) & of_process()["CapPrm"])   # capset may only lower a set
    syscalls.capset(kept, kept, 0)


def drop_bounding_set(keep=CONTAINER_DEFAULT) -> None:
    """Drop every capability not in `keep` from the bounding set (before exec)."""
    for bit, name in enumerate(NAMES):
        if name in keep:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, bit)
        except OSError as error:
            if error.errno != 22:  # EINVAL: this kernel does not know that capability
                raise
