"""The escape suite as an ordinary user: the same attempts, refused, by rootless labkit.

`test_the_escape_suite_holds_as_an_ordinary_user` (as root) makes a throw-away user and
runs, as that user, the escape tests listed in ESCAPES (pytest with LABKIT_TESTS_AS_USER,
which lets these root tests run rootless) and the `test_rootless_*` mirrors below. Left
out, with why:
- the device-control tests (tests/test_escapes_devices.py but the ones listed): rootless
  has no device cgroup; the user namespace refuses mknod itself, which the mirrors show;
- the "without the defence" halves whose attempt still fails rootless: there the user
  namespace is a second wall (a host kernel setting, perf_event_open, bpf, a device
  node), which the mirrors assert instead of an escape that succeeds;
- the tests of `--userns` (a map root picks) and of the escapes experiment, which asks
  for a pids limit (rootless on cgroup v1 there is none, and it says so) and compares
  root's verdicts.
Root in a rootless container reading a host file only root can read:
tests/test_rootless.py::test_root_in_a_rootless_container_cannot_read_a_host_file_only_root_can.
"""

import os
import re
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ESCAPES = [
    "tests/test_escapes_paths.py::test_a_container_cannot_change_a_host_kernel_setting",
    "tests/test_escapes_paths.py::test_a_directory_volume_under_a_dangling_link_is_refused_by_name",
    "tests/test_escapes_paths.py::test_a_directory_volume_under_a_linked_dir_is_made_inside_the_root",
    "tests/test_escapes_paths.py::test_a_file_created_through_a_dangling_link_lands_inside_the_root",
    "tests/test_escapes_paths.py::test_a_file_volume_on_a_linked_target_never_creates_the_file_on_the_host",
    "tests/test_escapes_paths.py::test_a_kernel_settings_path_is_mounted_read_only",
    "tests/test_escapes_paths.py::test_a_masked_kernel_path_shows_nothing_of_the_host",
    "tests/test_escapes_paths.py::test_a_masked_pattern_covers_every_match_in_the_containers_sys",
    "tests/test_escapes_paths.py::test_a_tmpfs_under_a_linked_dir_is_made_inside_the_root",
    "tests/test_escapes_paths.py::test_absolute_links_and_dotdot_resolve_inside_the_root",
    "tests/test_escapes_paths.py::test_every_cpus_thermal_throttle_is_masked_also_from_exec",
    "tests/test_escapes_paths.py::test_exec_joins_a_container_whose_kernel_paths_are_protected",
    "tests/test_escapes_paths.py::test_make_dirs_follows_links_inside_and_refuses_a_dangling_one",
    "tests/test_escapes_paths.py::test_privileged_proc_interrupts_shows_the_hosts_counters",
    "tests/test_escapes_paths.py::test_privileged_turns_the_masks_off",
    "tests/test_escapes_paths.py::test_proc_interrupts_reads_empty_in_a_container_and_from_exec",
    "tests/test_escapes_paths.py::test_without_masks_the_same_kernel_path_is_the_hosts",
    "tests/test_escapes_paths.py::test_without_the_defence_the_kernel_settings_path_is_writable",
    "tests/test_escapes_paths.py::test_without_the_defence_the_linked_target_is_a_host_path",
    "tests/test_escapes_paths.py::test_without_the_defence_the_same_copy_writes_into_the_host_dir",
    "tests/test_escapes_seccomp.py::test_a_nested_user_namespace_is_refused",
    "tests/test_escapes_seccomp.py::test_a_profile_file_in_dockers_format_is_what_the_container_gets",
    "tests/test_escapes_seccomp.py::test_adding_a_key_to_a_keyring_is_refused",
    "tests/test_escapes_seccomp.py::test_an_exec_runs_under_the_containers_profile",
    "tests/test_escapes_seccomp.py::test_cap_drop_removes_a_capability_from_the_bounding_set",
    "tests/test_escapes_seccomp.py::test_clock_settime_is_refused_before_the_kernel_sees_it",
    "tests/test_escapes_seccomp.py::test_mount_without_cap_sys_admin_is_refused_by_seccomp_and_by_the_capability",
    "tests/test_escapes_seccomp.py::test_no_new_privileges_is_set_in_the_container",
    "tests/test_escapes_seccomp.py::test_reading_host_roots_keyring_is_refused",
    "tests/test_escapes_rootless.py::test_rootless_even_privileged_cannot_change_a_host_kernel_setting",
    "tests/test_escapes_rootless.py::test_rootless_even_privileged_cannot_use_perf_events_or_bpf",
    "tests/test_escapes_rootless.py::test_rootless_no_device_node_can_be_made_even_privileged",
]


