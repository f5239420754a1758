"""Which overlay a rootless container's root gets (labkit/images/rootless_overlay.py), as
pure logic: what LABKIT_OVERLAY asks and what the host can are given, not probed. The
probe itself, and both overlays for real, are in tests/test_rootless_fuse_overlay.py.
Also how commit reads fuse-overlayfs's own marks in a read-write layer."""

import os

import pytest

from labkit.errors import ConfigError, HostError
from labkit.images import rootless_overlay
from labkit.images.commit import _Sorted
from labkit.images.rootless_overlay import FUSE, KERNEL, asked_for, decide

WORKS, NOT_ASKED = (lambda: None), (lambda: pytest.fail("the choice did not depend on this"))
KERNEL_REFUSES = lambda: "mount: Operation not permitted"   # noqa: E731
NO_FUSE = lambda: "fuse-overlayfs is not installed (Debian: apt-get install fuse-overlayfs)"   # noqa: E731


def test_the_kernel_overlay_where_it_mounts_in_a_user_namespace():
    assert decide("auto", WORKS, NOT_ASKED).kind == KERNEL


def test_fuse_overlayfs_where_the_kernel_refuses():
    choice = decide("auto", KERNEL_REFUSES, WORKS)
    assert choice.kind == FUSE and "Operation not permitted" in choice.why


def test_neither_is_an_error_naming_both_fixes():
    with pytest.raises(HostError) as raised:
        decide("auto", KERNEL_REFUSES, NO_FUSE)
    assert "apt-get install fuse-overlayfs" in str(raised.value) and "5.11" in str(raised.value)


def test_fuse_asked_for_takes_no_probe_and_says_what_is_missing():
    assert decide(FUSE, NOT_ASKED, WORKS).kind == FUSE
    with pytest.raises(HostError, match="LABKIT_OVERLAY=fuse, but fuse-overlayfs is not installed"):
        decide(FUSE, NOT_ASKED, NO_FUSE)


def test_kernel_asked_for_takes_no_probe():
    assert decide(KERNEL, NOT_ASKED, NOT_ASKED).kind == KERNEL


def test_the_setting_is_read_and_a_bad_one_named(monkeypatch):
    monkeypatch.delenv("LABKIT_OVERLAY", raising=False)
    assert asked_for() == "auto"
    monkeypatch.setenv("LABKIT_OVERLAY", " Fuse ")
    assert asked_for() == FUSE
    monkeypatch.setenv("LABKIT_OVERLAY", "fuse-overlayfs")
    with pytest.raises(ConfigError, match="LABKIT_OVERLAY='fuse-overlayfs': give auto"):
        asked_for()


def test_the_choice_is_made_once_per_process(monkeypatch):
    probes = []
    monkeypatch.setattr(rootless_overlay, "_chosen", None)
    monkeypatch.setattr(rootless_overlay, "remembered_refusal", lambda directory: probes.append(directory))
    monkeypatch.delenv("LABKIT_OVERLAY", raising=False)
    assert rootless_overlay.rootless_overlay("/somewhere").kind == KERNEL
    assert rootless_overlay.rootless_overlay("/somewhere").kind == KERNEL
    assert probes == ["/somewhere"]


def test_the_kernels_answer_is_kept_for_this_boot_only(monkeypatch, tmp_path):
    probes = []
    monkeypatch.setattr(rootless_overlay, "kernel_overlay_refusal",
                        lambda directory=None: probes.append(directory) or "mount: Operation not permitted")
    assert rootless_overlay.remembered_refusal(tmp_path) == "mount: Operation not permitted"
    assert rootless_overlay.remembered_refusal(tmp_path) == "mount: Operation not permitted"
    assert probes == [tmp_path]
    kept = tmp_path / rootless_overlay.PROBE_FILE
    kept.write_text("another-boot 4.19.0\n")
    assert rootless_overlay.remembered_refusal(tmp_path) == "mount: Operation not permitted"
    assert probes == [tmp_path, tmp_path]
    assert sorted(os.listdir(tmp_path)) == [rootless_overlay.PROBE_FILE]


def _fuse_upper(tmp_path):
    """An upper in the form fuse-overlayfs writes without mknod: `/etc/passwd` deleted (a
    `.wh.passwd` file), `/dir` made opaque (its xattr and `.wh..wh..opq` marker) holding `c`."""
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / ".wh.passwd").touch()
    (upper / "dir").mkdir()
    (upper / "dir" / "c").write_text("c")
    (upper / "dir" / ".wh..wh..opq").touch()
    try:
        os.setxattr(upper / "dir", "user.fuseoverlayfs.opaque", b"y")
    except OSError as error:
        pytest.skip(f"this filesystem takes no user xattrs: {error}")
    return upper


def test_commit_reads_fuse_overlayfs_marks(tmp_path):
    """An upper in the form fuse-overlayfs writes without mknod: `.wh.NAME` files for
    deletions, an opaque directory with its xattr and marker file. Commit keeps the
    deletion and the opacity in the OCI form, and none of fuse-overlayfs's own names."""
    upper = _fuse_upper(tmp_path)
    names = sorted((entry.name, entry.kind) for entry in _Sorted(str(upper)).kept)
    assert names == [("dir", "dir"), ("dir/.wh..wh..opq", "opaque"), ("dir/c", "file"),
                     ("etc", "dir"), ("etc/.wh.passwd", "whiteout")]


def test_diff_reads_fuse_overlayfs_marks(tmp_path):
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (lower / "dir").mkdir()
    (lower / "dir" / "a").write_text("a")
    upper = _fuse_upper(tmp_path)
    from labkit.images.diff import diff

    assert diff(upper, [lower]).lines() == ["C /dir", "D /dir/a", "A /dir/c", "C /etc", "D /etc/passwd"]
