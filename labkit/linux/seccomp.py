"""seccomp: which system calls a container may make, as Docker decides it.

A profile is Docker's JSON (`defaultAction`, `architectures` or `archMap`, `syscalls[]`
with `names`, `action`, `args`, `errnoRet`, `includes`/`excludes` on `caps`, `arches`
and `minKernel`), so `--security-opt seccomp=PROFILE.json` takes the profiles people
already have. libseccomp (libseccomp.so.2, on every Debian machine) turns it into the
kernel's BPF; nothing here assembles a filter by hand.

The work is split in two on purpose (DESIGN: a container starts from a warm helper):

    profile = Profile.load("my.json")              # parse and check, in the caller
    program = profile.compile(capabilities)         # libseccomp -> BPF bytes, once per
                                                    # profile, in the helper
    load_filter(program)                            # in the container, the last step
                                                    # before exec: one seccomp(2) call
"""

import ctypes
import errno
import json
import os
import struct
from dataclasses import dataclass, field

from labkit.errors import ConfigError
from labkit.linux.syscalls import libc

# --- libseccomp through ctypes ----------------------------------------------------------

_lib = None


def library():
    """libseccomp.so.2, opened on first use; a missing library is a HostError naming the package."""
    global _lib
    if _lib is None:
        from labkit.errors import HostError

        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            # find_library runs ldconfig (~10 ms): only when the usual soname is not found
            # (and ctypes.util, which imports tempfile and random, only then).
            from ctypes.util import find_library

            name = find_library("seccomp")
            if name is None:
                raise HostError("seccomp filters need libseccomp (apt-get install libseccomp2)") from None
            lib = ctypes.CDLL(name, use_errno=True)
        _declare(lib)
        _lib = lib
    return _lib


def _failed_with(what):
    """errcheck: libseccomp returns -errno; raise an OSError saying what was attempted."""
    def check(result, function, arguments):
        if result < 0:
            raise OSError(-result, f"{what(*arguments)}: {os.strerror(-result)}")
        return result
    return check


class _ArgumentComparison(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _declare(lib):
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_add.restype = ctypes.c_int
    lib.seccomp_arch_add.errcheck = _failed_with(lambda _ctx, arch: f"seccomp_arch_add(0x{arch:x})")
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgumentComparison)]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.errcheck = _failed_with(
        lambda _ctx, action, syscall, count, _args: f"seccomp_rule_add(syscall {syscall}, action 0x{action:x}, "
                                                    f"{count} argument condition(s))")
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.errcheck = _failed_with(lambda _ctx, fd: f"seccomp_export_bpf(fd {fd})")
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.errcheck = _failed_with(lambda _ctx, attr, value: f"seccomp_attr_set({attr}, {value})")
    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = ctypes.POINTER(_Version)


def libseccomp_version() -> str:
    version = library().seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


def syscall_number(name: str) -> int | None:
    """The native number of a syscall name (negative: a pseudo-number libseccomp maps on
    other architectures), or None when libseccomp does not know the name."""
    number = library().seccomp_syscall_resolve_name(name.encode())
    return None if number == -1 else number  # __NR_SCMP_ERROR


# --- actions, comparisons, architectures ----------------------------------------------

SCMP_FLTATR_CTL_OPTIMIZE = 8
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ACT_TRACE = 0x7FF00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000

ACTIONS = {
    "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS, "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
    "SCMP_ACT_ERRNO": SCMP_ACT_ERRNO, "SCMP_ACT_TRACE": SCMP_ACT_TRACE,
    "SCMP_ACT_LOG": SCMP_ACT_LOG, "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
}
COMPARISONS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
               "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# os.uname().machine -> (libseccomp's name for it, Docker's name in includes/excludes.arches)
MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64"), "i686": ("x86", "x86"),
            "i386": ("x86", "x86"), "armv7l": ("arm", "arm"), "ppc64le": ("ppc64le", "ppc64le"),
            "s390x": ("s390x", "s390x"), "riscv64": ("riscv64", "riscv64"), "loongarch64": ("loongarch64", "loong64")}


def native_arch() -> str:
    machine = os.uname().machine
    return MACHINES.get(machine, (machine, machine))[0]


def native_docker_arch() -> str:
    machine = os.uname().machine
    return MACHINES.get(machine, (machine, machine))[1]


