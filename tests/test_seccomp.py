"""labkit.linux.seccomp: Docker-format profiles read, compiled by libseccomp, and loaded
into a real process (a forked child: a filter cannot be removed once loaded)."""

import ctypes
import errno
import json
import os
import struct

import pytest

from labkit.errors import ConfigError, HostError
from labkit.linux import seccomp
from labkit.linux.capabilities import CONTAINER_DEFAULT
from labkit.security.default_seccomp import default_profile


def why_seccomp_cannot_run() -> str | None:
    """A skip's reason: no libseccomp on this host (labkit.linux.seccomp says so with a
    HostError once dlopen and ldconfig have both not found it), or a kernel without seccomp
    filters. Any other error while loading the library is a bug: it fails the module."""
    try:
        seccomp.library()
    except HostError as missing:
        return f"needs libseccomp.so.2: {missing}"
    return seccomp.kernel_support()


WHY_NOT = why_seccomp_cannot_run()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))

_libc = ctypes.CDLL(None, use_errno=True)


def errno_in_child_after_filter(program, call):
    """Fork, load `program`, run `call()` (a raw syscall returning -1/errno), report errno."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            seccomp.load_filter(program)
            result = call()
            os.write(write_end, str(0 if result != -1 else ctypes.get_errno()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    return int(answer)


def keyctl_get_session_keyring():
    KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
    return _libc.syscall(ctypes.c_long(seccomp.syscall_number("keyctl")), KEYCTL_GET_KEYRING_ID,
                         KEY_SPEC_SESSION_KEYRING, 0)


def unshare_user():
    return _libc.unshare(0x10000000)


def write_profile(tmp_path, data, name="profile.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- reading profiles ------------------------------------------------------------------

def test_the_default_profile_is_an_allow_list_that_fails_with_eperm():
    profile = seccomp.Profile.from_json(default_profile())
    assert profile.default_action == "SCMP_ACT_ERRNO" and profile.default_errno == errno.EPERM
    allowed = {name for rule in profile.rules if rule.action == "SCMP_ACT_ALLOW" and not rule.includes
               and not rule.excludes and not rule.args for name in rule.names}
    for refused in ("add_key", "keyctl", "request_key", "unshare", "mount", "bpf", "perf_event_open",
                    "init_module", "clock_settime", "kexec_load", "io_uring_setup"):
        assert refused not in allowed
    assert {"read", "write", "execve", "clone3"} - allowed == {"clone3"}


def test_machine_architectures_come_from_the_arch_map():
    profile = seccomp.Profile.from_json(default_profile())
    if os.uname().machine == "x86_64":
        assert profile.architectures == ["x86_64", "x86", "x32"]
    else:
        assert profile.architectures  # the machine's own entry of the map


def test_invalid_json_is_refused_naming_the_file(tmp_path):
    path = write_profile(tmp_path, '{"defaultAction": "SCMP_ACT_ERRNO",')
    with pytest.raises(ConfigError, match=f"seccomp profile {path} is not valid JSON"):
        seccomp.Profile.load(path)


def test_an_unknown_syscall_name_is_refused_naming_the_file_and_the_name(tmp_path):
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO",
                                    "syscalls": [{"names": ["read", "raed"], "action": "SCMP_ACT_ALLOW"}]})
    with pytest.raises(ConfigError, match=rf"seccomp profile {path}, syscalls\[0\]: unknown syscall 'raed'"):
        seccomp.Profile.load(path)


def test_an_unknown_action_and_a_missing_file_are_refused(tmp_path):
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_MAYBE"})
    with pytest.raises(ConfigError, match="unknown action 'SCMP_ACT_MAYBE'"):
        seccomp.Profile.load(path)
    with pytest.raises(ConfigError, match="No such file"):
        seccomp.Profile.load(tmp_path / "absent.json")


@pytest.mark.parametrize("entry, message", [
    ({"names": "read", "action": "SCMP_ACT_ALLOW"}, "names must be a list"),
    ({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}, "errnoRet 'EPERM' is not a number"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]},
     "unknown comparison 'SCMP_CMP_ABOUT'"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]},
     "argument .* needs index 0 to 5"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": ["CAP_SYS_ADMIN"]}, "includes must be an object"),
    ({"names": ["read"], "action": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY needs a seccomp agent"),
])
def test_a_malformed_rule_is_refused_naming_where_it_is(tmp_path, entry, message):
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["write"],
                                    "action": "SCMP_ACT_ALLOW"}, entry]})
    with pytest.raises(ConfigError, match=rf"seccomp profile {path}, syscalls\[1\]: {message}"):
        seccomp.Profile.load(path)


def test_syscalls_newer_than_libseccomp_are_accepted_and_stay_at_the_default(tmp_path):
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO",
                                    "syscalls": [{"names": ["read", "mseal"], "action": "SCMP_ACT_ALLOW"}]})
    assert seccomp.Profile.load(path).compile(CONTAINER_DEFAULT)


def test_capability_conditions_decide_which_rules_apply():
    profile = seccomp.Profile.from_json(default_profile())
    plain = profile.compile(CONTAINER_DEFAULT)
    admin = profile.compile(CONTAINER_DEFAULT | {"sys_admin"})
    assert plain != admin


# --- loaded into a process: the kernel refuses ------------------------------------------

@pytest.mark.root
def test_the_default_profile_refuses_keyctl_and_a_user_namespace_in_a_real_process():
    program = seccomp.Profile.from_json(default_profile()).compile(CONTAINER_DEFAULT)
    assert errno_in_child_after_filter(program, keyctl_get_session_keyring) == errno.EPERM
    assert errno_in_child_after_filter(program, unshare_user) == errno.EPERM
    assert errno_in_child_after_filter(program, os.getpid) == 0


@pytest.mark.root
def test_without_a_filter_the_same_calls_succeed():
    allow_all = seccomp.Profile.from_json({"defaultAction": "SCMP_ACT_ALLOW"}).compile(set())
    assert errno_in_child_after_filter(allow_all, keyctl_get_session_keyring) == 0


@pytest.mark.root
def test_errno_ret_of_a_rule_is_what_the_caller_sees(tmp_path):
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_ALLOW",
                                    "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]})
    program = seccomp.Profile.load(path).compile(set())
    assert errno_in_child_after_filter(program, keyctl_get_session_keyring) == errno.ENOSYS


UNKNOWN_TO_EVERY_KERNEL = 1000  # no architecture has a syscall numbered this high yet
RETURN_ENOSYS = struct.pack("=HBBI", 0x06, 0, 0, seccomp.SCMP_ACT_ERRNO | errno.ENOSYS)  # BPF_RET|BPF_K


def unknown_syscall():
    return _libc.syscall(ctypes.c_long(UNKNOWN_TO_EVERY_KERNEL))


def without_the_stub(program):
    """libseccomp's program alone: what follows the stub's ENOSYS return, its last instruction."""
    end = program.index(RETURN_ENOSYS)
    assert end % 8 == 0
    return program[end + 8:]


@pytest.mark.root
def test_a_syscall_newer_than_the_profile_gets_enosys_as_runc_gives_it():
    program = seccomp.Profile.from_json(default_profile()).compile(CONTAINER_DEFAULT)
    assert errno_in_child_after_filter(program, unknown_syscall) == errno.ENOSYS
    # Listed and denied stays EPERM (Docker's choice); listed and allowed is allowed.
    assert errno_in_child_after_filter(program, keyctl_get_session_keyring) == errno.EPERM
    assert errno_in_child_after_filter(program, unshare_user) == errno.EPERM
    assert errno_in_child_after_filter(program, os.getpid) == 0
    # Without the stub, libseccomp's filter gives the profile's default to the unknown call.
    assert errno_in_child_after_filter(without_the_stub(program), unknown_syscall) == errno.EPERM
    assert errno_in_child_after_filter(without_the_stub(program), os.getpid) == 0


@pytest.mark.root
def test_a_syscall_the_profile_skips_below_its_highest_one_stays_eperm(tmp_path):
    # "Unknown" is "newer than the profile": a hole below its highest syscall is the profile's refusal.
    path = write_profile(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO",
                                    "syscalls": [{"names": ["getpid", "exit", "exit_group", "write", "pidfd_open"],
                                                  "action": "SCMP_ACT_ALLOW"}]})
    program = seccomp.Profile.load(path).compile(set())
    assert seccomp.syscall_number("unshare") < seccomp.syscall_number("pidfd_open")
    assert errno_in_child_after_filter(program, unshare_user) == errno.EPERM
    assert errno_in_child_after_filter(program, unknown_syscall) == errno.ENOSYS


def test_the_stub_bounds_each_architecture_by_its_own_highest_syscall():
    program = seccomp.enosys_stub({0xC000003E: 456, 0x40000003: 462})
    bounds = [struct.unpack("=HBBI", program[at:at + 8])[3] for at in range(0, len(program), 8)
              if struct.unpack("=HBBI", program[at:at + 8])[0] == 0x25]  # BPF_JGT
    assert bounds == [456, 462] and program.endswith(RETURN_ENOSYS)


def test_a_profile_that_allows_by_default_gets_no_stub():
    allow = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}
    deny = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ALLOW"}]}
    assert RETURN_ENOSYS not in seccomp.Profile.from_json(allow).compile(set())
    assert RETURN_ENOSYS in seccomp.Profile.from_json(deny).compile(set())


def test_library_and_kernel_are_reported():
    assert seccomp.libseccomp_version().count(".") == 2
    assert seccomp.kernel_support() is None


def test_doctor_reports_seccomp_and_device_control():
    from labkit.doctor import check_device_control, check_seccomp

    seccomp_row, devices_row = check_seccomp(), check_device_control()
    assert seccomp_row.ok and seccomp.libseccomp_version() in seccomp_row.detail
    assert devices_row.what == "device control"
    assert ("devices controller" in devices_row.detail) or ("BPF_PROG_TYPE_CGROUP_DEVICE" in devices_row.detail)


# --- the options, as the CLI and the magics pass them -----------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"security_opt": ["seccomp"]}, "--security-opt 'seccomp' is not understood"),
    ({"security_opt": ["apparmor=docker-default"]}, "--security-opt 'apparmor=docker-default': labkit has no apparmor"),
    ({"security_opt": ["no-new-privileges=yes"]}, "no-new-privileges takes true or false, not 'yes'"),
    ({"security_opt": ["seccomp=/no/such/profile.json"]}, "--security-opt seccomp=/no/such/profile.json: .*No such file"),
    ({"cap_drop": ["FLY"]}, "--cap-drop 'FLY': unknown capability"),
    ({"cap_add": ["FLY"]}, "--cap-add 'FLY': unknown capability"),
])
def test_bad_security_options_are_refused_naming_the_option_and_value(fields, message):
    from labkit.runtime import ContainerSpec

    with pytest.raises(ConfigError, match=message):
        ContainerSpec(**fields).validated()


def test_security_options_in_dockers_spellings():
    from labkit.runtime import ContainerSpec

    spec = ContainerSpec(security_opt=["seccomp:unconfined", "no-new-privileges:true"]).validated()
    assert (spec.seccomp, spec.no_new_privileges) == ("unconfined", True)
    assert ContainerSpec(security_opt=["no-new-privileges=false"]).validated().no_new_privileges is False


def test_capability_arithmetic_is_dockers():
    from labkit.linux.capabilities import NAMES
    from labkit.security.options import capability_set

    assert capability_set([], []) == set(CONTAINER_DEFAULT)
    assert capability_set(["sys_admin"], ["net_raw"]) == set(CONTAINER_DEFAULT) - {"net_raw"} | {"sys_admin"}
    assert capability_set(["chown"], ["all"]) == {"chown"}
    assert capability_set(["all"], ["sys_module"]) == set(NAMES) - {"sys_module"}
    assert capability_set([], [], privileged=True) == set(NAMES)


def test_privileged_means_no_filter_and_no_device_control():
    from labkit.runtime import ContainerSpec
    from labkit.security.options import security_plan

    default, privileged = ContainerSpec().validated(), ContainerSpec(privileged=True).validated()
    assert security_plan(default).seccomp == "default" and "c 1:3 rwm" in default.limits().devices
    assert security_plan(privileged).seccomp is None and privileged.limits().devices is None


def test_a_compiled_filter_is_kept_on_disk_and_read_back(labkit_home):
    from labkit.security import compiled
    from labkit.security.options import SecurityPlan

    security = SecurityPlan(privileged=False, capabilities=sorted(CONTAINER_DEFAULT), seccomp="default",
                            no_new_privileges=False)
    compiled._in_memory.clear()
    program = compiled.seccomp_filter(security)
    kept = list((labkit_home / "cache" / "seccomp").glob("*.bpf"))
    assert len(kept) == 1 and kept[0].read_bytes() == program
    assert program == seccomp.Profile.from_json(default_profile()).compile(CONTAINER_DEFAULT)
    # A new helper (empty memory) reads the file instead of compiling: what is there comes back.
    other = seccomp.Profile.from_json({"defaultAction": "SCMP_ACT_ALLOW"}).compile(set())
    kept[0].write_bytes(other)
    compiled._in_memory.clear()
    assert compiled.seccomp_filter(security) == other
    compiled._in_memory.clear()
