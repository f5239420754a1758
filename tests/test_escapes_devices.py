"""Device control, on the real kernel: the cgroup primitives (v1 `devices` controller,
v2 BPF program), then the escapes a container tried before it existed.

Nodes opened here are ones the test made: `/dev/zero`'s numbers in a temp dir, and a
loop device over a temp file of its own (detached afterwards). Nothing is written to a
device the test did not make.
"""

import os
import subprocess
import sys
import time

import pytest

from labkit.cgroups import HierarchyV1, HierarchyV2, Limits
from labkit.cgroups.devices import DOCKER_DEFAULT, DeviceRule
from labkit.cgroups.v1 import controller_mounts
from labkit.cgroups.v2 import unified_mount
from labkit.errors import ConfigError

V1 = controller_mounts()
UNIFIED = unified_mount()
needs_v1_devices = pytest.mark.skipif("devices" not in V1, reason="no cgroup v1 devices hierarchy on this host")


def skip_without(version):
    if version == 1 and "devices" not in V1:
        pytest.skip("no cgroup v1 devices hierarchy on this host")
    if version == 2 and UNIFIED is None:
        pytest.skip("no cgroup2 filesystem mounted on this host")


def leaf():
    return f"test-devices-{os.getpid()}-{time.monotonic_ns()}"


OPEN_ALL = """
import os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY))
        print(path, "ok")
    except OSError as error:
        print(path, error.strerror)
"""


def open_inside(cgroup, paths):
    """Open each path from a process inside `cgroup`: {path: "ok" | strerror}."""
    process = subprocess.Popen(["sh", "-c", 'read _; exec "$@"', "sh", sys.executable, "-c", OPEN_ALL, *paths],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cgroup.add_process(process.pid)
    out, _ = process.communicate("go\n", timeout=60)
    return dict(line.rsplit(" ", 1) if " ok" in line else line.split(" ", 1) for line in out.splitlines())


@pytest.fixture
def nodes(tmp_path):
    """A node with /dev/null's numbers and one with /dev/zero's, made by the test."""
    made = {}
    for name, minor in (("null", 3), ("zero", 5)):
        path = tmp_path / name
        os.mknod(path, 0o666 | 0o020000, os.makedev(1, minor))
        made[name] = str(path)
    return made


def test_device_rules_read_as_the_v1_controller_writes_them():
    assert str(DeviceRule.parse("c 136:* rwm")) == "c 136:* rwm"
    assert DeviceRule.parse("b *:* m") == DeviceRule("b", None, None, "m")
    with pytest.raises(ConfigError, match="device rule 'c 1:3 rwx'"):
        DeviceRule.parse("c 1:3 rwx")


@pytest.mark.root
@pytest.mark.parametrize("version", [1, 2])
def test_a_cgroup_with_device_rules_opens_only_what_they_allow(version, nodes):
    skip_without(version)
    hierarchy = HierarchyV1() if version == 1 else HierarchyV2(UNIFIED)
    cgroup = hierarchy.create(leaf(), Limits(devices=["c 1:3 rwm"]))
    try:
        opened = open_inside(cgroup, [nodes["null"], nodes["zero"]])
    finally:
        cgroup.delete()
    assert opened == {nodes["null"]: "ok", nodes["zero"]: "Operation not permitted"}


@pytest.mark.root
@pytest.mark.parametrize("version", [1, 2])
def test_without_device_rules_the_same_node_opens(version, nodes):
    skip_without(version)
    hierarchy = HierarchyV1() if version == 1 else HierarchyV2(UNIFIED)
    cgroup = hierarchy.create(leaf(), Limits())
    try:
        opened = open_inside(cgroup, [nodes["zero"]])
    finally:
        cgroup.delete()
    assert opened == {nodes["zero"]: "ok"}


@pytest.mark.root
@needs_v1_devices
def test_the_v1_devices_list_is_dockers_allow_list():
    cgroup = HierarchyV1().create(leaf(), Limits(devices=list(DOCKER_DEFAULT)))
    try:
        with open(os.path.join(cgroup.dirs["devices"], "devices.list")) as listing:
            assert sorted(listing.read().split("\n")[:-1]) == sorted(DOCKER_DEFAULT)
    finally:
        cgroup.delete()
    assert not cgroup.exists()


# --- the escapes, through the runtime (v1 here; v2 in the VM lane) ------------------------

def mknod_and_open(kind, major, minor, how, **options):
    """mknod a node inside a fresh container, then open it: (made?, opened?)."""
    from labkit.runtime import run

    script = (f"mknod /tmp/node {kind} {major} {minor} && echo made; "
              + ("head -c 512 /tmp/node > /dev/null" if how == "read" else ": > /tmp/node")
              + " && echo opened")
    lines = run(script, **options).stdout.split()
    return "made" in lines, "opened" in lines


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_block_device_node_can_be_made_but_not_opened(labkit_home, loop_device):
    number = os.stat(loop_device).st_rdev
    major, minor = os.major(number), os.minor(number)
    assert mknod_and_open("b", major, minor, "read") == (True, False)
    # Without device control (and only with the test's own loop device) it opens.
    assert mknod_and_open("b", major, minor, "read", privileged=True) == (True, True)


def unregistered_block_major() -> int:
    """A block major no driver has registered here (from /proc/devices)."""
    with open("/proc/devices") as table:
        text = table.read()
    used = {int(line.split()[0]) for line in text.split("Block devices:")[1].splitlines() if line.strip()}
    return next(major for major in range(240, 200, -1) if major not in used)


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_block_node_is_refused_before_the_kernel_looks_for_its_disk(labkit_home):
    """Holds where no loop device can be made (the VM lane): device control answers
    EPERM before the block layer would answer ENXIO for a disk that does not exist."""
    from labkit.runtime import run

    script = f"mknod /tmp/node b {unregistered_block_major()} 0 && head -c 1 /tmp/node 2>&1 >/dev/null"
    assert "Operation not permitted" in run(script).stdout
    assert "No such device or address" in run(script, privileged=True).stdout


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_dev_kmsg_cannot_be_opened_for_writing(labkit_home):
    # /dev/kmsg is c 1:11; the privileged case only opens it (writes nothing).
    assert mknod_and_open("c", 1, 11, "write") == (True, False)
    assert mknod_and_open("c", 1, 11, "write", privileged=True) == (True, True)


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_dev_fuse_is_refused_as_docker_refuses_it(labkit_home):
    # moby's default spec denies c 10:229 (daemon/pkg/oci/defaults.go). Opening /dev/fuse
    # and closing it again mounts nothing; without device control it opens.
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no fuse driver on this host: /dev/fuse is missing, so an open fails either way")
    assert mknod_and_open("c", 10, 229, "write") == (True, False)
    assert mknod_and_open("c", 10, 229, "write", privileged=True) == (True, True)


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_the_allowed_devices_still_work(labkit_home):
    from labkit.runtime import run

    result = run("head -c 16 /dev/urandom | wc -c; echo x > /dev/null; head -c 4 /dev/zero | wc -c").check()
    assert result.stdout.split() == ["16", "4"]


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_an_exec_is_under_the_containers_device_control(labkit_home):
    from labkit.runtime import Container

    script = f"mknod /tmp/node b {unregistered_block_major()} 0 && head -c 1 /tmp/node 2>&1 >/dev/null"
    for privileged, expected in ((False, "Operation not permitted"), (True, "No such device or address")):
        container = Container(command=["sleep", "60"], privileged=privileged).start(detach=True)
        try:
            output = container.exec(script).stdout
        finally:
            container.remove()
        assert expected in output, output
