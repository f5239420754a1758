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

@pytest.mark.root
@pytest.mark.parametrize("format, destination, compression", [
    ("oci", "layout", "gzip"), ("oci", "layout.tar", "none"), ("docker", "saved.tar", "gzip")])
def test_round_trip_gives_identical_digests_and_config(layered, tmp_path, format, destination, compression):
    path = export_image(layered, tmp_path / destination, format=format, compression=compression)
    again = import_image(path, name="again", store=layered.store)
    assert again.layers == layered.layers
    assert again.config == layered.config


@pytest.mark.root
def test_oci_then_docker_then_oci_keeps_digests(layered, tmp_path):
    store = layered.store
    first = import_image(export_image(layered, tmp_path / "a", "oci"), name="a", store=store)
    second = import_image(export_image(first, tmp_path / "b.tar", "docker"), name="b", store=store)
    third = import_image(export_image(second, tmp_path / "c", "oci"), name="c", store=store)
    assert first.layers == second.layers == third.layers == layered.layers


@pytest.mark.root
def test_oci_layout_has_the_standard_shape_and_blobs_match_their_names(layered, tmp_path):
    layout = export_image(layered, tmp_path / "layout", "oci")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "layered"
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    config = _manifest_and_config(layout)[1]
    assert config["rootfs"]["diff_ids"] == layered.layers


@pytest.mark.root
def test_exports_are_byte_for_byte_reproducible(layered, tmp_path):
    one = export_image(layered, tmp_path / "one.tar", "docker")
    two = export_image(layered, tmp_path / "two.tar", "docker")
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.root
def test_rootfs_tarball_is_the_merged_view(layered, tmp_path):
    path = export_image(layered, tmp_path / "root.tar.gz", "rootfs")
    with tarfile.open(path) as archive:
        names = set(archive.getnames())
    assert "etc/motd" in names and "etc/passwd" not in names and "bin/ls" not in names and "bin/sh" in names
    assert not any(".wh." in name for name in names)
    flat = import_image(path, name="flat", store=layered.store)
    assert len(flat.layers) == 1
    assert (flat.layer_dirs[0] / "etc" / "motd").read_text() == "hello\n"


@pytest.mark.root
def test_rootfs_directory_exports_and_imports(layered, tmp_path):
    directory = export_image(layered, tmp_path / "rootdir", "rootfs")
    assert sorted(os.listdir(directory / "etc")) == ["motd"]
    flat = import_image(directory, name="fromdir", store=layered.store)
    tarred = import_image(export_image(layered, tmp_path / "root.tar", "rootfs"), name="fromtar", store=layered.store)
    assert flat.layers == tarred.layers


EXPORTS = [("oci", "taken"), ("oci", "taken.tar"), ("docker", "taken.tar"), ("rootfs", "taken.tar"),
           ("rootfs", "taken.tar.gz"), ("rootfs", "taken")]


@pytest.mark.root
@pytest.mark.parametrize("format, name", EXPORTS)
def test_export_to_an_existing_path_is_refused(layered, tmp_path, format, name):
    (tmp_path / name).write_text("mine")
    with pytest.raises(ImageError, match="already exists"):
        export_image(layered, tmp_path / name, format)
    assert (tmp_path / name).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.root
