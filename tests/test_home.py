"""LABKIT_HOME is private: no ordinary host user reaches what containers made in it
(a setuid-root copy of a binary in a read-write layer, above all). Real kernel, as root;
"an ordinary host user" is uid/gid 65534 (nobody), reached with setpriv."""

import os
import stat
import subprocess
import sys

import pytest

from labkit.errors import ConfigError
from labkit.home import labkit_home, open_for_user_namespace
from labkit.runtime import DEFAULT_NAMESPACES, Container, ContainerSpec

NOBODY = 65534
USERNS_ROOT = ContainerSpec().user_map[0]  # the host uid/gid of root in a --userns container


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def as_user(uid, gid, *command) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command],
                          capture_output=True, text=True, timeout=30)


def reach(path, uid=NOBODY, gid=NOBODY) -> subprocess.CompletedProcess:
    """stat `path` as another host user: 'MODE OWNER' of the file, or 'Permission denied'."""
    return as_user(uid, gid, "stat", "-c", "%a %u", str(path))


def test_a_new_home_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "fresh"))
    assert mode(labkit_home()) == 0o700


def test_a_home_left_open_by_an_older_labkit_is_tightened_on_first_use(tmp_path):
    home = tmp_path / "old"
    home.mkdir()
    os.chmod(home, 0o755)
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "ps"], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert mode(home) == 0o700


@pytest.fixture
def setuid_copy(labkit_home):
    """A container that made a setuid-root copy of busybox in its read-write layer
    (removed after the test); yields the copy's host path."""
    container = Container(ContainerSpec(command="cp /bin/busybox /tmp/sush && chmod 4755 /tmp/sush"))
    try:
        container.run(remove=False).check()
        copy = container.upper_dir / "tmp" / "sush"
        st = os.stat(copy)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o4755, 0)
        yield copy
    finally:
        container.remove()


@pytest.mark.root
def test_another_host_user_cannot_reach_a_setuid_copy_in_a_read_write_layer(setuid_copy, labkit_home):
    assert mode(labkit_home) == 0o700
    refused = reach(setuid_copy)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


@pytest.mark.root
def test_with_a_0755_home_the_same_setuid_copy_is_within_reach(setuid_copy, labkit_home):
    os.chmod(labkit_home, 0o755)  # what older labkit left: the defence is the home's mode
    reached = reach(setuid_copy)
    assert (reached.returncode, reached.stdout.strip()) == (0, "4755 0")


@pytest.mark.root
def test_a_setuid_file_committed_into_an_image_layer_is_out_of_reach_too(setuid_copy, labkit_home):
    from labkit.images import commit, get_image

    image = commit(setuid_copy.parent.parent, get_image("busybox"), "suid")
    in_layer = image.layer_dirs[-1] / "tmp" / "sush"
    assert (mode(in_layer), os.stat(in_layer).st_uid) == (0o4755, 0)
    assert "Permission denied" in reach(in_layer).stderr
    os.chmod(labkit_home, 0o755)
    assert reach(in_layer).stdout.strip() == "4755 0"


@pytest.mark.root
def test_a_user_namespace_container_opens_the_home_to_its_own_root_only(labkit_home, no_leftovers):
    # In / : the read-write layer's own root, which this uid owns (no copy-up of a
    # root-owned lower directory, which overlay refuses in a user namespace).
    container = Container(ContainerSpec(command="cp /bin/busybox /sush && chmod 4755 /sush",
                                        namespaces=DEFAULT_NAMESPACES + ("user",)))
    try:
        container.run(remove=False).check()
        st = os.stat(labkit_home)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, USERNS_ROOT)
        copy = container.upper_dir / "sush"
        assert reach(copy, USERNS_ROOT, USERNS_ROOT).stdout.strip() == f"4755 {USERNS_ROOT}"
        refused = reach(copy)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
    finally:
        container.remove()


@pytest.mark.root
def test_a_second_user_namespace_map_on_the_same_home_is_refused_by_name(labkit_home):
    open_for_user_namespace(labkit_home, USERNS_ROOT, USERNS_ROOT)
    with pytest.raises(ConfigError, match=f"open to the user namespaces of host gid {USERNS_ROOT}"):
        open_for_user_namespace(labkit_home, 200000, 200000)
    assert mode(labkit_home) == 0o710


@pytest.mark.root
def test_a_detached_containers_logs_and_state_are_not_world_readable(labkit_home, no_leftovers):
    container = Container(ContainerSpec(command="echo secret; sleep 30"))
    container.start(detach=True)
    try:
        for name in ("stdout.log", "stderr.log", "state.json"):
            assert mode(container.dir / name) & 0o077 == 0, name
    finally:
        container.remove()
