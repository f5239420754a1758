"""Nothing a container writes grows without end: a detached container's logs are rotated,
an import stops at the import size and entry count (gzip, bzip2 and xz bombs), a notebook cell shows at most
CELL_OUTPUT_LIMIT characters and says what it cut. Real kernel, as root."""

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time

import pytest

from kernel_fixtures import kernel, labkit_kernelspec  # noqa: F401 — fixtures are used by name
from labkit.errors import ImageError
from labkit.images import get_image, import_image
from labkit.images.store import Store
from labkit.magics.container import CELL_OUTPUT_LIMIT
from labkit.runtime import Container, ContainerSpec
from labkit.runtime.helper.logs import RotatingLog

pytestmark = pytest.mark.root

KIB = 1 << 10
MIB = 1 << 20


def wait_for_exit(container, timeout=60):
    deadline = time.monotonic() + timeout
    while container.poll() == "running":
        assert time.monotonic() < deadline, "the container did not exit"
        time.sleep(0.05)


# --- a detached container's logs -------------------------------------------------------

WRITE_3_MIB = "yes abcdefg | head -c 3145728; echo last line"


def test_a_detached_containers_log_is_rotated_at_max_size_keeping_max_file(labkit_home, no_leftovers):
    container = Container(ContainerSpec(command=WRITE_3_MIB, log_opt=["max-size=256k", "max-file=3"]))
    container.start(detach=True)
    try:
        wait_for_exit(container)
        names = sorted(path.name for path in container.files.path.iterdir() if path.name.startswith("stdout.log"))
        assert names == ["stdout.log", "stdout.log.1", "stdout.log.2"]
        sizes = [os.path.getsize(container.files.path / name) for name in names]
        assert all(size <= 256 * KIB for size in sizes) and sizes[1] == sizes[2] == 256 * KIB
        assert container.log_size() == sum(sizes) + os.path.getsize(container.files.log("stderr"))
        assert container.logs().endswith("last line\n")  # the newest part is kept, in order
    finally:
        container.remove()


def test_without_rotation_the_same_output_is_all_in_one_file(labkit_home, no_leftovers):
    # the defence is max-size: one file that may hold it all takes all of it
    container = Container(ContainerSpec(command=WRITE_3_MIB, log_opt=["max-size=1g", "max-file=1"]))
    container.start(detach=True)
    try:
        wait_for_exit(container)
        assert os.path.getsize(container.files.log("stdout")) == 3072 * KIB + len("last line\n")
    finally:
        container.remove()


class CountingLog(RotatingLog):
    looked_at = 0

    def _numbered(self, number):
        CountingLog.looked_at += 1
        assert CountingLog.looked_at < 1000, "a rotation walks numbers no file has"
        return super()._numbered(number)


@pytest.mark.parametrize("max_files", [3, 10**20])
def test_a_rotation_looks_only_at_the_files_there_are_whatever_max_file(tmp_path, max_files):
    # --log-opt max-file=99999999999999999999 passed (Python's ints do not overflow), and the
    # helper's first rotation then looped over every number below it
    log = CountingLog(tmp_path / "stdout.log", max_size=10, max_files=max_files)
    CountingLog.looked_at = 0
    log.write(b"x" * 55)  # five rotations
    log.close()
    assert CountingLog.looked_at < 50
    kept = min(max_files, 6)
    assert sorted(os.listdir(tmp_path)) == ["stdout.log"] + [f"stdout.log.{n}" for n in range(1, kept)]
    assert (tmp_path / f"stdout.log.{kept - 1}").read_bytes() == b"x" * 10


def test_the_class_default_log_size_applies(labkit_home, no_leftovers, tmp_path, monkeypatch):
    defaults = tmp_path / "defaults.toml"
    defaults.write_text('[log_size]\ndefault = "128k"\n[log_files]\ndefault = 2\n')
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    container = Container(ContainerSpec(command=WRITE_3_MIB))
    container.start(detach=True)
    try:
        wait_for_exit(container)
        assert [path.name for path in container.files.logs("stdout")] == ["stdout.log.1", "stdout.log"]
        assert container.log_size() <= 2 * 128 * KIB
    finally:
        container.remove()


# --- a gzip bomb ----------------------------------------------------------------------------


COMPRESSORS = {"gzip": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
               "bzip2": lambda data: bz2.compress(data, 9),
               "xz": lzma.compress}