def as_the_user() -> bool:
    return os.geteuid() != 0 and bool(os.environ.get("LABKIT_TESTS_AS_USER"))


@pytest.mark.root
@pytest.mark.slow
def test_the_escape_suite_holds_as_an_ordinary_user():
    from throwaway_users import throwaway_user

    if not os.path.exists("/usr/bin/newuidmap"):
        pytest.skip("newuidmap/newgidmap are not installed (Debian package uidmap)")
    from throwaway_users import why_user_cannot_run_this_checkout

    if why_user_cannot_run_this_checkout():
        pytest.skip(why_user_cannot_run_this_checkout())
    with throwaway_user() as student:
        env = {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}", "PYTHONDONTWRITEBYTECODE": "1",
               "LABKIT_TESTS_AS_USER": "1"}
        done = student.run(["/usr/bin/python3", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
                            "--basetemp", os.path.join(student.home, "pytest"), *ESCAPES],
                           env=env, cwd=REPO, timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 40, summary     # the listed tests and their parameters, less what this host lacks
    skipped = re.findall(r"SKIPPED \[\d+\] \S+ (.*)", done.stdout)
    assert all("this host has no" in reason or "not v2" in reason or "cgroup v2" in reason for reason in skipped), skipped


# --- mirrors: what differs rootless, asserted as the user (skipped elsewhere) -----------

rootless_only = pytest.mark.skipif(not as_the_user(), reason="runs as the ordinary user of "
                                   "test_the_escape_suite_holds_as_an_ordinary_user")


@rootless_only
def test_rootless_even_privileged_cannot_change_a_host_kernel_setting(labkit_home):
    from test_escapes_paths import KERNEL_SETTING, WRITE_BACK

    from labkit.runtime import run

    assert os.access(KERNEL_SETTING, os.R_OK)
    # Docker's profile: /proc/sys mounted read-only, as for root.
    default = run(WRITE_BACK)
    assert default.exit_code != 0 and "Read-only file system" in default.stderr, default.stderr
    # Without it (root's suite shows the write then lands on the host): the file is the
    # host's root's, and root of the user namespace is not.
    privileged = run(WRITE_BACK, privileged=True)
    assert privileged.exit_code != 0 and "Permission denied" in privileged.stderr, privileged.stderr


@rootless_only
@pytest.mark.parametrize("call, refused", [("perf_event", {"EPERM", "EACCES"}), ("bpf_map", {"EPERM"})])
def test_rootless_even_privileged_cannot_use_perf_events_or_bpf(labkit_home, call, refused):
    from test_escapes_seccomp import PRIVILEGED, attempt

    assert attempt(call) == "EPERM"                 # Docker's seccomp profile, as for root
    assert attempt(call, **PRIVILEGED) in refused   # the user namespace: no host capability


@rootless_only
@pytest.mark.parametrize("node", [("c", 1, 11), ("c", 10, 229), ("b", 7, 0)], ids=["kmsg", "fuse", "loop0"])
def test_rootless_no_device_node_can_be_made_even_privileged(labkit_home, node):
    from test_escapes_devices import mknod_and_open

    for options in ({}, {"privileged": True}):
        made, _ = mknod_and_open(*node, "write", **options)   # (the open then makes a plain file)
        assert not made, options