def _action_value(name, errno_value, where):
    if name == "SCMP_ACT_NOTIFY":
        raise ConfigError(f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent, which labkit does not run")
    if name not in ACTIONS:
        raise ConfigError(f"{where}: unknown action {name!r}; the actions are {', '.join(sorted(ACTIONS))}")
    action = ACTIONS[name]
    if action in (SCMP_ACT_ERRNO, SCMP_ACT_TRACE):  # both carry a 16-bit value
        value = errno.EPERM if errno_value is None else errno_value
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ConfigError(f"{where}: errnoRet {errno_value!r} is not a number from 0 to 65535")
        return action | value
    return action


# --- the profile ----------------------------------------------------------------------

@dataclass
class Rule:
    """One entry of `syscalls[]`, its conditions kept until compile time (they depend on
    the container's capabilities)."""
    names: list
    action: str
    errno_ret: int | None = None
    args: list = field(default_factory=list)      # [{"index", "value", "valueTwo", "op"}]
    includes: dict = field(default_factory=dict)  # {"caps": [...], "arches": [...], "minKernel": "4.8"}
    excludes: dict = field(default_factory=dict)

    def applies(self, capabilities: set, arch: str, kernel: tuple) -> bool:
        """Docker's filter: every included cap present, no excluded cap present, and so on."""
        include, exclude = self.includes, self.excludes
        if exclude.get("arches") and arch in exclude["arches"]:
            return False
        if any(cap in capabilities for cap in exclude.get("caps") or ()):
            return False
        if exclude.get("minKernel") and kernel >= _kernel_version(exclude["minKernel"]):
            return False
        if include.get("arches") and arch not in include["arches"]:
            return False
        if not all(cap in capabilities for cap in include.get("caps") or ()):
            return False
        if include.get("minKernel") and kernel < _kernel_version(include["minKernel"]):
            return False
        return True


@dataclass
class Profile:
    default_action: str
    default_errno: int | None = None
    architectures: list = field(default_factory=list)   # libseccomp names: "x86_64", "x86", "x32"
    rules: list = field(default_factory=list)
    source: str = "labkit's default profile"

    @classmethod
    def load(cls, path) -> "Profile":
        """Read a Docker seccomp profile; a bad file is a ConfigError naming it and why."""
        path = os.fspath(path)
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError(f"seccomp profile {path}: {error.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"seccomp profile {path} is not valid JSON: {error}") from None
        return cls.from_json(data, source=path)

    @classmethod
    def from_json(cls, data, source="a seccomp profile") -> "Profile":
        where = f"seccomp profile {source}"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a JSON object")
        if "defaultAction" not in data:
            raise ConfigError(f"{where}: no defaultAction")
        _action_value(data["defaultAction"], data.get("defaultErrnoRet"), where)
        if data.get("architectures") and data.get("archMap"):
            raise ConfigError(f"{where}: both architectures and archMap are given; use one")
        profile = cls(data["defaultAction"], data.get("defaultErrnoRet"), _architectures(data, where), source=source)
        for position, entry in enumerate(data.get("syscalls") or ()):
            profile.rules.append(_rule(entry, f"{where}, syscalls[{position}]"))
        return profile

    def to_json(self) -> dict:
        """Back to Docker's format (what crosses the socket to the helper)."""
        return {"defaultAction": self.default_action, "defaultErrnoRet": self.default_errno,
                "architectures": [f"SCMP_ARCH_{a.upper()}" for a in self.architectures],
                "syscalls": [{"names": r.names, "action": r.action, "errnoRet": r.errno_ret, "args": r.args,
                              "includes": r.includes, "excludes": r.excludes} for r in self.rules]}

    def compile(self, capabilities, arch=None) -> bytes:
        """The BPF program (an array of struct sock_filter) for a container whose bounding
        set is `capabilities` (labkit's names: "sys_admin", …)."""
        caps = {f"CAP_{name.upper()}" for name in capabilities}
        arch = arch or native_docker_arch()
        kernel = _kernel_version(os.uname().release)
        lib = library()
        default = _action_value(self.default_action, self.default_errno, self.source)
        context = lib.seccomp_init(default)
        if not context:
            raise OSError(errno.ENOMEM, "seccomp_init failed")
        try:
            # A binary tree of syscall numbers instead of libseccomp's default linear
            # chain: the same decisions, but the kernel prepares it in ~0.5 ms instead of
            # ~1.6 ms at load (measured here) and each syscall walks log(n) jumps.
            try:
                lib.seccomp_attr_set(context, SCMP_FLTATR_CTL_OPTIMIZE, 2)
            except OSError:
                pass  # libseccomp older than 2.5: the linear chain, same decisions
            tokens = {lib.seccomp_arch_native()}
            for name in self.architectures:
                token = lib.seccomp_arch_resolve_name(name.encode())
                if token == 0:
                    continue  # an architecture this libseccomp does not know cannot run here
                tokens.add(token)
                try:
                    lib.seccomp_arch_add(context, token)
                except OSError as error:
                    if error.errno != errno.EEXIST:  # the native one is already in
                        raise
            applied = [rule for rule in self.rules if rule.applies(caps, arch, kernel)]
            for rule in applied:
                _add_rule(lib, context, rule, default)
            program = _export(lib, context)
        finally:
            lib.seccomp_release(context)
        if default & 0xFFFF0000 in (SCMP_ACT_ALLOW, SCMP_ACT_LOG, SCMP_ACT_TRACE):
            return program  # what the profile does not name is allowed: nothing is unknown
        names = {name for rule in applied for name in rule.names}
        return enosys_stub(_last_syscalls(lib, tokens, names)) + program


def _rule(entry, where) -> Rule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each entry must be a JSON object")
    if entry.get("name") and entry.get("names"):
        raise ConfigError(f"{where}: both name and names are given; use one")
    names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
    if not names or not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{where}: names must be a list of syscall names")
    action = entry.get("action")
    _action_value(action, entry.get("errnoRet"), where)
    for name in names:
        if syscall_number(name) is None and name not in NEWER_THAN_LIBSECCOMP:
            raise ConfigError(f"{where}: unknown syscall {name!r} (libseccomp {libseccomp_version()} "
                              "does not know it; is it misspelt?)")
    args = [_argument(arg, where) for arg in entry.get("args") or ()]
    conditions = {}
    for key in ("includes", "excludes"):
        value = entry.get(key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be an object with caps, arches or minKernel")
        conditions[key] = dict(value)
    return Rule(list(names), action, entry.get("errnoRet"), args, conditions["includes"], conditions["excludes"])


def _argument(arg, where) -> dict:
    if not isinstance(arg, dict) or arg.get("op") not in COMPARISONS:
        op = arg.get("op") if isinstance(arg, dict) else arg
        raise ConfigError(f"{where}: unknown comparison {op!r}; the comparisons are {', '.join(COMPARISONS)}")
    values = {key: arg.get(key, 0) for key in ("index", "value", "valueTwo")}
    if not all(isinstance(value, int) and value >= 0 for value in values.values()) or values["index"] > 5:
        raise ConfigError(f"{where}: argument {arg} needs index 0 to 5 and non-negative numbers")
    return {**values, "op": arg["op"]}


def _architectures(data, where) -> list:
    names = list(data.get("architectures") or ())
    for entry in data.get("archMap") or ():
        # Docker keeps the entry for the machine it runs on: that arch and its sub-arches.
        if _libseccomp_arch(entry.get("architecture", "")) == native_arch():
            names = [entry["architecture"]] + list(entry.get("subArchitectures") or ())
            break
    result = []
    for name in names:
        if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
            raise ConfigError(f"{where}: architecture {name!r} is not an SCMP_ARCH_* name")
        result.append(_libseccomp_arch(name))
    return result


def _libseccomp_arch(name: str) -> str:
    return name.removeprefix("SCMP_ARCH_").lower()


def _kernel_version(text) -> tuple:
    numbers = []
    for part in str(text).split("-")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers + [0] * (2 - len(numbers)))


def _add_rule(lib, context, rule, default):
    action = _action_value(rule.action, rule.errno_ret, "rule")
    if action == default:
        return  # libseccomp refuses a rule that says what the default already says
    comparisons = [(a["index"], COMPARISONS[a["op"]], a["value"], a["valueTwo"]) for a in rule.args]
    # Several conditions on the same argument mean "any of these" in Docker's profiles
    # (runc adds one rule each); on different arguments, "all of these" (one rule).
    indexes = [c[0] for c in comparisons]
    groups = [[c] for c in comparisons] if len(set(indexes)) < len(indexes) else [comparisons]
    for name in rule.names:
        number = syscall_number(name)
        if number is None:
            continue  # newer than this libseccomp: it stays at the default action
        for group in groups:
            array = (_ArgumentComparison * max(1, len(group)))(*[_ArgumentComparison(*c) for c in group])
            lib.seccomp_rule_add_array(context, action, number, len(group), array)


# What compile() makes; a cached program of another format is compiled anew (security/compiled.py).
PROGRAM_FORMAT = 2  # 2: with the ENOSYS stub

# --- unknown syscalls: ENOSYS, as runc answers them ------------------------------------
# A program built against a newer kernel tries a new syscall and, on ENOSYS, falls back to
# an older one (glibc does so for clone3, statx, ...). EPERM would tell it the call exists
# and was refused. runc (libcontainer/seccomp/patchbpf) therefore puts a stub before the
# filter: a syscall numbered above the highest one the profile names, on that architecture,
# is "newer than the profile" and gets ENOSYS; every other one goes through the filter,
# so a call the profile lists and denies still gets its EPERM.

_X32_BIT = 0x40000000  # x32 calls carry it on x86_64: the filter decides those, as before
_AUDIT_ARCH_X86_64 = 0xC000003E
_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGT, _BPF_JSET, _BPF_JA, _BPF_RET = 0x20, 0x15, 0x25, 0x45, 0x05, 0x06
_SECCOMP_DATA_NR, _SECCOMP_DATA_ARCH = 0, 4


def _last_syscalls(lib, tokens, names) -> dict:
    """{audit arch: the highest syscall number `names` hold on it}. libseccomp's arch
    tokens are the kernel's AUDIT_ARCH_* values, except x32's pseudo one (not a real
    arch: its calls come as x86_64's with the x32 bit), which is left out."""
    last = {}
    for token in tokens:
        if token & 0x80000000 == 0 and token & 0xFFFF == 0x3E:  # x32: EM_X86_64, 32-bit
            continue
        numbers = [lib.seccomp_syscall_resolve_name_arch(token, name.encode()) for name in names]
        known = [number for number in numbers if number >= 0]  # negative: not on this arch
        if known:
            last[token] = max(known)
    return last


def enosys_stub(last_syscalls: dict) -> bytes:
    """BPF that returns ENOSYS for a syscall numbered above last_syscalls[arch] and
    otherwise falls through to what follows it (the profile's own filter)."""
    ENOSYS, FILTER = "enosys", "filter"
    code = [(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH)]
    for position, audit_arch in enumerate(last_syscalls):
        code.append((_BPF_JEQ, f"arch{position}", 0, audit_arch))
    code.append((_BPF_JA, 0, 0, FILTER))  # an arch the profile does not know: the filter kills it
    labels = {}
    for position, (audit_arch, last) in enumerate(last_syscalls.items()):
        labels[f"arch{position}"] = len(code)
        code.append((_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR))
        if audit_arch == _AUDIT_ARCH_X86_64:
            code.append((_BPF_JSET, FILTER, 0, _X32_BIT))
        code.append((_BPF_JGT, ENOSYS, FILTER, last))
    labels[ENOSYS] = len(code)
    code.append((_BPF_RET, 0, 0, SCMP_ACT_ERRNO | errno.ENOSYS))
    labels[FILTER] = len(code)

    def offset(target, at):
        return labels[target] - at - 1 if isinstance(target, str) else target

    program = bytearray()
    for at, (op, jt, jf, k) in enumerate(code):
        if op == _BPF_JA:
            program += struct.pack("=HBBI", op, 0, 0, offset(k, at))
        else:
            program += struct.pack("=HBBI", op, offset(jt, at), offset(jf, at), k)
    return bytes(program)


def _export(lib, context) -> bytes:
    # libseccomp 2.5 exports to a file descriptor only (seccomp_export_bpf_mem is 2.6):
    # a memfd keeps the program in memory.
    fd = os.memfd_create("labkit-seccomp", os.MFD_CLOEXEC)
    try:
        lib.seccomp_export_bpf(context, fd)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# Syscalls Docker's current profile names that libseccomp 2.5.4 (Debian 12) predates:
# a profile naming them is not refused; they stay at the profile's default action.
NEWER_THAN_LIBSECCOMP = frozenset({
    "cachestat", "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait", "futex_requeue",
    "statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "mseal",
    "setxattrat", "getxattrat", "listxattrat", "removexattrat", "open_tree_attr", "uretprobe", "riscv_hwprobe",
})


# --- loading, in the container -------------------------------------------------------

SECCOMP_SET_MODE_FILTER = 1
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "i686": 354, "i386": 354, "armv7l": 383,
                "ppc64le": 358, "s390x": 348}.get(os.uname().machine)


def load_filter(program: bytes) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, program): from now on the kernel runs the
    program on every syscall of this process and its children. Needs no_new_privs or
    CAP_SYS_ADMIN in the caller's user namespace."""
    buffer = ctypes.create_string_buffer(program, len(program))
    count = len(program) // _SOCK_FILTER_SIZE
    fprog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    if _SYS_SECCOMP is not None:
        result = libc.syscall(ctypes.c_long(_SYS_SECCOMP), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0),
                               ctypes.byref(fprog))
    else:  # a machine whose seccomp(2) number we do not carry: prctl does the same
        result = libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER, {count} instructions): {os.strerror(err)}")


def kernel_support() -> str | None:
    """None when this kernel filters syscalls with seccomp BPF; otherwise why not."""
    try:
        with open("/proc/self/status") as status:
            if not any(line.startswith("Seccomp:") for line in status):
                return "the kernel was built without CONFIG_SECCOMP"
    except OSError as error:
        return f"cannot read /proc/self/status: {error.strerror}"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as handle:
            actions = handle.read().split()
    except FileNotFoundError:
        return None  # older than 4.14: filters work, the list is not published
    if "errno" not in actions or "allow" not in actions:
        return f"the kernel offers only the actions {' '.join(actions)}"
    return None