def gzip_bomb(path, size, compression="gzip"):
    """A rootfs tarball holding one file of `size` zero bytes (a multiple of 1 MiB), gzip-
    compressed: 1 GiB in ~1 MB (bzip2: 46 KB, xz: 290 KB). Written as compressed streams one
    after the other (valid gzip, bzip2 and xz, which readers join), so the test compresses
    1 MiB once instead of 1 GiB."""
    compress = COMPRESSORS[compression]
    member = tarfile.TarInfo("zeros")
    member.size = size
    zeros = compress(bytes(MIB))
    with open(path, "wb") as out:
        out.write(compress(member.tobuf(tarfile.USTAR_FORMAT)))
        for _ in range(size // MIB):
            out.write(zeros)
        out.write(compress(bytes(1024)))  # the end of the archive: two zero blocks
    return path


@pytest.fixture(scope="module")
def one_gib_bomb(tmp_path_factory):
    return gzip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.tar.gz", 1 << 30)


def import_limit(tmp_path, monkeypatch, size):
    defaults = tmp_path / "defaults.toml"
    defaults.write_text(f'[import_size]\ndefault = "{size}"\n')
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    return defaults


def test_a_gzip_bomb_stops_at_the_import_size_and_leaves_nothing(one_gib_bomb, labkit_home, tmp_path, monkeypatch):
    assert os.path.getsize(one_gib_bomb) < 2 * MIB
    defaults = import_limit(tmp_path, monkeypatch, "64m")
    store = Store()
    with pytest.raises(ImageError) as refused:
        import_image(one_gib_bomb, name="bomb", store=store)
    assert f"unpacks to more than 64.0 MiB, the most an import may unpack to ([import_size] in {defaults})" \
        in str(refused.value)
    assert store.layer_digests() == [] and "bomb" not in store.names()
    assert not store.tmp_root.exists() or os.listdir(store.tmp_root) == []


def oci_layout_around(layer_blob, directory):
    """An OCI image layout (a directory: no archive to list first) whose one layer is `layer_blob`."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = blob(layer_blob.read_bytes(), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = blob(json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return directory


def test_a_gzip_bomb_as_an_images_layer_stops_at_the_import_size_too(one_gib_bomb, labkit_home, tmp_path,
                                                                      monkeypatch):
    layout = oci_layout_around(one_gib_bomb, tmp_path / "layout")
    import_limit(tmp_path, monkeypatch, "64m")
    store = Store()
    with pytest.raises(ImageError, match="unpacks to more than 64.0 MiB"):
        import_image(layout, name="bomb", store=store)
    assert store.layer_digests() == [] and "bomb" not in store.names()
    assert not store.tmp_root.exists() or os.listdir(store.tmp_root) == []


def test_under_a_higher_limit_the_same_kind_of_archive_unpacks_whole(labkit_home, tmp_path, monkeypatch):
    # the defence is the limit: a smaller bomb, allowed, is unpacked to its full size
    bomb = gzip_bomb(tmp_path / "small.tar.gz", 24 * MIB)
    import_limit(tmp_path, monkeypatch, "32m")
    image = import_image(bomb, name="small", store=Store())
    assert os.path.getsize(image.layer_dirs[0] / "zeros") == 24 * MIB
    import_limit(tmp_path, monkeypatch, "16m")
    with pytest.raises(ImageError, match="unpacks to more than 16.0 MiB"):
        import_image(bomb, name="small2", store=Store())


@pytest.mark.parametrize("compression", ["bzip2", "xz"])
def test_a_bzip2_or_xz_bomb_stops_at_the_import_size_with_one_line_and_leaves_nothing(compression, labkit_home,
                                                                                      tmp_path, monkeypatch):
    # Listing a compressed archive (to see whether it is an OCI layout or a docker save
    # archive) inflated bzip2 and xz without a limit: 18 s of CPU for this 1 GiB, without end
    # for a larger one, before an unrelated "not a complete layer archive".
    bomb = gzip_bomb(tmp_path / f"bomb.tar.{compression}", 1 << 30, compression)
    assert os.path.getsize(bomb) < MIB
    defaults = import_limit(tmp_path, monkeypatch, "64m")
    refused = subprocess.run([sys.executable, "-m", "labkit", "image", "import", "--name", "bomb", str(bomb)],
                             capture_output=True, text=True)
    assert refused.returncode == 125
    assert refused.stderr.splitlines() == [
        f"labkit: {bomb} unpacks to more than 64.0 MiB, the most an import may unpack to ([import_size] in "
        f"{defaults}); nothing was imported. A compressed archive this large inflated is likely a decompression "
        "bomb; if it is not, raise the limit there"]
    store = Store()
    assert store.layer_digests() == [] and "bomb" not in store.names()
    assert not store.tmp_root.exists() or os.listdir(store.tmp_root) == []


@pytest.mark.parametrize("compression", ["bzip2", "xz"])
def test_under_a_higher_limit_a_bzip2_or_xz_rootfs_unpacks_whole(compression, labkit_home, tmp_path, monkeypatch):
    bomb = gzip_bomb(tmp_path / f"small.tar.{compression}", 24 * MIB, compression)
    import_limit(tmp_path, monkeypatch, "32m")
    image = import_image(bomb, name="small", store=Store())
    assert os.path.getsize(image.layer_dirs[0] / "zeros") == 24 * MIB


def many_entries(path, count, first=()):
    """An xz tar of `count` empty files (after the files in `first`): ~100 bytes each compressed."""
    with tarfile.open(path, "w:xz", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in first:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        for index in range(count):
            archive.addfile(tarfile.TarInfo(f"d{index // 1000}/f{index}"))
    return path


def test_an_archive_of_more_entries_than_the_class_allows_is_refused_and_leaves_nothing(labkit_home, tmp_path,
                                                                                        monkeypatch):
    # 12,000 entries: past what a listing reads (an image archive holds a few per layer),
    # so the rootfs is unpacked, and stops at the class's entry count
    archive = many_entries(tmp_path / "many.tar.xz", 12_000)
    defaults = tmp_path / "defaults.toml"
    defaults.write_text("[import_files]\ndefault = 11000\n")
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    store = Store()
    with pytest.raises(ImageError) as refused:
        import_image(archive, name="many", store=store)
    assert str(refused.value) == (
        f"{archive} holds more than 11000 entries, the most an import may unpack ([import_files] in {defaults}); "
        "nothing was imported. If the image really is that large, raise the limit there")
    assert store.layer_digests() == [] and "many" not in store.names()
    assert not store.tmp_root.exists() or os.listdir(store.tmp_root) == []
    # the defence is the limit: allowed more, the same archive is unpacked whole
    defaults.write_text("[import_files]\ndefault = 13000\n")
    image = import_image(archive, name="many", store=store)
    assert sum(len(files) for _, _, files in os.walk(image.layer_dirs[0])) == 12_000


def test_an_image_archive_listing_stops_at_ten_thousand_entries(labkit_home, tmp_path):
    archive = many_entries(tmp_path / "layout.tar.xz", 10_000, first=[("oci-layout", b"{}")])
    store = Store()
    with pytest.raises(ImageError) as refused:
        import_image(archive, name="layout", store=store)
    assert str(refused.value) == (
        f"{archive} holds more than 10000 entries, and an image archive holds a few per layer (at most 500 "
        "layers); it is not an image labkit can load")
    assert store.layer_digests() == [] and not os.listdir(store.tmp_root)


# --- ADD of an archive in a build: the same limits ------------------------------------------


def build_with_add(context, archive_name):
    """`labkit build` of a recipe whose line 3 ADDs `archive_name` from `context`."""
    (context / "Dockerfile").write_text(f"FROM busybox\nENV WHO=student\nADD {archive_name} /data/\n")
    return subprocess.run([sys.executable, "-m", "labkit", "build", "-t", "added", str(context)],
                          capture_output=True, text=True)


def store_contents(store):
    """What a refused build must leave as it found: images, layers, blobs, build cache, scratch."""
    def listing(directory):
        return sorted(os.listdir(directory)) if directory.exists() else []

    return (sorted(store.names()), store.layer_digests(), listing(store.blobs_root), listing(store.cache_root),
            listing(store.tmp_root))


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz", "zstd"])
def test_a_bomb_added_in_a_build_stops_at_the_import_size_naming_its_line(compression, labkit_home, tmp_path,
                                                                           monkeypatch):
    # ADD unpacked a local archive with no limit at all: a 24 MiB bomb here, 1 GiB in 1 MB
    # as well (gzip_bomb), into the store's scratch and then into a layer, twice the disk
    if compression == "zstd":
        zstandard = pytest.importorskip("zstandard", reason="zstd archives need the optional zstandard module")
        COMPRESSORS["zstd"] = zstandard.ZstdCompressor(level=19).compress
    context = tmp_path / "context"
    context.mkdir()
    name = f"bomb.tar.{ {'gzip': 'gz', 'bzip2': 'bz2', 'xz': 'xz', 'zstd': 'zst'}[compression]}"
    bomb = gzip_bomb(context / name, 24 * MIB, compression)
    assert os.path.getsize(bomb) < 256 * KIB
    defaults = import_limit(tmp_path, monkeypatch, "16m")
    store = Store()
    get_image("busybox", store)
    before = store_contents(store)
    refused = build_with_add(context, name)
    assert refused.returncode == 125, refused.stderr
    assert refused.stderr.splitlines() == [
        f"labkit: recipe line 3: ADD {name} unpacks to more than 16.0 MiB, the most the archives ADD unpacks in "
        f"one build may unpack to ([import_size] in {defaults}); nothing was built. A compressed archive this large "
        "inflated is likely a decompression bomb; if it is not, raise the limit there"]
    assert store_contents(store) == before
    # the defence is the limit: allowed more, the same archive is added whole
    import_limit(tmp_path, monkeypatch, "32m")
    built = build_with_add(context, name)
    assert built.returncode == 0, built.stderr
    image = get_image("added", store)
    assert os.path.getsize(image.layer_dirs[-1] / "data" / "zeros") == 24 * MIB
    assert not os.listdir(store.tmp_root)


def test_an_added_archive_of_more_entries_than_the_class_allows_is_refused_naming_its_line(labkit_home, tmp_path,
                                                                                        monkeypatch):
    context = tmp_path / "context"
    context.mkdir()
    many_entries(context / "many.tar.xz", 3_000)
    defaults = tmp_path / "defaults.toml"
    defaults.write_text("[import_files]\ndefault = 2500\n")
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    store = Store()
    get_image("busybox", store)
    before = store_contents(store)
    refused = build_with_add(context, "many.tar.xz")
    assert refused.returncode == 125, refused.stderr
    assert refused.stderr.splitlines() == [
        f"labkit: recipe line 3: ADD many.tar.xz holds more than 2500 entries, the most the archives ADD unpacks in "
        f"one build may unpack ([import_files] in {defaults}); nothing was built. If the image really is that large, "
        "raise the limit there"]
    assert store_contents(store) == before
    defaults.write_text("[import_files]\ndefault = 3500\n")
    built = build_with_add(context, "many.tar.xz")
    assert built.returncode == 0, built.stderr
    added = get_image("added", store).layer_dirs[-1] / "data"
    assert sum(len(files) for _, _, files in os.walk(added)) == 3_000


# --- what a notebook cell shows -------------------------------------------------------------


def test_a_cells_output_is_cut_at_the_limit_with_a_note(kernel):
    size = 8 * MIB
    reply = kernel.ok(f"%%container\nhead -c {size} /dev/zero | tr '\\0' a", timeout=120)
    assert reply.stdout == "a" * CELL_OUTPUT_LIMIT
    cut = size - CELL_OUTPUT_LIMIT
    assert f"[labkit: output cut: {cut:,} more characters not shown (a cell shows the first " \
           f"{CELL_OUTPUT_LIMIT:,})" in reply.stderr
    assert len(reply.stderr) < 400


def test_output_under_the_limit_is_shown_whole_without_a_note(kernel):
    reply = kernel.ok("%%container\nhead -c 1000 /dev/zero | tr '\\0' a")
    assert reply.stdout == "a" * 1000 and reply.stderr == ""


def test_container_logs_in_a_cell_shows_the_newest_part_and_says_what_it_cut(kernel):
    kernel.ok("%container run -d --name chatty -- sh -c \"head -c 3145728 /dev/zero | tr '\\\\0' b; echo; echo newest\"")
    try:
        kernel.ok("import time\nfrom labkit.runtime import get\n"
                  "while get('chatty').poll() == 'running': time.sleep(0.05)")
        reply = kernel.ok("%container logs chatty")
        assert len(reply.stdout) == CELL_OUTPUT_LIMIT and reply.stdout.endswith("b\nnewest\n")
        assert f"[labkit: the first {3145728 + 8 - CELL_OUTPUT_LIMIT:,} bytes of the logs are not shown" in reply.stderr
    finally:
        kernel.ok("%container rm chatty")


def test_a_log_pipe_closed_earlier_in_the_same_round_of_events_is_skipped(tmp_path):
    """The helper handles one select() round's events in turn: a `remove` request can close a
    detached container's log pipes before their own 'readable' event of that round is
    handled. That stale event must do nothing (it raised EBADF and took the helper down:
    seen as 'the labkit helper process is gone' on removing a --userns container)."""
    import selectors

    from labkit.runtime.helper.logs import LogPipes

    selector = selectors.DefaultSelector()
    pipes = LogPipes(selector)
    writers = pipes.make("c1", {"stdout": tmp_path / "stdout.log"}, max_size=1 << 20, max_files=1)
    os.write(writers["stdout"], b"last words\n")
    os.close(writers["stdout"])
    stale = [key for key, _ in selector.select(timeout=1)]    # the pipe is readable in this round
    assert len(stale) == 1
    pipes.close("c1")                                          # a request handled first closes it
    assert stale[0].data(stale[0].fileobj) is False            # then its own event comes: nothing
    selector.close()
