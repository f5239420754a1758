"""Hostile images that are well-formed enough to get past the first checks: sparse members
that unpack to more than the import size, special files where an image's files should be,
whiteouts of nothing, JSON of the wrong shape, numbers out of range. Each is refused in one
line (BadImageInput; exit 125 from `labkit`), without a hang, and the store is left as it was."""

import io
import json
import subprocess
import tarfile

import pytest

from labkit.errors import BadImageInput
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
