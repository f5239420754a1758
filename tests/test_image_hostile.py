"""Hostile images that are well-formed enough to get past the first checks: sparse members
that unpack to more than the import size, special files where an image's files should be,
whiteouts of nothing, JSON of the wrong shape, numbers out of range. Each is refused in one
line (BadImageInput; exit 125 from `labkit`), without a hang, and the store is left as it was."""

import io
import json
import subprocess
import sys
import tarfile

import pytest

from labkit.errors import BadImageInput, ImageError
from labkit.images import get_image, import_image
from labkit.images.builder import build
from labkit.images.store import Store

MIB = 1 << 20


@pytest.fixture
def store(labkit_home):
    return Store()


def store_contents(store):
    """What a refused import must leave as it found: images, layers, blobs, scratch."""
    def listing(directory):
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []

    return sorted(store.names()), store.layer_digests(), listing(store.blobs_root), listing(store.tmp_root)


def import_limit(tmp_path, monkeypatch, size):
    defaults = tmp_path / "defaults.toml"
    defaults.write_text(f'[import_size]\ndefault = "{size}"\n')
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    return defaults


# --- sparse members: holes are bytes on disk, not in the tar ----------------------------------

def sparse_tar(directory, tar_format, size="300M"):
    """A tar of one file of `size` that is all hole, as GNU tar --sparse writes it (10 KiB)."""
    (directory / "holes").parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, directory / "holes"], check=True)
    archive = directory / f"sparse-{tar_format}.tar"
    subprocess.run(["tar", "--sparse", f"--format={tar_format}", "-C", directory, "-cf", archive, "holes"],
                   check=True)
    (directory / "holes").unlink()
    return archive


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_a_sparse_member_is_charged_its_real_size_on_import(store, tmp_path, monkeypatch, tar_format):
    archive = sparse_tar(tmp_path, tar_format)
    assert archive.stat().st_size < MIB
    import_limit(tmp_path, monkeypatch, "10m")
    before = store_contents(store)
    with pytest.raises(BadImageInput, match="unpacks to more than 10.0 MiB"):
        import_image(archive, name="sparse", store=store)
    assert store_contents(store) == before


def test_a_sparse_member_within_the_import_size_is_unpacked_whole(store, tmp_path, monkeypatch):
    archive = sparse_tar(tmp_path, "gnu", size="3M")
    import_limit(tmp_path, monkeypatch, "10m")
    image = import_image(archive, name="sparse", store=store)
    assert (image.layer_dirs[0] / "holes").stat().st_size == 3 * MIB


def test_a_sparse_member_added_in_a_build_is_charged_its_real_size(store, tmp_path, monkeypatch):
    context = tmp_path / "context"
    context.mkdir()
    sparse_tar(context, "gnu")
    import_limit(tmp_path, monkeypatch, "10m")
    get_image("busybox", store)
    before = store_contents(store)
    with pytest.raises(BadImageInput, match="unpacks to more than 10.0 MiB"):
        build("FROM busybox\nADD sparse-gnu.tar /data/\n", "added", context, store=store)
    assert store_contents(store) == before


# --- an image's /etc/passwd and /etc/group are read only where they are regular files ------------

def labkit(*arguments, timeout=60):
    """The `labkit` CLI as a process, so that a hang is a timeout, not a stuck test run."""
    return subprocess.run([sys.executable, "-m", "labkit", *arguments], capture_output=True, text=True,
                          timeout=timeout)


def rootfs_tar(path, members):
    """A rootfs tarball of (name, kind, data) members, kind 'file', 'dir', 'fifo' or 'symlink'."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE,
                         "symlink": tarfile.SYMTYPE}[kind]
            if kind == "symlink":
                info.linkname = data
            payload = data.encode() if kind == "file" else b""
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("table, chown, named", [
    ("passwd", "app", "no user named 'app'"),
    ("group", "0:staff", "no group named 'staff'"),
])
def test_a_fifo_as_the_images_user_table_does_not_hang_a_build(store, tmp_path, table, chown, named):
    other = "group" if table == "passwd" else "passwd"
    import_image(rootfs_tar(tmp_path / "fifo.tar", [
        ("etc", "dir", ""), (f"etc/{table}", "fifo", ""), (f"etc/{other}", "file", "root:x:0:0::/:/bin/sh\n")]),
        name="fifo", store=store)
    context = tmp_path / "context"
    context.mkdir()
    (context / "f").write_text("f\n")
    (context / "Dockerfile").write_text(f"FROM fifo\nCOPY --chown={chown} f /f\n")
    done = labkit("build", "-t", "owned", str(context), timeout=30)
    assert done.returncode == 125, done.stderr
    assert named in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "owned" not in store.names()


def test_a_user_table_larger_than_any_real_one_is_read_only_in_part(store, tmp_path):
    from labkit.images.image_users import TABLE_MOST, resolve_owner

    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("x" * TABLE_MOST + "\nlate:x:7:7::/:/bin/sh\n")
    with pytest.raises(ImageError, match="no user named 'late'"):
        resolve_owner("late", [str(layer)], "COPY")
