"""The VM kernel's saved guest (labkit.vm.snapshot), without booting: what a snapshot is
keyed by, and the store that keeps it. The restore itself is tested in test_vm_kernel.py."""

import os
import sys
from pathlib import Path

import pytest

from labkit.vm import snapshot
from labkit.vm.guest import stage1_init
from labkit.vm.provisioner import AGENT


def _key(files, **changes):
    inputs = dict(initramfs=b"base", qemu_argv=["/bin/true", "-m", "1024M"], memory_mib=1024, cpus=2, accel="tcg")
    inputs.update(changes)
    return snapshot.key(files, **inputs)


def test_a_snapshot_key_changes_with_the_content_of_any_file_it_holds(tmp_path):
    module, other = tmp_path / "module.py", tmp_path / "other.py"
    module.write_text("x = 1\n")
    other.write_text("y = 2\n")
    files = [str(module), str(other)]
    before = _key(files)
    os.utime(module, (0, 0))   # same bytes, another mtime: the same guest
    assert _key(files) == before
    module.write_text("x = 2\n")   # same size, new bytes: never the old guest
    assert _key(files) != before
    module.write_text("x = 1\n")
    assert _key(files) == before


def test_a_snapshot_key_changes_when_a_file_appears_next_to_one_it_holds(tmp_path):
    (tmp_path / "module.py").write_text("x = 1\n")
    files = [str(tmp_path / "module.py")]
    before = _key(files)
    (tmp_path / "zz-new.pth").write_text("import something\n")   # what site would now run
    assert _key(files) != before


def test_a_snapshot_key_changes_with_the_guests_shape(tmp_path):
    (tmp_path / "module.py").write_text("x = 1\n")
    files = [str(tmp_path / "module.py")]
    before = _key(files)
    assert _key(files, memory_mib=2048) != before
    assert _key(files, cpus=1) != before
    assert _key(files, accel="kvm") != before
    assert _key(files, initramfs=b"other base") != before
    assert _key(files, qemu_argv=["/bin/true", "-m", "2048M"]) != before


def test_hot_files_hold_the_kernels_modules_the_interpreter_and_the_links_to_them():
    files = snapshot.hot_files(sys.executable, AGENT)
    assert str(AGENT) in files
    assert os.path.realpath(sys.executable) in files
    assert any(path.endswith("/ipykernel/kernelapp.py") for path in files)
    assert any(path.endswith("/labkit/magics/__init__.py") or "/labkit/magics" in path for path in files)
    loader = snapshot.elf_interpreter(os.path.realpath(sys.executable))
    assert loader is not None
    assert {str(path) for path in snapshot._with_links(Path(loader))} <= set(files), \
        "the kernel looks the loader up by its PT_INTERP path, through /lib64"
    # Every symlink on the way to a listed path is listed, and nothing lies under a link
    # (the guest's copy must have the same layout as the host's).
    assert not [path for path in files if any(parent.is_symlink() for parent in Path(path).parents)]


def test_with_links_follows_a_chain_of_links_to_the_file(tmp_path):
    real = tmp_path / "real"
    (real / "lib").mkdir(parents=True)
    (real / "lib" / "thing.so").write_text("elf")
    (tmp_path / "lib").symlink_to("real/lib")            # a directory link on the way
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to("../lib/thing.so")
    found = {str(path) for path in snapshot._with_links(tmp_path / "bin" / "python")}
    assert found == {str(tmp_path / "bin" / "python"), str(tmp_path / "lib"), str(real / "lib" / "thing.so")}


def test_the_store_keeps_only_the_newest_snapshot_and_sweeps_partials_of_dead_owners(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"cpio")
    first = snapshot.new_partial(initrd, "t" * 32, ["/a"])
    first.state.write_bytes(b"memory")
    first = snapshot.commit(first, "key1")
    assert snapshot.newest() == first and first.files == ["/a"] and first.token == "t" * 32
    second = snapshot.new_partial(initrd, "u" * 32, ["/b"])
    assert snapshot.newest() == first, "a snapshot being written is never restored"
    second.state.write_bytes(b"memory")
    second = snapshot.commit(second, "key2")
    assert snapshot.newest() == second
    assert not first.directory.exists()
    # A partial left by a process that died (SIGKILL while saving) goes at the next save.
    dead = snapshot.store() / f"{snapshot.PARTIAL_PREFIX}999999999-x"
    dead.mkdir()
    snapshot.discard(snapshot.new_partial(initrd, "v" * 32, []))
    assert not dead.exists()
    assert sorted(path.name for path in snapshot.store().iterdir()) == ["key2"]
    assert oct(snapshot.store().stat().st_mode & 0o777) == oct(0o700)


def test_the_snapshot_guests_init_lets_go_of_the_hosts_root_and_the_default_is_unchanged():
    hot = stage1_init("loose", hot=True)
    assert "umount /lower" in hot and "lowerdir=/hot" in hot
    assert "lowerdir=/lower" not in hot
    assert stage1_init("loose") == stage1_init("loose", hot=False)
    assert "umount /lower" not in stage1_init()


@pytest.mark.parametrize("value, on", [("off", False), ("on", True), (None, True)])
def test_snapshots_can_be_turned_off(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(snapshot.SNAPSHOT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(snapshot.SNAPSHOT_VARIABLE, value)
    assert snapshot.enabled() is on


def test_a_refused_save_is_logged_with_qemus_words_and_the_guest_runs_on_with_its_ports(tmp_path, monkeypatch):
    """What QEMU 7.2 says while the host's root is mounted in the guest: the snapshot is
    dropped, the guest is continued and every forward removed for the save is back."""
    import asyncio
    import logging

    from labkit.vm.provisioner import Guest, SnapshotPlan
    from labkit.vm.qemu import QmpError

    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    blocker = ("Migration is disabled when VirtFS export path '/' is mounted in the guest using "
               "mount_tag 'hostroot'")

    class RefusingQmp:
        def __init__(self):
            self.commands = []

        async def execute(self, command, **arguments):
            self.commands.append(command)
            if command == "migrate":
                raise QmpError(blocker)
            return {}

        async def human(self, command_line, success=""):
            self.commands.append(command_line)
            return success

    guest = object.__new__(Guest)
    guest.qmp, guest.ports, guest.control_port = RefusingQmp(), [40001, 40002], 40003
    guest.plan = SnapshotPlan("k" * 32, ["/a"], None)
    guest.initrd, guest.agent_token = tmp_path / "initrd", "t" * 32
    guest.initrd.write_bytes(b"cpio")
    warnings = []
    guest.log = logging.getLogger("test-refused-save")
    monkeypatch.setattr(guest.log, "warning", lambda text, *args: warnings.append(text % args))
    asyncio.run(guest._save())

    assert any(blocker in warning for warning in warnings)
    commands = guest.qmp.commands
    assert commands.index("stop") < commands.index("migrate") < commands.index("cont")
    removed = [command.split()[-1] for command in commands if command.startswith("hostfwd_remove")]
    added = [command.split()[-1].split("-")[0] for command in commands if command.startswith("hostfwd_add")]
    assert removed == added == ["tcp:127.0.0.1:40001", "tcp:127.0.0.1:40002", "tcp:127.0.0.1:40003"]
    assert list(snapshot.store().iterdir()) == [], "the refused snapshot's partial directory is left"
