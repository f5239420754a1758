"""The escapes experiment's probe: a program run as root inside a container (or a VM), not
a module labkit imports. `escapes.py` reads this file and runs its text with the probe's
Python (`python -c PROGRAM ARGUMENTS`): the probe image holds no labkit, only busybox and
the interpreter's files bound read-only, so this is the standard library alone.

Each attempt (a function below, named as in escapes.ATTEMPTS) runs in a forked child, so
that one (a keyring joined, a namespace entered) cannot change the next. The argument is
JSON: {"attempts": [names], "host_pid": N, "forks": N, "mark": TEXT}; the output is one
line, TEXT {attempt: outcome}, an outcome being "ok", an errno name or a few words.
"""

import ctypes
import errno
import json
import os
import stat
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": {"keyctl": 250, "add_key": 248}, "aarch64": {"keyctl": 219, "add_key": 217}}[os.uname().machine]
MS_REMOUNT, MS_BIND = 32, 4096
SETTING = "/proc/sys/kernel/printk_ratelimit_burst"
NODE = "/tmp/labkit-escape-node"
MOUNT_POINT = "/mnt/labkit-escape"


def checked(result):
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def keyring(_):
    checked(libc.syscall(ctypes.c_long(NR["keyctl"]), 1, None))    # KEYCTL_JOIN_SESSION_KEYRING: a fresh one
    checked(libc.syscall(ctypes.c_long(NR["add_key"]), b"user", b"labkit-escape", b"x", ctypes.c_size_t(1), -3))


def user_namespace(_):
    checked(libc.unshare(0x10000000))                              # CLONE_NEWUSER


def mount(_):
    os.makedirs(MOUNT_POINT, exist_ok=True)         # the probe image has it: no mkdir as --userns root
    checked(libc.mount(b"none", MOUNT_POINT.encode(), b"tmpfs", 0, None))
    checked(libc.umount2(MOUNT_POINT.encode(), 0))


def write_back():
    with open(SETTING) as setting:
        value = setting.read()
    with open(SETTING, "w") as setting:
        setting.write(value)


def kernel_setting(_):
    write_back()


def remount_kernel_settings(_):
    try:
        write_back()
    except OSError as error:
        if error.errno != errno.EROFS:
            raise
        checked(libc.mount(None, b"/proc/sys", None, MS_REMOUNT | MS_BIND, None))   # read-write again
        write_back()


def masked_file(_):
    try:
        with open("/proc/timer_list", "rb") as timers:
            return "ok" if timers.read(64) else "masked"
    except FileNotFoundError:
        return "absent"


def unregistered_block_major():
    with open("/proc/devices") as table:
        used = {int(line.split()[0]) for line in table.read().split("Block devices:")[1].splitlines() if line.strip()}
    return next(major for major in range(240, 200, -1) if major not in used)


def node(kind, major, minor, flags):
    if os.path.lexists(NODE):
        os.unlink(NODE)
    try:
        os.mknod(NODE, 0o600 | kind, os.makedev(major, minor))
    except OSError as error:
        return "mknod: " + errno.errorcode.get(error.errno, str(error.errno))
    try:
        os.close(os.open(NODE, flags))
    finally:
        os.unlink(NODE)


def block_device(_):
    return node(stat.S_IFBLK, unregistered_block_major(), 0, os.O_RDONLY)


def kmsg(_):
    return node(stat.S_IFCHR, 1, 11, os.O_WRONLY)                 # /dev/kmsg's numbers; nothing written


def host_process(args):
    os.kill(args["host_pid"], 0)


def fork_past_pids_limit(args):
    children = []
    try:
        for _ in range(args["forks"]):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, 9)
        for pid in children:
            os.waitpid(pid, 0)


def in_a_child(attempt, args):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            outcome = attempt(args) or "ok"
        except OSError as error:
            outcome = errno.errorcode.get(error.errno, str(error.errno))
        except Exception as error:
            outcome = "error: %s: %s" % (type(error).__name__, error)
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    answer = b""
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        answer += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return answer.decode() or "no answer"


def main(argument):
    args = json.loads(argument)
    outcomes = {name: in_a_child(globals()[name], args) for name in args["attempts"]}
    print(args["mark"] + " " + json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
