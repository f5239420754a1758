"""cgroup v2 device control: the rules as a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 dropped the `devices.allow` files; instead the kernel runs a BPF program,
attached to the cgroup, on every open(2)/mknod(2) of a device node by a process inside.
It sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
(access_type = access << 16 | type) and returns 1 (allow) or 0 (EPERM).

The program is a handful of instructions per rule, assembled here (as runc and crun
do): load the context, then for each rule "type matches, access is a subset, major and
minor match → return 1", and "return 0" at the end.
"""

import ctypes
import os
import struct

from labkit.cgroups.devices import TYPE_CODES, parse_rules
from labkit.linux.syscalls import libc as _libc

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "i686": 357, "i386": 357, "armv7l": 386,
           "ppc64le": 361, "s390x": 351}.get(os.uname().machine)

# eBPF opcodes used below (linux/bpf.h, linux/bpf_common.h)
LDX_W = 0x61        # BPF_LDX | BPF_MEM | BPF_W:   dst = *(u32 *)(src + off)
MOV32_REG = 0xBC    # BPF_ALU | BPF_MOV | BPF_X:   dst = (u32) src
AND32_IMM = 0x54    # BPF_ALU | BPF_AND | BPF_K:   dst &= imm
RSH32_IMM = 0x74    # BPF_ALU | BPF_RSH | BPF_K:   dst >>= imm
MOV64_IMM = 0xB7    # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
JNE_IMM = 0x55      # BPF_JMP | BPF_JNE | BPF_K:   if dst != imm: pc += off
EXIT = 0x95         # BPF_JMP | BPF_EXIT:          return r0

R0, R1, R2, R3, R4, R5 = range(6)


def _insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def assemble(rules) -> bytes:
    """The program for these allow rules (parsed or 'c 1:3 rwm' lines)."""
    program = [
        _insn(LDX_W, R2, R1, 0),          # r2 = access_type
        _insn(MOV32_REG, R3, R2),
        _insn(AND32_IMM, R3, imm=0xFFFF),  # r3 = device type (block 1, char 2)
        _insn(RSH32_IMM, R2, imm=16),     # r2 = access wanted (mknod 1, read 2, write 4)
        _insn(LDX_W, R4, R1, 4),          # r4 = major
        _insn(LDX_W, R5, R1, 8),          # r5 = minor
    ]
    for rule in parse_rules(rules):
        block = _rule_block(rule)
        program += block
        if len(block) == 2:
            return b"".join(program)  # the rule allows everything: nothing after it is reachable
    program.append(_insn(MOV64_IMM, R0, imm=0))
    program.append(_insn(EXIT))
    return b"".join(program)


def _rule_block(rule) -> list:
    """Checks that each jump to the next rule's block when they fail, then "return 1"."""
    checks = []   # (register, value it must equal)
    if rule.type != "a":
        checks.append((R3, TYPE_CODES[rule.type]))
    if rule.major is not None:
        checks.append((R4, rule.major))
    if rule.minor is not None:
        checks.append((R5, rule.minor))
    refused_access = 7 & ~rule.access_mask
    length = len(checks) + (3 if refused_access else 0) + 2
    block = []
    for register, value in checks:
        block.append(_insn(JNE_IMM, register, off=length - len(block) - 1, imm=value))
    if refused_access:
        # r0 = access wanted & access this rule does not grant; anything left: next rule
        block.append(_insn(MOV32_REG, R0, R2))
        block.append(_insn(AND32_IMM, R0, imm=refused_access))
        block.append(_insn(JNE_IMM, R0, off=length - len(block) - 1, imm=0))
    block.append(_insn(MOV64_IMM, R0, imm=1))
    block.append(_insn(EXIT))
    return block


def _bpf(command, attr, what: str) -> int:
    """bpf(2) with `attr`: bytes, or a ctypes buffer for a command the kernel answers in it."""
    if SYS_BPF is None:
        raise OSError(38, f"{what}: labkit does not know bpf(2)'s number on {os.uname().machine}")
    buffer = ctypes.create_string_buffer(attr, len(attr)) if isinstance(attr, bytes) else attr
    result = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(command), buffer, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def load(rules) -> int:
    """BPF_PROG_LOAD: a file descriptor of the verified program (close it when attached)."""
    code = assemble(rules)
    try:
        return _load(code, log_level=0)
    except OSError as error:
        # Again with the verifier's log, to say why (the log costs time: only on failure).
        try:
            os.close(_load(code, log_level=1))
        except OSError as verbose:
            raise OSError(error.errno, str(verbose)) from None
        raise


def _load(code, log_level) -> int:
    instructions = ctypes.create_string_buffer(code, len(code))
    license_text = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(1 << 16 if log_level else 1)
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                       ctypes.addressof(instructions), ctypes.addressof(license_text),
                       log_level, len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0,
                       0, 0, b"labkit_devices")
    try:
        return _bpf(BPF_PROG_LOAD, attr.ljust(72, b"\0"), "load the device-control BPF program")
    except OSError as error:
        detail = log.value.decode(errors="replace").strip().splitlines()[-3:] if log_level else []
        if detail:
            raise OSError(error.errno, f"{error.strerror} (verifier: {' / '.join(detail)})") from None
        raise


def attach(cgroup_dir: str, rules) -> None:
    """Load the program for `rules` and attach it to the cgroup at `cgroup_dir`; it lives
    as long as the cgroup does."""
    program = load(rules)
    try:
        directory = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = struct.pack("<IIII", directory, program, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr.ljust(20, b"\0"), f"attach the device-control program to {cgroup_dir}")
        finally:
            os.close(directory)
    finally:
        os.close(program)


def attached_programs(cgroup_dir: str) -> int:
    """How many device programs are attached to the cgroup at `cgroup_dir` itself
    (BPF_PROG_QUERY; a parent's program, which also applies, is not counted)."""
    directory = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # union bpf_attr's query: target_fd, attach_type, query_flags, attach_flags,
        # prog_ids (a pointer; none: only count), prog_cnt (written back at offset 24).
        query = struct.pack("<IIII", directory, BPF_CGROUP_DEVICE, 0, 0).ljust(40, b"\0")
        attr = ctypes.create_string_buffer(query, len(query))
        _bpf(BPF_PROG_QUERY, attr, f"query the device programs attached to {cgroup_dir}")
        return struct.unpack_from("<I", attr.raw, 24)[0]
    finally:
        os.close(directory)


def supported() -> str | None:
    """None when this kernel loads cgroup device programs; otherwise why not."""
    try:
        os.close(load(["c 1:3 rwm"]))
    except OSError as error:
        return f"BPF_PROG_TYPE_CGROUP_DEVICE programs cannot be loaded: {error.strerror}"
    return None
