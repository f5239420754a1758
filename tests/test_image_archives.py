"""Images in and out: OCI layouts, docker save archives, rootfs tarballs; and every
kind of hostile archive refused with an ImageError, leaving the store as it was."""

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from labkit.errors import ImageError
from labkit.images import commit, export_image, get_image, import_image
from labkit.images.store import Store

pytestmark = pytest.mark.root


@pytest.fixture
def store(labkit_home):
    return Store()


@pytest.fixture
def layered(store, tmp_path):
    """busybox + a layer that adds files, deletes /bin/ls and replaces /etc (opaque)."""
    base = get_image("busybox", store)
    upper = tmp_path / "upper"
    (upper / "bin").mkdir(parents=True)
    os.mknod(upper / "bin" / "ls", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "etc").mkdir()
    os.setxattr(upper / "etc", "trusted.overlay.opaque", b"y")
    (upper / "etc" / "motd").write_text("hello\n")
    (upper / "data").mkdir()
    (upper / "data" / ("x" * 150)).write_text("long name\n")
    os.link(upper / "data" / ("x" * 150), upper / "data" / "hardlink")
    image = commit(upper, base, "layered", store=store)
    image.config.labels["course"] = "containers"
    return store.save_image("layered", image.layers, image.config, image.history)


def store_snapshot(store):
    return set(store.layer_digests()), store.names(), sorted(os.listdir(store.tmp_root)) if store.tmp_root.exists() else []


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("format, destination, compression", [
    ("oci", "layout", "gzip"), ("oci", "layout.tar", "none"), ("docker", "saved.tar", "gzip")])
def test_round_trip_gives_identical_digests_and_config(layered, tmp_path, format, destination, compression):
    path = export_image(layered, tmp_path / destination, format=format, compression=compression)
    again = import_image(path, name="again", store=layered.store)
    assert again.layers == layered.layers
    assert again.config == layered.config


def test_oci_then_docker_then_oci_keeps_digests(layered, tmp_path):
    store = layered.store
    first = import_image(export_image(layered, tmp_path / "a", "oci"), name="a", store=store)
    second = import_image(export_image(first, tmp_path / "b.tar", "docker"), name="b", store=store)
    third = import_image(export_image(second, tmp_path / "c", "oci"), name="c", store=store)
    assert first.layers == second.layers == third.layers == layered.layers


def test_oci_layout_has_the_standard_shape_and_blobs_match_their_names(layered, tmp_path):
    layout = export_image(layered, tmp_path / "layout", "oci")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "layered"
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    config = _manifest_and_config(layout)[1]
    assert config["rootfs"]["diff_ids"] == layered.layers


def test_exports_are_byte_for_byte_reproducible(layered, tmp_path):
    one = export_image(layered, tmp_path / "one.tar", "docker")
    two = export_image(layered, tmp_path / "two.tar", "docker")
    assert one.read_bytes() == two.read_bytes()


def test_rootfs_tarball_is_the_merged_view(layered, tmp_path):
    path = export_image(layered, tmp_path / "root.tar.gz", "rootfs")
    with tarfile.open(path) as archive:
        names = set(archive.getnames())
    assert "etc/motd" in names and "etc/passwd" not in names and "bin/ls" not in names and "bin/sh" in names
    assert not any(".wh." in name for name in names)
    flat = import_image(path, name="flat", store=layered.store)
    assert len(flat.layers) == 1
    assert (flat.layer_dirs[0] / "etc" / "motd").read_text() == "hello\n"


def test_rootfs_directory_exports_and_imports(layered, tmp_path):
    directory = export_image(layered, tmp_path / "rootdir", "rootfs")
    assert sorted(os.listdir(directory / "etc")) == ["motd"]
    flat = import_image(directory, name="fromdir", store=layered.store)
    tarred = import_image(export_image(layered, tmp_path / "root.tar", "rootfs"), name="fromtar", store=layered.store)
    assert flat.layers == tarred.layers


def test_export_to_an_existing_path_is_refused(layered, tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ImageError, match="already exists"):
        export_image(layered, tmp_path / "taken", "oci")
    assert (tmp_path / "taken").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- hostile archives ----------------------------------------------------------------------------

