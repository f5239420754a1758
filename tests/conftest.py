"""Shared fixtures. Tests that claim kernel behaviour run against the real kernel as root;
where the host cannot (not root, a controller missing) they skip and say what is missing."""

import os

import pytest
from leak_checks import empty_slot_cgroups, labkit_cgroups, labkit_mounts


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    if os.environ.get("LABKIT_TESTS_AS_USER"):
        return   # tests/test_escapes_rootless.py runs chosen root tests as an ordinary user
    skip = pytest.mark.skip(reason="needs root on a real kernel (namespaces, cgroups, mounts)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cgroup_v2_host():
    """Skips unless this host's own cgroups are v2 with memory, cpu and pids controllers: on
    most users' machines, and in CI inside the VM of `.ci/v2-lane` (this project's machines
    are cgroup v1 hybrid). Use with `pytest.mark.usefixtures("cgroup_v2_host")`."""
    from labkit.cgroups import detect_mode, host_hierarchy

    if not (detect_mode() == "v2" and {"memory", "cpu", "pids"} <= host_hierarchy().controllers):
        pytest.skip("the host's cgroups are not v2 with memory, cpu and pids controllers "
                    "(CI runs these in a VM: .ci/v2-lane)")


@pytest.fixture
def labkit_home(tmp_path, monkeypatch):
    """A fresh LABKIT_HOME for one test: its own images, containers and caches."""
    home = tmp_path / "labkit-home"
    home.mkdir()
    # Containers with a user namespace run as an unprivileged host uid, which must be able
    # to reach the layers: pytest's temp root is private (0700) by default.
    for directory in (tmp_path, *tmp_path.parents):
        if directory == directory.parent or str(directory) == "/tmp" or directory.stat().st_uid != os.geteuid():
            break   # (as an ordinary user, the dirs above its own are not its to change)
        os.chmod(directory, os.stat(directory).st_mode | 0o011)
    monkeypatch.setenv("LABKIT_HOME", str(home))
    return home


@pytest.fixture
def no_leftovers(labkit_home, monkeypatch):
    """Asserts the test left no container state, cgroup or mount of its own behind.
    (Only this test's containers are checked: other processes may run their own.) The
    helper's ready pool slots are not leftovers; an emptied slot cgroup is."""
    from labkit.runtime.client.container import Container

    made = []
    original = Container._plan

    def recording_plan(self, *args, **kwargs):
        made.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Container, "_plan", recording_plan)
    yield labkit_home
    from labkit.runtime.client.helper_client import settle

    settle()  # the helper tears a container down right after reporting its exit
    containers = labkit_home / "containers"
    left = sorted(os.listdir(containers)) if containers.exists() else []
    assert left == [], f"container directories left behind: {left}"
    leaves = {c.id for c in made} | {c.cgroup_name.rsplit("/", 1)[-1] for c in made if c.cgroup_name}
    ours = {path for path in labkit_cgroups() if path.rsplit("/", 1)[-1] in leaves}
    assert ours == set(), f"cgroups left behind: {sorted(ours)}"
    from labkit.runtime.client import helper_client as helper

    if helper._helper is not None and helper._helper.gone is None:
        assert empty_slot_cgroups(helper._helper.pid) == [], "pool slot cgroups left behind"
    assert labkit_mounts(labkit_home) == [], "mounts left behind"


@pytest.fixture
def loop_device(tmp_path):
    """A loop block device over a temp file of this test's own (the host's disks are not
    ours to touch); detached afterwards."""
    import shutil
    import subprocess

    if shutil.which("losetup") is None:
        pytest.skip("losetup (util-linux) is not installed")
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(8 << 20)
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
