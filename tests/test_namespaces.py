"""Each namespace kind, isolated from the host on the real kernel, and shared when the
spec leaves it out."""

import ctypes
import os
import socket
import time

import pytest

from labkit.linux.namespaces import NAMESPACES, available_namespaces, namespace_inode
from labkit.runtime import Container, ContainerSpec, run

ALL_KINDS = tuple(ns.name for ns in NAMESPACES)


def inodes_inside(namespaces) -> dict:
    script = "for n in " + " ".join(ALL_KINDS) + "; do echo $n $(readlink /proc/self/ns/$n); done"
    result = run(script, namespaces=namespaces).check()
    inodes = {}
    for line in result.stdout.splitlines():
        kind, link = line.split()
        inodes[kind] = int(link.split("[")[1].rstrip("]"))
    return inodes


@pytest.mark.root
def test_namespace_table_has_all_eight_kinds_and_this_host_can_make_them():
    assert ALL_KINDS == ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")
    assert {ns.flag_name for ns in NAMESPACES} >= {"CLONE_NEWNS", "CLONE_NEWTIME", "CLONE_NEWUSER"}
    missing = {kind: why for kind, why in available_namespaces().items() if why}
    assert missing == {}, f"this host cannot create: {missing}"


def test_namespace_table_gives_introduced_and_complete_releases_as_namespaces_7_does():
    # clone(2) took CLONE_NEWNET from 2.6.24 and CLONE_NEWUSER from 2.6.23; 2.6.29 and
    # 3.8 are when those kinds became complete, not when they appeared.
    releases = {ns.name: (ns.introduced, ns.complete) for ns in NAMESPACES}
    assert releases == {"mnt": ("2.4.19", "2.4.19"), "uts": ("2.6.19", "2.6.19"), "ipc": ("2.6.19", "2.6.30"),
                        "pid": ("2.6.24", "2.6.24"), "net": ("2.6.24", "2.6.29"), "user": ("2.6.23", "3.8"),
                        "cgroup": ("4.6", "4.6"), "time": ("5.6", "5.6")}


@pytest.mark.root
def test_every_kind_is_isolated_when_asked(labkit_home):
    inside = inodes_inside(ALL_KINDS)
    host = {kind: namespace_inode(kind) for kind in ALL_KINDS}
    same = [kind for kind in ALL_KINDS if inside[kind] == host[kind]]
    assert same == [], f"these namespaces were shared with the host: {same}"


@pytest.mark.root
@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "mnt"])
def test_a_kind_left_out_of_the_spec_is_shared_with_the_host(labkit_home, kind):
    namespaces = tuple(k for k in ALL_KINDS if k != kind)
    inside = inodes_inside(namespaces)
    assert inside[kind] == namespace_inode(kind)


@pytest.mark.root
def test_hostname_change_inside_is_invisible_outside(labkit_home):
    before = socket.gethostname()
    result = run("hostname changed-inside && hostname", hostname="box", cap_add=["SYS_ADMIN"]).check()
    assert result.stdout.strip() == "changed-inside"
    assert socket.gethostname() == before


@pytest.mark.root
def test_hostname_needs_sys_admin_which_containers_lack_by_default(labkit_home):
    result = run("hostname nope", hostname="box")
    assert result.exit_code != 0


@pytest.mark.root
def test_the_command_is_pid_1_and_sees_only_its_own_processes(labkit_home):
    result = run("echo $$; sleep 0.2 & ls /proc | grep -c '^[0-9]'").check()
    pid_line, count = result.stdout.split()
    assert pid_line == "1"
    # sh itself, the background sleep, and the ls/grep of the pipeline: a handful, not the host's
    assert int(count) <= 5
    assert len([p for p in os.listdir("/proc") if p.isdigit()]) > int(count)


@pytest.mark.root
def test_with_init_pid_1_is_a_reaper_and_the_command_is_pid_2(labkit_home):
    result = run("echo $$; cat /proc/1/comm", init=True).check()
    assert result.stdout.split() == ["2", "labkit-init"]


def _msgget(key):
    libc = ctypes.CDLL(None, use_errno=True)
    ident = libc.msgget(ctypes.c_int(key), ctypes.c_int(0o1000 | 0o600))  # IPC_CREAT
    assert ident >= 0, os.strerror(ctypes.get_errno())
    return libc, ident


@pytest.mark.root
def test_a_sysv_ipc_object_is_not_shared_across_ipc_namespaces(labkit_home):
    key = 0x1ab0_0000 + os.getpid() % 0xFFFF
    libc, ident = _msgget(key)
    try:
        isolated = run("cat /proc/sysvipc/msg").check().stdout
        shared = run("cat /proc/sysvipc/msg", namespaces=("mnt", "uts", "pid", "net", "cgroup")).check().stdout
    finally:
        libc.msgctl(ctypes.c_int(ident), ctypes.c_int(0), None)  # IPC_RMID
    keys = lambda table: {int(line.split()[0]) for line in table.splitlines()[1:] if line.strip()}  # noqa: E731
    assert key not in keys(isolated)
    assert key in keys(shared)


@pytest.mark.root
def test_a_posix_message_queue_made_inside_is_invisible_outside(labkit_home):
    name = f"labkit-q{os.getpid()}"
    made = run(f"touch /dev/mqueue/{name} && ls /dev/mqueue").check()
    assert name in made.stdout.split()
    seen_from_host_ipc = run("ls /dev/mqueue", namespaces=("mnt", "uts", "pid", "net", "cgroup")).check()
    assert name not in seen_from_host_ipc.stdout.split()


