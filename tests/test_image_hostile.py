"""Hostile images that are well-formed enough to get past the first checks: sparse members
that unpack to more than the import size, special files where an image's files should be,
whiteouts of nothing, JSON of the wrong shape, numbers out of range. Each is refused in one
line (BadImageInput; exit 125 from `labkit`), without a hang, and the store is left as it was."""

import io
import json
import os
import re
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


# --- manifests and configs of the wrong shape --------------------------------------------------------

def tar_of(path, files: dict):
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            data = data if isinstance(data, bytes) else json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


LAYER = layer_tar()
GOOD_LAYER = f"{sha256(LAYER)}/layer.tar"


def saved_with_manifest(manifest) -> dict:
    files = docker_save_files([LAYER])
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def saved_with_config(config) -> dict:
    data = json.dumps(config).encode()
    return {"manifest.json": json.dumps([{"Config": f"{sha256(data)}.json", "Layers": [GOOD_LAYER]}]).encode(),
            f"{sha256(data)}.json": data, GOOD_LAYER: LAYER}


def diff_ids(**more):
    return {"rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(LAYER)}"]}, **more}


def oci_with(index=None, layout=None, manifest=None) -> dict:
    config = json.dumps(diff_ids()).encode()
    config_descriptor = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{sha256(config)}",
                         "size": len(config)}
    layer_descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{sha256(LAYER)}",
                        "size": len(LAYER)}
    manifest = json.dumps({"config": config_descriptor, "layers": [layer_descriptor]} if manifest is None
                          else manifest(config_descriptor, layer_descriptor)).encode()
    manifest_descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": f"sha256:{sha256(manifest)}", "size": len(manifest)}
    return {"oci-layout": {"imageLayoutVersion": "1.0.0"} if layout is None else layout,
            "index.json": {"manifests": [manifest_descriptor]} if index is None else index(manifest_descriptor),
            f"blobs/sha256/{sha256(manifest)}": manifest, f"blobs/sha256/{sha256(config)}": config,
            f"blobs/sha256/{sha256(LAYER)}": LAYER}


MISSHAPEN = {
    "manifest a list of numbers": (saved_with_manifest([1]), "manifest.json[0] is a number (1), not an object"),
    "entry without Config": (saved_with_manifest([{"Layers": [GOOD_LAYER]}]), "entry 0 names no Config"),
    "Config a number": (saved_with_manifest([{"Config": 5, "Layers": [GOOD_LAYER]}]), "Config is a number"),
    "RepoTags of numbers": (saved_with_manifest([{"Config": "x.json", "RepoTags": [5], "Layers": []}]),
                            "RepoTags[0] is a number (5), not a string"),
    "Layers of numbers": (saved_with_manifest([{"Config": "x.json", "Layers": [5]}]), "Layers[0] is a number"),
    "config a string": (saved_with_config(diff_ids(config="abc")), "config is a string ('abc'), not an object"),
    "Env a number": (saved_with_config(diff_ids(config={"Env": 5})), "config.Env is a number (5), not a list"),
    "Cmd a string": (saved_with_config(diff_ids(config={"Cmd": "echo hi"})), "config.Cmd is a string"),
    "WorkingDir a number": (saved_with_config(diff_ids(config={"WorkingDir": 7})), "config.WorkingDir is a number"),
    "Labels a list": (saved_with_config(diff_ids(config={"Labels": [1, 2]})), "config.Labels is a list"),
    "a Label a number": (saved_with_config(diff_ids(config={"Labels": {"a": 1}})), "config.Labels['a'] is a number"),
    "Volumes a list": (saved_with_config(diff_ids(config={"Volumes": [1, "a"]})), "config.Volumes is a list"),
    "history a number": (saved_with_config(diff_ids(history=5)), "history is a number (5), not a list"),
    "history of strings": (saved_with_config(diff_ids(history=["a"])), "history[0] is a string"),
    "diff_ids a string": (saved_with_config({"rootfs": {"diff_ids": "sha256:" + "0" * 64}}), "diff_ids is a string"),
    "oci-layout a list": (oci_with(layout=[1]), "oci-layout is a list"),
    "index.json a list": (oci_with(index=lambda descriptor: [1]), "index.json is a list"),
    "manifests a number": (oci_with(index=lambda descriptor: {"manifests": 5}), "manifests is a number"),
    "manifests of strings": (oci_with(index=lambda descriptor: {"manifests": ["x"]}), "manifests[0] is a string"),
    "annotations a list": (oci_with(index=lambda descriptor: {"manifests": [{**descriptor, "annotations": [1]}]}),
                           "annotations is a list"),
    "digest a number": (oci_with(index=lambda descriptor: {"manifests": [{**descriptor, "digest": 5}]}),
                        "malformed digest 5"),
    "manifest a list": (oci_with(manifest=lambda config, layer: [1]), "is a list ([1]), not an object"),
    "manifest without config": (oci_with(manifest=lambda config, layer: {"layers": [layer]}), "image config is null"),
    "manifest without layers": (oci_with(manifest=lambda config, layer: {"config": config}), "layers is null"),
    "layers of strings": (oci_with(manifest=lambda config, layer: {"config": config, "layers": ["x"]}),
                          "layers[0] is a string"),
}


