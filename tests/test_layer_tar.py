"""The canonical tar's headers, built without tarfile's general path, are byte for byte
what tarfile writes (pure logic: no root needed)."""

import tarfile

import pytest

from labkit.images.layers import header_block


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
    _info("etc/link", tarfile.SYMTYPE, mode=0o777, linkname="../usr/lib/x" * 8),
    _info("a/hard", tarfile.LNKTYPE, linkname="a-b", mode=0o644),
    _info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    _info("dev/vda", tarfile.BLKTYPE, mode=0o660, devmajor=253, devminor=0, gid=6),
    _info("fifo", tarfile.FIFOTYPE, mode=0o600),
    _info(".wh.gone", mode=0o600),
    _info("x" * 100, size=8 ** 11 - 1, uid=8 ** 7 - 1),
    # each of these needs a pax record: the general path must take them
    _info("x" * 101),
    _info("caf\u00e9"),
    _info("l", tarfile.SYMTYPE, linkname="y" * 101),
    _info("big", size=8 ** 11),
    _info("uid", uid=8 ** 7),
    _info("surrogate\udcff"),
]


@pytest.mark.parametrize("info", CASES, ids=[case.name[:20] for case in CASES])
def test_header_is_what_tarfile_writes(info):
    assert header_block(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
