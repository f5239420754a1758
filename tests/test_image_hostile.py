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


# --- an unpacked image directory: regular files only, never a link followed -------------------------

def layer_tar(entries=(("hello", "file", "hi\n"),)) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            payload = data.encode() if isinstance(data, str) else data
            info.size, info.mode = len(payload), 0o644
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def docker_save_files(layers, tags=("saved:latest",)) -> dict:
    """The files of a `docker save` archive (name -> bytes) holding `layers` (tar bytes)."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer)}" for layer in layers]},
                         "config": {"Cmd": ["sh"]}}).encode()
    files = {f"{sha256(layer)}/layer.tar": layer for layer in layers}
    files[f"{sha256(config)}.json"] = config
    files["manifest.json"] = json.dumps([{"Config": f"{sha256(config)}.json", "RepoTags": list(tags),
                                          "Layers": [f"{sha256(layer)}/layer.tar" for layer in layers]}]).encode()
    return files


def write_directory(directory, files: dict):
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def saved_directory(tmp_path):
    """A docker save archive unpacked into a directory, and (outside it) a file to link to."""
    files = docker_save_files([layer_tar()])
    directory = write_directory(tmp_path / "saved", files)
    outside = write_directory(tmp_path / "outside", {"manifest.json": files["manifest.json"]})
    return directory, outside / "manifest.json", files


def test_a_manifest_linked_out_of_an_image_directory_is_not_read(store, saved_directory):
    directory, outside, _ = saved_directory
    (directory / "manifest.json").unlink()
    (directory / "manifest.json").symlink_to(outside)   # as it would to /etc/shadow
    before = store_contents(store)
    with pytest.raises(BadImageInput, match="refusing to read manifest.json: it is a symbolic link"):
        import_image(directory, name="linked", store=store)
    assert store_contents(store) == before


def test_a_directory_linked_on_the_way_is_not_followed(store, saved_directory):
    directory, _, files = saved_directory
    layer = next(name for name in files if name.endswith("/layer.tar"))
    folder = directory / layer.split("/")[0]
    folder.rename(directory.parent / "elsewhere")
    folder.symlink_to(directory.parent / "elsewhere")
    with pytest.raises(BadImageInput, match="is not a directory \\(a link is not followed\\)"):
        import_image(directory, name="linked", store=store)


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_a_fifo_in_an_image_directory_is_refused_without_a_hang(store, saved_directory, which):
    import os

    directory, _, files = saved_directory
    name = next(name for name in files if name.endswith({"layer": "/layer.tar", "config": ".json",
                                                          "manifest": "manifest.json"}[which])
                and (which == "manifest" or name != "manifest.json"))
    (directory / name).unlink()
    os.mkfifo(directory / name)
    done = labkit("image", "import", "--name", "fifo", str(directory), timeout=30)
    assert done.returncode == 125, done.stderr
    assert done.stderr.splitlines() == [f"labkit: {directory}: refusing to read {name}: it is a FIFO, not a regular "
                                        "file; an image directory holds regular files only"]
    assert "fifo" not in store.names()


def test_an_image_directory_of_regular_files_still_imports(store, saved_directory):
    directory, _, _ = saved_directory
    image = import_image(directory, store=store)
    assert image.name == "saved" and (image.layer_dirs[0] / "hello").read_text() == "hi\n"