@pytest.mark.parametrize("case", list(MISSHAPEN))
def test_json_of_the_wrong_shape_is_one_line_naming_the_field(store, tmp_path, case):
    files, named = MISSHAPEN[case]
    before = store_contents(store)
    with pytest.raises(BadImageInput, match=re.escape(named)):
        import_image(tar_of(tmp_path / "misshapen.tar", files), name="misshapen", store=store)
    assert store_contents(store) == before


def test_json_of_the_wrong_shape_exits_125_from_the_cli(store, tmp_path):
    done = labkit("image", "import", str(tar_of(tmp_path / "bad.tar", saved_with_config(diff_ids(config="abc")))))
    assert done.returncode == 125, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "config is a string ('abc'), not an object" in done.stderr


def test_the_wellformed_archives_of_these_tests_import(store, tmp_path):
    assert import_image(tar_of(tmp_path / "saved.tar", saved_with_config(diff_ids())), name="a", store=store)
    assert import_image(tar_of(tmp_path / "oci.tar", oci_with()), name="b", store=store)


# --- numbers out of range in tar headers -------------------------------------------------------------

def one_file_with_pax(path, headers: dict):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("f")
        info.size, info.pax_headers = 2, headers
        archive.addfile(info, io.BytesIO(b"hi"))
    return path


OUT_OF_RANGE = {
    "uid too large": ({"uid": "99999999999"}, "its uid 99999999999 is not an id Linux has"),
    "uid negative": ({"uid": "-5"}, "its uid -5 is not an id Linux has"),
    "uid -1 (chown's 'no change')": ({"uid": "4294967295"}, "its uid 4294967295 is not an id"),
    "gid too large": ({"gid": "99999999999"}, "its gid 99999999999 is not an id Linux has"),
    "mtime past time_t": ({"mtime": "1e300"}, "its modification time 1e+300 is not a time a file can have"),
    "mtime infinite": ({"mtime": "inf"}, "its modification time inf is not a time"),
    "mtime not a number": ({"mtime": "nan"}, "its modification time nan is not a time"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_number_out_of_range_in_a_tar_header_is_refused(store, tmp_path, case):
    headers, named = OUT_OF_RANGE[case]
    before = store_contents(store)
    with pytest.raises(BadImageInput, match=re.escape(named)):
        import_image(one_file_with_pax(tmp_path / "numbers.tar", headers), name="numbers", store=store)
    assert store_contents(store) == before


def test_numbers_in_range_are_kept(store, tmp_path):
    image = import_image(one_file_with_pax(tmp_path / "numbers.tar", {"uid": "4294967294", "mtime": "-86400.5"}),
                         name="numbers", store=store)
    found = (image.layer_dirs[0] / "f").stat()
    assert found.st_mtime == -86400.5
    if os.geteuid() == 0:
        assert found.st_uid == 4294967294


# --- a refused import leaves the store as it was ------------------------------------------------------

def oci_layout_files(layers) -> dict:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer)}" for layer in layers]}}
                        ).encode()
    descriptor = lambda data, kind: {"mediaType": kind, "digest": f"sha256:{sha256(data)}", "size": len(data)}  # noqa: E731
    manifest = json.dumps({"config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
                           "layers": [descriptor(layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers]
                           }).encode()
    files = {f"blobs/sha256/{sha256(data)}": data for data in (*layers, config, manifest)}
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    files["index.json"] = json.dumps({"manifests": [descriptor(manifest, "application/vnd.oci.image.manifest.v1+json")]
                                      }).encode()
    return files


SECOND_LAYERS = {
    "climbs out": layer_tar([("../evil", "file", "pwned")]),
    "a whiteout of nothing": layer_tar([(".wh.", "file", "")]),
    "cut short": layer_tar([("big", "file", "y" * 100_000)])[:20_000],
}


@pytest.mark.parametrize("shape", ["docker tar", "docker directory", "oci tar"])
@pytest.mark.parametrize("second", list(SECOND_LAYERS))
def test_a_refused_second_layer_leaves_no_first_layer_or_blob_behind(store, tmp_path, shape, second):
    layers = [layer_tar([("big", "file", "x" * 100_000)]), SECOND_LAYERS[second]]
    files = oci_layout_files(layers) if shape == "oci tar" else docker_save_files(layers)
    path = write_directory(tmp_path / "saved", files) if shape == "docker directory" else tar_of(tmp_path / "a.tar",
                                                                                                    files)
    get_image("busybox", store)
    before = store_contents(store)
    with pytest.raises(BadImageInput):
        import_image(path, name="partial", store=store)
    assert store_contents(store) == before