def make_tar(path, entries, compress=False):
    """entries: (name, kind, extra) with kind file|dir|symlink|hardlink|chr|setuid."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if kind in ("file", "setuid"):
                data = (extra or "data").encode()
                info.size, info.mode = len(data), 0o4755 if kind == "setuid" else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, 1, 3, 0o666
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


HOSTILE = {
    "dotdot": ([("../evil", "file", None)], "contains '..'"),
    "absolute": ([("/etc/evil", "file", None)], "is an absolute path"),
    "through-symlink": ([("etc", "symlink", "/etc"), ("etc/passwd", "file", "pwned")], "written through 'etc'"),
    "symlink-escape": ([("a", "dir", None), ("a/up", "symlink", "../../../etc")], "climbs out of the image root"),
    "hardlink-escape": ([("h", "hardlink", "../outside")], "contains '..'"),
    "hardlink-absolute": ([("h", "hardlink", "/etc/passwd")], "is an absolute path"),
    "hardlink-unknown": ([("h", "hardlink", "not-here")], "not a regular file unpacked earlier"),
    "device": ([("dev/mem", "chr", None)], "is a device node"),
    "duplicate": ([("a", "file", "one"), ("a", "file", "two")], "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rootfs_tarball_is_refused_and_leaves_nothing(store, tmp_path, case):
    get_image("busybox", store)
    entries, message = HOSTILE[case]
    before = store_snapshot(store)
    with pytest.raises(ImageError, match=message):
        import_image(make_tar(tmp_path / f"{case}.tar", entries), name="hostile", store=store)
    assert store_snapshot(store) == before
    assert not os.path.exists("/etc/evil") and not (tmp_path.parent / "evil").exists()


def test_device_nodes_are_kept_only_when_allowed(store, tmp_path):
    path = make_tar(tmp_path / "dev.tar", [("dev", "dir", None), ("dev/null", "chr", None)])
    image = import_image(path, name="devices", store=store, allow_devices=True)
    assert stat.S_ISCHR(os.lstat(image.layer_dirs[0] / "dev" / "null").st_mode)


def test_setuid_bits_are_stripped_unless_kept(store, tmp_path):
    path = make_tar(tmp_path / "suid.tar", [("bin", "dir", None), ("bin/su", "setuid", "#!/bin/sh\n")])
    stripped = import_image(path, name="stripped", store=store)
    assert stat.S_IMODE(os.stat(stripped.layer_dirs[0] / "bin" / "su").st_mode) == 0o755
    kept = import_image(path, name="kept", store=store, keep_setuid=True)
    assert stat.S_IMODE(os.stat(kept.layer_dirs[0] / "bin" / "su").st_mode) == 0o4755


def test_truncated_gzip_is_refused(store, tmp_path):
    data = make_tar(tmp_path / "ok.tar.gz", [("a", "file", "x" * 100000)], compress=True).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="truncated or corrupt|not a readable tar"):
        import_image(tmp_path / "cut.tar.gz", name="cut", store=store)
    assert store_snapshot(store) == before


def test_corrupt_gzip_is_refused(store, tmp_path):
    data = bytearray(make_tar(tmp_path / "ok.tar.gz", [("a", "file", os.urandom(50000).hex())], compress=True).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)
    (tmp_path / "bad.tar.gz").write_bytes(bytes(data))
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="truncated or corrupt|not a readable tar"):
        import_image(tmp_path / "bad.tar.gz", name="bad", store=store)
    assert store_snapshot(store) == before


def _manifest_and_config(layout):
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    return manifest, config


def _rewrite_manifest(layout, manifest):
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


def test_oci_blob_that_does_not_match_its_digest_is_refused(layered, tmp_path):
    store = layered.store
    layout = export_image(layered, tmp_path / "layout", "oci")
    top = _manifest_and_config(layout)[0]["layers"][-1]["digest"][7:]
    make_tar(layout / "blobs" / "sha256" / top, [("evil", "file", "swapped")], compress=True)
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="does not match its digest"):
        import_image(layout, name="tampered", store=store)
    assert store_snapshot(store) == before


def test_oci_unknown_media_type_is_refused(layered, tmp_path):
    store = layered.store
    layout = export_image(layered, tmp_path / "layout", "oci")
    manifest = _manifest_and_config(layout)[0]
    manifest["layers"][-1]["mediaType"] = "application/vnd.example.secret+tar"
    _rewrite_manifest(layout, manifest)
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="unknown media type 'application/vnd.example.secret\\+tar'"):
        import_image(layout, name="odd", store=store)
    assert store_snapshot(store) == before


def test_docker_archive_layer_that_does_not_match_its_diff_id_is_refused(layered, tmp_path):
    store = layered.store
    saved = export_image(layered, tmp_path / "saved.tar", "docker")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(saved) as archive:
        archive.extractall(unpacked, filter="data")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    make_tar(unpacked / manifest[0]["Layers"][-1], [("evil", "file", "swapped")])
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="does not match the image config"):
        import_image(unpacked, name="tampered", store=store)
    assert store_snapshot(store) == before
