"""The leak checks themselves (tests/leak_checks.py): each sees what its own test made and
left, and nothing another test run on this host makes meanwhile. A check that looked at
nothing would pass these "not another's" halves, so each also leaks on purpose and must
see it. Real mounts, cgroups and inotify, as root."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from leak_checks import NamesMade, labkit_mounts, own_temp_root, remove_temp_root, sandbox_cgroups, sandbox_leftovers

pytestmark = pytest.mark.root


def mount_tmpfs(target, source="labkit-test"):
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", source, str(target)], check=True)


def unmount(target):
    subprocess.run(["umount", str(target)], check=True)


def test_a_mount_left_in_this_tests_home_is_seen_and_one_in_another_home_is_not(tmp_path):
    home, other = tmp_path / "home", tmp_path / "home2"   # other: a prefix of it is this home's name
    leaked, elsewhere = home / "containers" / "x" / "rootfs", other / "containers" / "y" / "rootfs"
    assert labkit_mounts(home) == []
    mount_tmpfs(leaked)
    mount_tmpfs(elsewhere)
    try:
        seen = labkit_mounts(home)
        assert [line.split()[4] for line in seen] == [str(leaked)]
        assert [line.split()[4] for line in labkit_mounts(other)] == [str(elsewhere)]
    finally:
        unmount(leaked)
        unmount(elsewhere)
    assert labkit_mounts(home) == []


def test_a_mount_whose_options_name_this_home_is_seen(tmp_path):
    # an overlay's mount point may lie anywhere; its lowerdir (the layers) is in the home
    home = tmp_path / "home with space"
    lower, upper, work, target = (home / "layers" / "a", tmp_path / "u", tmp_path / "w", tmp_path / "merged")
    for directory in (lower, upper, work, target):
        directory.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                    str(target)], check=True)
    try:
        assert len(labkit_mounts(home)) == 1
        assert labkit_mounts(tmp_path / "home") == []
    finally:
        unmount(target)


def test_names_made_sees_a_directory_that_lived_a_moment(tmp_path):
    watched = tmp_path / "containers"
    made = NamesMade(watched)
    try:
        (watched / "0123456789abcdef").mkdir()
        (watched / "0123456789abcdef").rmdir()
        assert made.read() == {"0123456789abcdef"}
    finally:
        made.close()


def test_own_temp_root_is_where_this_process_and_its_children_make_temp_dirs():
    with own_temp_root() as root:
        here = tempfile.mkdtemp(prefix="labkit-sandbox-")
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp())"],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert os.path.dirname(here) == os.path.dirname(child) == str(root)
        assert oct(os.stat(root).st_mode & 0o777) == "0o711"
        assert tempfile.gettempdir() != str(root) and os.environ.get("TMPDIR") != str(root)
    finally:
        remove_temp_root(root)
    assert not root.exists()


def _sandbox_cgroup_root():
    from labkit.cgroups import detect_mode

    return "/sys/fs/cgroup" if detect_mode() == "v2" else "/sys/fs/cgroup/memory"


def _claim_high_slot():
    """A slot of the sandbox registry no grader uses (they claim from 0 up), held as a
    grader holds one: an entry made with O_EXCL, naming this live process."""
    from labkit.grading.sandbox.namespaces import REGISTRY
    from labkit.linux.processes import identity

    os.makedirs(REGISTRY, mode=0o700, exist_ok=True)
    for slot in range(4095, 3000, -1):
        try:
            fd = os.open(os.path.join(REGISTRY, f"{slot}.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return slot, identity(os.getpid())
    pytest.skip("no free slot in the sandbox registry above 3000")


def test_sandbox_leftovers_sees_this_runs_sandboxes_and_no_other_graders(tmp_path):
    from labkit.grading.sandbox.namespaces import REGISTRY

    parent = os.path.join(_sandbox_cgroup_root(), "labkit-sandbox")
    made_parent = not os.path.isdir(parent)
    os.makedirs(parent, exist_ok=True)
    claimed, cgroups, mounted = [], [], None
    with own_temp_root() as root:
        try:
            before = sandbox_cgroups()
            assert sandbox_leftovers(root, before) == []
            # another grader's sandbox, live: its entry names its own directory
            slot, owner = _claim_high_slot()
            claimed.append(slot)
            theirs = os.path.join(parent, str(slot))
            os.mkdir(theirs)
            cgroups.append(theirs)
            with open(os.path.join(REGISTRY, f"{slot}.json"), "w") as entry:
                json.dump({**owner, "directory": "/tmp/labkit-sandbox-not-ours", "cgroups": [theirs]}, entry)
            assert sandbox_leftovers(root, before) == []
            # this run's sandbox, left: its directory, a mount in it, its cgroup and entry
            directory = tempfile.mkdtemp(prefix="labkit-sandbox-")
            mounted = os.path.join(directory, "home")
            mount_tmpfs(mounted)
            slot, owner = _claim_high_slot()
            claimed.append(slot)
            ours = os.path.join(parent, str(slot))
            os.mkdir(ours)
            cgroups.append(ours)
            with open(os.path.join(REGISTRY, f"{slot}.json"), "w") as entry:
                json.dump({**owner, "directory": directory, "cgroups": [ours]}, entry)
            assert sandbox_leftovers(root, before) == [
                f"directory {directory}", f"mount {mounted}", f"cgroup {ours} (of {directory})"]
            # a cgroup no sandbox claims (its entry gone, the cgroup not), new since `before`
            os.unlink(os.path.join(REGISTRY, f"{slot}.json"))
            claimed.remove(slot)
            assert f"cgroup {ours} (no sandbox claims it)" in sandbox_leftovers(root, before)
            assert f"cgroup {ours} (no sandbox claims it)" not in sandbox_leftovers(root, before | {ours})
        finally:
            if mounted:
                unmount(mounted)
            for path in cgroups:
                os.rmdir(path)
            for slot in claimed:
                os.unlink(os.path.join(REGISTRY, f"{slot}.json"))
            if made_parent:
                try:
                    os.rmdir(parent)
                except OSError:
                    pass   # a grader's sandbox is in it now
            remove_temp_root(root)
