"""The escape suite, seccomp part: what a root process in a default container tried
before labkit had Docker's profile, one test each, on the real kernel.

Each attempt runs inside a container as a small Python probe (this interpreter,
bind-mounted read-only, making the raw syscalls through ctypes). Each test asserts the
refusal by default AND that the same attempt gets through with `--privileged` or
`--security-opt seccomp=unconfined`, so no test passes by being unable to fail.

Attempts are non-destructive: keys go into a fresh session keyring the probe makes
(gone with it), the clock is "set" only to an invalid value, mounts happen in the
container's own mount namespace, perf and bpf objects are closed at once.
"""

import errno

import pytest

from labkit.linux import seccomp

pytestmark = [pytest.mark.root, pytest.mark.skipif(seccomp.kernel_support() is not None,
                                                    reason=f"no seccomp here: {seccomp.kernel_support()}")]

PROBE = r'''
import ctypes, errno, os, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": {"keyctl": 250, "add_key": 248, "perf_event_open": 298, "bpf": 321, "clock_settime": 227},
      "aarch64": {"keyctl": 219, "add_key": 217, "perf_event_open": 241, "bpf": 280, "clock_settime": 112}}[os.uname().machine]


def call(result):
    if result == -1:
        raise OSError(ctypes.get_errno(), "")
    return result


def syscall(name, *args):
    return call(libc.syscall(ctypes.c_long(NR[name]), *args))


def keyring_add():
    KEYCTL_JOIN_SESSION_KEYRING, KEY_SPEC_SESSION_KEYRING = 1, -3
    syscall("keyctl", KEYCTL_JOIN_SESSION_KEYRING, None)   # a fresh, anonymous session keyring
    syscall("add_key", b"user", b"labkit-escape-test", b"x", ctypes.c_size_t(1), KEY_SPEC_SESSION_KEYRING)


def keyring_read_root():
    KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING = 0, -4
    syscall("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)  # 0: do not create it


def user_namespace():
    call(libc.unshare(0x10000000))


def perf_event():
    attr = bytearray(128)
    struct.pack_into("<IIQ", attr, 0, 1, 128, 0)      # PERF_TYPE_SOFTWARE, size, SW_CPU_CLOCK
    struct.pack_into("<Q", attr, 40, 1)               # disabled
    buffer = ctypes.create_string_buffer(bytes(attr), 128)
    os.close(syscall("perf_event_open", buffer, 0, -1, -1, ctypes.c_ulong(8)))


def bpf_map():
    attr = ctypes.create_string_buffer(struct.pack("<IIII", 2, 4, 4, 1).ljust(72, b"\0"), 72)  # a 1-entry array
    os.close(syscall("bpf", 0, attr, 72))


def mount_tmpfs():
    os.makedirs("/mnt/probe", exist_ok=True)
    call(libc.mount(b"none", b"/mnt/probe", b"tmpfs", 0, None))


def clock_settime():
    invalid = struct.pack("<qq", 0, 2_000_000_000)    # tv_nsec out of range: never applied
    syscall("clock_settime", 0, ctypes.create_string_buffer(invalid, 16))


try:
    globals()[sys.argv[1]]()
    print("ok")
except OSError as error:
    print(errno.errorcode.get(error.errno, error.errno))
'''


def attempt(name, **options):
    """Run probe function `name` in a fresh container: 'ok' or the errno's name."""
    from labkit.runtime import run

    result = run(["python3", "-c", PROBE, name], python=True, **options)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


UNCONFINED = {"security_opt": ["seccomp=unconfined"]}
PRIVILEGED = {"privileged": True}


def test_adding_a_key_to_a_keyring_is_refused(labkit_home):
    assert attempt("keyring_add") == "EPERM"
    assert attempt("keyring_add", **UNCONFINED) == "ok"


def test_reading_host_roots_keyring_is_refused(labkit_home):
    # Without a user namespace, root in the container is root's keyring owner on the host.
    assert attempt("keyring_read_root") == "EPERM"
    assert attempt("keyring_read_root", **UNCONFINED) in ("ok", "ENOKEY")


def test_a_nested_user_namespace_is_refused(labkit_home):
    assert attempt("user_namespace") == "EPERM"
    assert attempt("user_namespace", **UNCONFINED) == "ok"


def test_perf_event_open_is_refused(labkit_home):
    assert attempt("perf_event") == "EPERM"
    assert attempt("perf_event", **PRIVILEGED) == "ok"


def test_bpf_is_refused(labkit_home):
    assert attempt("bpf_map") == "EPERM"
    assert attempt("bpf_map", **PRIVILEGED) == "ok"


def test_mount_without_cap_sys_admin_is_refused_by_seccomp_and_by_the_capability(labkit_home):
    assert attempt("mount_tmpfs") == "EPERM"
    assert attempt("mount_tmpfs", **UNCONFINED) == "EPERM"   # the capability layer still holds
    assert attempt("mount_tmpfs", **PRIVILEGED) == "ok"      # in the container's own mount namespace


def test_clock_settime_is_refused_before_the_kernel_sees_it(labkit_home):
    assert attempt("clock_settime") == "EPERM"
    # Privileged, the call reaches the kernel, which rejects the invalid time: no clock changed.
    assert attempt("clock_settime", **PRIVILEGED) == "EINVAL"


def test_an_exec_runs_under_the_containers_profile(labkit_home):
    from labkit.runtime import Container
    from labkit.runtime.python_mounts import interpreter

    for options, expected in (({}, "EPERM"), ({"security_opt": ["seccomp=unconfined"]}, "ok")):
        container = Container(command=["sleep", "60"], python=True, **options).start(detach=True)
        try:
            answer = container.exec([interpreter(), "-c", PROBE, "keyring_add"]).stdout.strip()
        finally:
            container.remove()
        assert answer == expected


def test_a_profile_file_in_dockers_format_is_what_the_container_gets(labkit_home, tmp_path):
    import json

    profile = tmp_path / "no-unshare.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}))
    assert attempt("user_namespace", security_opt=[f"seccomp={profile}"]) == "EACCES"
    assert attempt("keyring_add", security_opt=[f"seccomp={profile}"]) == "ok"


def test_no_new_privileges_is_set_in_the_container(labkit_home):
    from labkit.runtime import run

    plain = run("grep NoNewPrivs /proc/self/status").check().stdout.split()
    set_ = run("grep NoNewPrivs /proc/self/status", security_opt=["no-new-privileges"]).check().stdout.split()
    assert (plain, set_) == (["NoNewPrivs:", "0"], ["NoNewPrivs:", "1"])


def test_cap_drop_removes_a_capability_from_the_bounding_set(labkit_home):
    from labkit.runtime import run

    refused = run("chown 1 /tmp", cap_drop=["CHOWN"])
    assert refused.exit_code != 0 and "Operation not permitted" in refused.stderr
    run("chown 1 /tmp").check()