@pytest.mark.parametrize("format, name", EXPORTS)
def test_export_writes_nothing_through_a_link_planted_beside_its_destination(layered, tmp_path, format, name):
    """A shared directory (/tmp) lets anyone plant links at the names an export would use
    for its work in progress: each is created anew (O_EXCL), never opened through a link."""
    victim = tmp_path / "victim"
    victim.write_text("the host's file\n")
    planted = [tmp_path / f".{name}.partial", tmp_path / f".{name}.tar", tmp_path / f".{name}"]
    for link in planted:
        link.symlink_to(victim)
    path = export_image(layered, tmp_path / name, format)
    assert victim.read_bytes() == b"the host's file\n"
    assert not path.is_symlink() and (path.is_dir() or tarfile.is_tarfile(path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(p.name for p in planted)


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


def escape_landing_spots(store, levels=6):
    """Where a name with `../` (one to `levels` deep) would land if an import followed it:
    every ancestor of the scratch dir a layer is unpacked in (<tmp_root>/<scratch>/layer).
    The first, the scratch dir itself, is removed after every import, so it is not listed."""
    spots, directory = [], store.tmp_root
    for _ in range(levels - 1):
        spots.append(directory)
        directory = directory.parent
    return spots


def escaped_files(store, tmp_path, name="evil"):
    return [str(spot / name) for spot in escape_landing_spots(store) + [tmp_path, tmp_path / "target"]
            if os.path.lexists(spot / name)]


HOSTILE = {
    "dotdot": ([("../evil", "file", None)], "contains '..'"),
    "dotdot-2": ([("../../evil", "file", None)], "contains '..'"),
    "dotdot-3": ([("../../../evil", "file", None)], "contains '..'"),
    "dotdot-5": ([("../../../../../evil", "file", None)], "contains '..'"),
    "dotdot-inside": ([("a", "dir", None), ("a/../../../evil", "file", None)], "contains '..'"),
    "absolute": ([("/etc/evil", "file", None)], "is an absolute path"),
    "through-symlink": ([("etc", "symlink", "{target}"), ("etc/evil", "file", "pwned")], "written through 'etc'"),
    "through-relative-symlink": ([("up", "symlink", "../../../.."), ("up/evil", "file", "pwned")],
                                 "climbs out of the image root"),
    "symlink-escape": ([("a", "dir", None), ("a/up", "symlink", "../../../etc")], "climbs out of the image root"),
    "hardlink-escape": ([("h", "hardlink", "../outside")], "contains '..'"),
    "hardlink-absolute": ([("h", "hardlink", "{outside}")], "is an absolute path"),
    "hardlink-unknown": ([("h", "hardlink", "not-here")], "not a regular file unpacked earlier"),
    "device": ([("dev/mem", "chr", None)], "is a device node"),
    "duplicate": ([("a", "file", "one"), ("a", "file", "two")], "appears twice"),
    "whiteout-of-nothing": ([(".wh.", "file", None)], "a whiteout of '', which names no file"),
    "whiteout-of-dot": ([("a", "dir", None), ("a/.wh..", "file", None)], "a whiteout of '.', which names no file"),
    "whiteout-of-dotdot": ([(".wh...", "file", None)], "a whiteout of '..', which names no file"),
    "whiteout-of-a-whiteout": ([(".wh..wh.x", "file", None)], "itself a whiteout's name"),
}


def hostile_entries(case, tmp_path):
    """The case's entries, with symlink and hard-link targets pointing at files this test
    owns (tmp_path/target/, tmp_path/outside), never at the host's own /etc."""
    (tmp_path / "target").mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.write_text("the host's file\n")
    places = {"target": str(tmp_path / "target"), "outside": str(outside)}
    entries, message = HOSTILE[case]
    return [(name, kind, extra.format(**places) if extra else extra) for name, kind, extra in entries], message


def assert_nothing_escaped(store, tmp_path):
    assert escaped_files(store, tmp_path) == []
    assert os.listdir(tmp_path / "target") == []                     # nothing written through a symlink
    assert os.stat(tmp_path / "outside").st_nlink == 1               # no hard link to a file outside
    assert (tmp_path / "outside").read_text() == "the host's file\n"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rootfs_tarball_is_refused_and_leaves_nothing(store, tmp_path, case):
    get_image("busybox", store)
    entries, message = hostile_entries(case, tmp_path)
    before = store_snapshot(store)
    with pytest.raises(ImageError, match=message):
        import_image(make_tar(tmp_path / f"{case}.tar", entries), name="hostile", store=store)
    assert store_snapshot(store) == before
    assert_nothing_escaped(store, tmp_path)


@pytest.mark.parametrize("case", ["dotdot-2", "dotdot-3", "through-symlink", "hardlink-absolute"])
def test_without_the_checks_the_same_archive_escapes_where_the_test_looks(store, tmp_path, case):
    """The refusal tests look in the right places: the same archives unpacked by a naive
    tarfile.extractall (no filter) into a scratch-shaped dir do write there."""
    entries, _ = hostile_entries(case, tmp_path)
    layer = store.tmp_root / "labkit-naive" / "layer"
    layer.mkdir(parents=True)
    with tarfile.open(make_tar(tmp_path / f"{case}.tar", entries)) as archive:
        options = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        archive.extractall(layer, **options)
    if case.startswith("dotdot"):
        assert escaped_files(store, tmp_path) != []
    elif case == "through-symlink":
        assert os.listdir(tmp_path / "target") == ["evil"]
    else:
        assert os.stat(tmp_path / "outside").st_nlink == 2


@pytest.mark.root
def test_device_nodes_are_kept_only_when_allowed(store, tmp_path):
    path = make_tar(tmp_path / "dev.tar", [("dev", "dir", None), ("dev/null", "chr", None)])
    image = import_image(path, name="devices", store=store, allow_devices=True)
    assert stat.S_ISCHR(os.lstat(image.layer_dirs[0] / "dev" / "null").st_mode)


@pytest.mark.root
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


@pytest.mark.root
def test_oci_blob_that_does_not_match_its_digest_is_refused(layered, tmp_path):
    store = layered.store
    layout = export_image(layered, tmp_path / "layout", "oci")
    top = _manifest_and_config(layout)[0]["layers"][-1]["digest"][7:]
    make_tar(layout / "blobs" / "sha256" / top, [("evil", "file", "swapped")], compress=True)
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="does not match its digest"):
        import_image(layout, name="tampered", store=store)
    assert store_snapshot(store) == before


@pytest.mark.root
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


@pytest.mark.root
def test_docker_archive_layer_that_does_not_match_its_diff_id_is_refused(layered, tmp_path):
    store = layered.store
    saved = export_image(layered, tmp_path / "saved.tar", "docker")
    unpacked = tmp_path / "unpacked"
    unpack_export(saved, unpacked)
    manifest = json.loads((unpacked / "manifest.json").read_text())
    make_tar(unpacked / manifest[0]["Layers"][-1], [("evil", "file", "swapped")])
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="does not match the image config"):
        import_image(unpacked, name="tampered", store=store)
    assert store_snapshot(store) == before