@pytest.mark.root
def test_a_mount_made_inside_is_invisible_outside(labkit_home):
    container = Container(ContainerSpec(command="mkdir -p /m && mount -t tmpfs labkit-test-tmpfs /m && echo mounted && sleep 30",
                                        cap_add=["SYS_ADMIN"]))
    lines = []
    container.start(on_output=lambda stream, text: lines.append(text))
    try:
        deadline = time.monotonic() + 10
        while "mounted" not in "".join(lines) and time.monotonic() < deadline:
            container._streams.pump(0.1)
        assert "mounted" in "".join(lines), container.wait(timeout=1)
        with open(f"/proc/{container.pid}/mountinfo") as table:
            assert "labkit-test-tmpfs" in table.read()
        with open("/proc/self/mountinfo") as table:
            assert "labkit-test-tmpfs" not in table.read()
    finally:
        container.remove()


@pytest.mark.root
def test_only_loopback_in_a_new_network_namespace(labkit_home):
    result = run("ls /sys/class/net; cat /sys/class/net/lo/operstate").check()
    names = result.stdout.split()
    assert names[:-1] == ["lo"]
    assert names[-1] in ("unknown", "up")


@pytest.mark.root
def test_proc_self_cgroup_is_root_inside_the_cgroup_namespace(labkit_home):
    result = run("cat /proc/self/cgroup").check()
    paths = {line.split(":", 2)[2] for line in result.stdout.splitlines()}
    assert paths == {"/"}


@pytest.mark.root
def test_uid_0_inside_a_user_namespace_is_not_root_outside(labkit_home):
    container = Container(ContainerSpec(command="id -u; sleep 30", namespaces=ALL_KINDS[:-1], user_map=(200000, 65536)))
    out = []
    container.start(on_output=lambda stream, text: out.append(text))
    try:
        deadline = time.monotonic() + 10
        while not out and time.monotonic() < deadline:
            container._streams.pump(0.1)
        assert "".join(out).strip() == "0"
        with open(f"/proc/{container.pid}/status") as status:
            uid_line = next(line for line in status if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["200000"] * 4
    finally:
        container.remove()


@pytest.mark.root
def test_exec_into_a_user_namespace_container_is_its_root_not_the_hosts(labkit_home):
    container = Container(ContainerSpec(command="sleep 30", namespaces=ALL_KINDS[:-1], user_map=(200000, 65536)))
    container.start(detach=True)
    try:
        inside = container.exec("id -u; grep Uid /proc/self/status").check()
        assert inside.stdout.splitlines()[0] == "0"
        assert inside.stdout.splitlines()[1].split()[1:] == ["0"] * 4
        made = container.exec("touch /made-by-exec && stat -c %u /made-by-exec").check()
        assert made.stdout.strip() == "0"
        # what exec made, seen from the host: the namespace's root is host uid 200000
        assert os.stat(container.upper_dir / "made-by-exec").st_uid == 200000
    finally:
        container.remove()


def hundredths(uptime: str) -> int:
    """/proc/uptime's first field ("76767.84") as whole hundredths of a second, its unit.
    Compared as floats, 76767.84 + 259200 is 335967.83999999997, below the 335967.84 a
    container read in the same tick (CI, 2026-12-07)."""
    seconds, _, fraction = uptime.partition(".")
    return int(seconds) * 100 + int(fraction.ljust(2, "0")[:2])


def host_uptime() -> int:
    """The host's CLOCK_BOOTTIME in hundredths of a second."""
    with open("/proc/uptime") as uptime:
        return hundredths(uptime.read().split()[0])


@pytest.mark.root
def test_a_time_namespace_offset_shows_in_clock_boottime_through_proc_uptime(labkit_home):
    """/proc/uptime is CLOCK_BOOTTIME. Bracketed by two host readings, so a slow start
    on a busy host cannot make it fail, and a missing offset (3 days) always does."""
    offset = 86400 * 3
    before = host_uptime()
    result = run("cat /proc/uptime", time_offset=offset).check()
    after = host_uptime()
    inside = hundredths(result.stdout.split()[0])
    assert before + offset * 100 <= inside <= after + offset * 100


@pytest.mark.root
def test_a_time_namespace_holds_the_offsets_of_clock_monotonic_and_clock_boottime(labkit_home):
    """CLOCK_MONOTONIC has no file of its own to read from a shell; the kernel's own
    record of the namespace's offsets, /proc/self/timens_offsets, shows both clocks."""
    offset = 86400 * 3
    result = run("cat /proc/self/timens_offsets", time_offset=offset).check()
    offsets = {clock: (int(seconds), int(nanoseconds))
               for clock, seconds, nanoseconds in map(str.split, result.stdout.splitlines())}
    assert offsets == {"monotonic": (offset, 0), "boottime": (offset, 0)}
    plain = run("cat /proc/self/timens_offsets").check()   # no --time-offset: the host's clocks
    assert {line.split()[0]: line.split()[1] for line in plain.stdout.splitlines()} == {"monotonic": "0", "boottime": "0"}


@pytest.mark.root
def test_user_and_time_namespaces_together_offset_clock_boottime(labkit_home):
    offset = 86400 * 2
    before = host_uptime()
    result = run("id -u; cat /proc/uptime", namespaces=ALL_KINDS, time_offset=offset).check()
    after = host_uptime()
    uid, uptime_line = result.stdout.splitlines()
    assert uid == "0"
    assert before + offset * 100 <= hundredths(uptime_line.split()[0]) <= after + offset * 100
