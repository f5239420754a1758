"""The canonical tar, built without tarfile's general path, is byte for byte what tarfile
writes: each header, and whole layers against tests/tar_reference.py (no root needed)."""

import os
import shutil
import tarfile

import pytest
from tar_reference import reference_tar

from labkit.images.layers import BLOCK_SIZE, canonical_entries, header_block, tar_blocks, write_canonical_tar


def _info(name, kind=tarfile.REGTYPE, **fields):
    info = tarfile.TarInfo(name)
    info.mtime, info.uname, info.gname, info.type = 0, "", "", kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


CASES = [
    _info("a"),
    _info("bin/busybox", mode=0o4755, uid=0, gid=0, size=1234567),
    _info("dir/", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000),
    _info("dir", tarfile.DIRTYPE, mode=0o755),            # tarfile adds the slash
    _info("d" * 99, tarfile.DIRTYPE, mode=0o700),         # ... which still fits
    _info("etc/link", tarfile.SYMTYPE, mode=0o777, linkname="../usr/lib/x" * 8),
    _info("a/hard", tarfile.LNKTYPE, linkname="a-b", mode=0o644),
    _info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    _info("dev/vda", tarfile.BLKTYPE, mode=0o660, devmajor=253, devminor=0, gid=6),
    _info("fifo", tarfile.FIFOTYPE, mode=0o600),
    _info(".wh.gone", mode=0o600),
    _info("x" * 100, size=8 ** 11 - 1, uid=8 ** 7 - 1),
    # each of these needs a pax record: the general path must take them
    _info("x" * 101),
    _info("d" * 100, tarfile.DIRTYPE, mode=0o700),        # ... which no longer fits
    _info("caf\u00e9"),
    _info("l", tarfile.SYMTYPE, linkname="y" * 101),
    _info("big", size=8 ** 11),
    _info("uid", uid=8 ** 7),
    _info("surrogate\udcff"),
]


@pytest.mark.parametrize("info", CASES, ids=[case.name[:20] for case in CASES])
def test_header_is_what_tarfile_writes(info):
    assert header_block(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _layer(root):
    """Every kind of entry an unprivileged user can make, with names whose byte order
    differs from a walk's, contents that end on and off 512-byte boundaries, and one
    file larger than a block."""
    (root / "a" / "deep").mkdir(parents=True)
    (root / "a-b").write_text("dash sorts before slash\n")
    (root / "a" / "deep" / "big").write_bytes(os.urandom(BLOCK_SIZE * 2 + 1234))
    (root / "a" / "empty").write_bytes(b"")
    (root / "a" / "exact").write_bytes(os.urandom(512))
    os.link(root / "a-b", root / "a" / "hard")
    os.symlink("../a-b", root / "a" / "link")
    os.mkfifo(root / "a" / "fifo")
    (root / ("long-" * 30)).write_text("a pax path record\n")
    (root / "caf\u00e9").write_text("non-ASCII name\n")
    (root / ("d" * 100)).mkdir()
    for index in range(300):
        (root / "small" / f"{index // 50}").mkdir(parents=True, exist_ok=True)
        (root / "small" / f"{index // 50}" / f"{index}").write_bytes(os.urandom(index * 37))
    os.chmod(root / "a" / "exact", 0o4755)
    (root / "ro").mkdir()
    (root / "ro" / "kept").write_text("in a read-only dir\n")
    os.chmod(root / "ro", 0o555)


def test_canonical_tar_is_byte_for_byte_the_reference_tarfile_writes(tmp_path):
    _layer(tmp_path / "layer")
    with open(tmp_path / "layer.tar", "wb") as out:
        written = write_canonical_tar(tmp_path / "layer", out)
    ours = (tmp_path / "layer.tar").read_bytes()
    assert written == len(ours)
    assert ours == reference_tar(tmp_path / "layer")

@pytest.mark.parametrize("size", [512, 1536, 1000, 4096], ids=lambda size: f"{size}B-blocks")
def test_the_tar_is_the_same_whatever_the_block_size(tmp_path, size):
    """Small blocks put headers (also multi-block pax ones), contents and padding across
    block boundaries; every block must carry the bytes, and the pieces must name which
    entry's content they are, as the kept copy of a commit reads them."""
    _layer(tmp_path / "layer")
    entries = canonical_entries(tmp_path / "layer")
    stream, contents, current = bytearray(), {}, None
    for block in tar_blocks(entries, lambda: bytearray(size)):
        assert 0 < len(block.data) <= size
        stream += block.data
        for entry, _info, content in block.pieces:
            if entry is not None:
                current = entry.name
            if content is not None:
                contents[current] = contents.get(current, b"") + bytes(content)
    assert bytes(stream) == reference_tar(tmp_path / "layer")
    assert contents["a/deep/big"] == (tmp_path / "layer" / "a" / "deep" / "big").read_bytes()
    assert contents["small/5/299"] == (tmp_path / "layer" / "small" / "5" / "299").read_bytes()
    assert "a/hard" not in contents  # a hard link's content is its first name's


# --- a layer read while its container runs: what the walk saw is what is read -------------

def _upper_and_host(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("the host's secret\n")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "secret").write_text("the container's own\n")
    return upper, host


def test_a_directory_swapped_for_a_link_to_the_host_after_the_walk_is_refused_not_read(tmp_path):
    from labkit.errors import ImageError
    from labkit.images.layers import canonical_entries, tar_digest

    upper, host = _upper_and_host(tmp_path)
    entries = canonical_entries(upper)
    # The container, still running during `commit`, swaps its directory for a link.
    shutil.rmtree(upper / "etc")
    (upper / "etc").symlink_to(host)
    assert (upper / "etc" / "secret").read_text() == "the host's secret\n"   # what a read by path gets
    with pytest.raises(ImageError, match="changed while it was being stored"):
        tar_digest(entries)


def test_a_file_swapped_for_a_link_after_the_walk_is_refused_not_read(tmp_path):
    from labkit.errors import ImageError
    from labkit.images.layers import canonical_entries, tar_digest

    upper, host = _upper_and_host(tmp_path)
    entries = canonical_entries(upper)
    (upper / "etc" / "secret").unlink()
    (upper / "etc" / "secret").symlink_to(host / "secret")
    assert (upper / "etc" / "secret").read_text() == "the host's secret\n"
    with pytest.raises(ImageError, match="changed while it was being stored"):
        tar_digest(entries)


def test_the_walk_never_lists_a_directory_that_became_a_link(tmp_path):
    from labkit.errors import ImageError
    from labkit.images.layers import open_as_seen

    upper, host = _upper_and_host(tmp_path)
    seen = os.stat(upper / "etc", follow_symlinks=False)
    shutil.rmtree(upper / "etc")
    (upper / "etc").symlink_to(host)
    assert os.listdir(upper / "etc") == ["secret"]   # a listing by path shows the host's directory
    with pytest.raises(ImageError, match="changed while it was being stored"):
        open_as_seen(str(upper / "etc"), seen, os.O_DIRECTORY)