def unpack_export(archive_path, target):
    """Unpack one of our own exports (regular files and directories only). Not
    tarfile.extractall(filter=...): the filter argument arrived in Python 3.11.4 and
    Debian 12's python3 is 3.11.2."""
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            assert member.isfile() or member.isdir(), f"unexpected {member.name} in our own export"
            assert not member.name.startswith("/") and ".." not in member.name.split("/")
            path = target / member.name
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.extractfile(member).read())


def _sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def swap_top_layer_oci(layout, tar_path):
    """Replace the top layer of an OCI layout with `tar_path`, fixing every digest on
    the way up (blob, config diff_id, config, manifest, index): only the layer's content
    is hostile, so only the unpacker can refuse it."""
    blobs = layout / "blobs" / "sha256"
    manifest, config = _manifest_and_config(layout)
    data = tar_path.read_bytes()
    (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    manifest["layers"][-1].update(digest=_sha256(data), size=len(data),
                                  mediaType="application/vnd.oci.image.layer.v1.tar")
    config["rootfs"]["diff_ids"][-1] = _sha256(data)
    config_data = json.dumps(config).encode()
    (blobs / hashlib.sha256(config_data).hexdigest()).write_bytes(config_data)
    manifest["config"].update(digest=_sha256(config_data), size=len(config_data))
    _rewrite_manifest(layout, manifest)


def swap_top_layer_docker(unpacked, tar_path):
    manifest = json.loads((unpacked / "manifest.json").read_text())
    make_layer = unpacked / manifest[0]["Layers"][-1]
    make_layer.write_bytes(tar_path.read_bytes())
    config = json.loads((unpacked / manifest[0]["Config"]).read_text())
    config["rootfs"]["diff_ids"][-1] = _sha256(tar_path.read_bytes())
    config_data = json.dumps(config).encode()
    config_name = hashlib.sha256(config_data).hexdigest() + ".json"
    (unpacked / config_name).write_bytes(config_data)
    manifest[0]["Config"] = config_name
    (unpacked / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.root
@pytest.mark.parametrize("case", ["dotdot-3", "through-symlink", "hardlink-absolute", "symlink-escape"])
def test_oci_layer_with_hostile_entries_is_refused_and_leaves_nothing(layered, tmp_path, case):
    store = layered.store
    entries, message = hostile_entries(case, tmp_path)
    layout = export_image(layered, tmp_path / "layout", "oci")
    swap_top_layer_oci(layout, make_tar(tmp_path / "hostile.tar", entries))
    before = store_snapshot(store)
    with pytest.raises(ImageError, match=message):
        import_image(layout, name="hostile", store=store)
    assert store_snapshot(store) == before
    assert_nothing_escaped(store, tmp_path)


@pytest.mark.root
@pytest.mark.parametrize("case", ["dotdot-3", "through-symlink", "hardlink-absolute", "symlink-escape"])
def test_docker_save_layer_with_hostile_entries_is_refused_and_leaves_nothing(layered, tmp_path, case):
    store = layered.store
    entries, message = hostile_entries(case, tmp_path)
    unpacked = tmp_path / "unpacked"
    unpack_export(export_image(layered, tmp_path / "saved.tar", "docker"), unpacked)
    swap_top_layer_docker(unpacked, make_tar(tmp_path / "hostile.tar", entries))
    before = store_snapshot(store)
    with pytest.raises(ImageError, match=message):
        import_image(unpacked, name="hostile", store=store)
    assert store_snapshot(store) == before
    assert_nothing_escaped(store, tmp_path)


@pytest.mark.root
def test_a_swapped_layer_with_fixed_digests_is_otherwise_accepted(layered, tmp_path):
    """The hostile-layer tests above fail only because of the entries: the same surgery
    with a harmless layer imports."""
    layout = export_image(layered, tmp_path / "layout", "oci")
    swap_top_layer_oci(layout, make_tar(tmp_path / "fine.tar", [("fine", "file", "ok")]))
    image = import_image(layout, name="swapped-oci", store=layered.store)
    assert (image.layer_dirs[-1] / "fine").read_text() == "ok"
    unpacked = tmp_path / "unpacked"
    unpack_export(export_image(layered, tmp_path / "saved.tar", "docker"), unpacked)
    swap_top_layer_docker(unpacked, make_tar(tmp_path / "fine2.tar", [("fine", "file", "ok2")]))
    image = import_image(unpacked, name="swapped-docker", store=layered.store)
    assert (image.layer_dirs[-1] / "fine").read_text() == "ok2"


@pytest.mark.root
@pytest.mark.parametrize("field, value", [("Layers", "../outside.tar"), ("Layers", "{abs}"),
                                          ("Config", "../config.json"), ("Config", "/etc/hostname")])
def test_docker_manifest_naming_files_outside_the_archive_is_refused(layered, tmp_path, field, value):
    """A manifest.json whose Layers or Config point outside the archive: a valid layer
    and config wait there, so only the path check stands between them and the store."""
    store = layered.store
    unpacked = tmp_path / "unpacked"
    unpack_export(export_image(layered, tmp_path / "saved.tar", "docker"), unpacked)
    manifest = json.loads((unpacked / "manifest.json").read_text())
    (tmp_path / "outside.tar").write_bytes((unpacked / manifest[0]["Layers"][-1]).read_bytes())
    (tmp_path / "config.json").write_bytes((unpacked / manifest[0]["Config"]).read_bytes())
    value = value.format(abs=tmp_path / "outside.tar")
    if field == "Layers":
        manifest[0]["Layers"][-1] = value
    else:
        manifest[0]["Config"] = value
    (unpacked / "manifest.json").write_text(json.dumps(manifest))
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="points outside the archive"):
        import_image(unpacked, name="outside", store=store)
    assert store_snapshot(store) == before


@pytest.mark.root
@pytest.mark.parametrize("digest", ["sha256:../../../outside", "sha256:/etc/hostname",
                                    "sha512:" + "0" * 128, "sha256:" + "A" * 64])
def test_oci_manifest_with_a_malformed_layer_digest_is_refused(layered, tmp_path, digest):
    store = layered.store
    layout = export_image(layered, tmp_path / "layout", "oci")
    manifest = _manifest_and_config(layout)[0]
    manifest["layers"][-1]["digest"] = digest
    _rewrite_manifest(layout, manifest)
    before = store_snapshot(store)
    with pytest.raises(ImageError, match="malformed digest"):
        import_image(layout, name="odd", store=store)
    assert store_snapshot(store) == before


@pytest.mark.root
def test_docker_save_tar_with_a_traversing_member_name_reads_only_what_it_names(layered, tmp_path):
    """Inside a `docker save` tar, a member called ../x is never written anywhere: the
    archive is read in place, and a manifest naming '../x' is refused."""
    saved = export_image(layered, tmp_path / "saved.tar", "docker")
    with tarfile.open(saved, "a") as archive:
        info = tarfile.TarInfo("../evil")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    image = import_image(saved, name="appended", store=layered.store)
    assert image.layers == layered.layers
    assert escaped_files(layered.store, tmp_path) == []
