"""The escape suite, part B: paths. On the real kernel, as root, one test per attempt.

Each attempt is refused by default, and (where it is safe on a shared host) shown to
work without the defence, so that no test here can pass by being unable to fail.
Attempts write only into temp dirs the test made.
"""

import glob
import os
import shutil
import stat

import pytest

from labkit.images import build, get_image
from labkit.images.store import Store
from labkit.linux import paths
from labkit.runtime import DEFAULT_NAMESPACES, Container, ContainerSpec, run
from labkit.runtime.client.build_step import run_build_step
from labkit.runtime.plan import MASKED_PATHS, READONLY_PATHS

BOTH_WAYS = pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "component-walk"])


@pytest.fixture
def rooted(tmp_path):
    """A root dir full of hostile links, and a host dir they all point at."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "secret").write_text("inside\n")
    (root / "absolute").symlink_to(host)                 # /absolute -> <host dir>, on the host
    (root / "etc" / "up").symlink_to("../../..")         # climbs above the root
    (root / "to-etc").symlink_to("/etc")                 # absolute: /etc of the root, not the host's
    (root / "loop").symlink_to("loop")
    return root, host


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def target_of(fd):
    try:
        return os.readlink(paths.fd_path(fd))
    finally:
        os.close(fd)


# --- labkit.linux.paths: both ways give the kernel's answer -----------------------------

@BOTH_WAYS
def test_absolute_links_and_dotdot_resolve_inside_the_root(rooted, use_openat2):
    root, host = rooted
    root_fd = paths.open_root(root)
    try:
        assert target_of(paths.open_in_root(root_fd, "to-etc/secret", use_openat2=use_openat2)) == f"{root}/etc/secret"
        assert target_of(paths.open_in_root(root_fd, "etc/up/etc", use_openat2=use_openat2)) == f"{root}/etc"
        assert target_of(paths.open_in_root(root_fd, "/../../../etc", use_openat2=use_openat2)) == f"{root}/etc"
        assert target_of(paths.open_in_root(root_fd, "to-etc/../../..", use_openat2=use_openat2)) == str(root)
        with pytest.raises(FileNotFoundError):  # <host>/secret read as <root><host>/secret
            paths.open_in_root(root_fd, "absolute/secret", use_openat2=use_openat2)
        with pytest.raises(OSError) as looped:
            paths.open_in_root(root_fd, "loop", use_openat2=use_openat2)
        assert looped.value.errno == 40  # ELOOP
    finally:
        os.close(root_fd)
    # Without the defence: the same name joined onto the root lands on the host.
    assert open(f"{root}/absolute/secret").read() == "host\n"


@BOTH_WAYS
def test_a_file_created_through_a_dangling_link_lands_inside_the_root(rooted, use_openat2):
    root, host = rooted
    (root / "cfg").symlink_to(host / "made")               # as /cfg -> /tmp/x in an image
    mirror = root / str(host).lstrip("/")                  # the image's own /tmp
    mirror.mkdir(parents=True)
    root_fd = paths.open_root(root)
    try:
        os.close(paths.open_in_root(root_fd, "cfg", os.O_CREAT | os.O_WRONLY, use_openat2=use_openat2))
        with pytest.raises(OSError):  # the last link kept, as O_NOFOLLOW asks
            paths.open_in_root(root_fd, "cfg", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, use_openat2=use_openat2)
    finally:
        os.close(root_fd)
    assert not (host / "made").exists()
    assert (mirror / "made").is_file() and (root / "cfg").is_symlink()


@BOTH_WAYS
def test_make_dirs_follows_links_inside_and_refuses_a_dangling_one(rooted, use_openat2):
    root, host = rooted
    root_fd = paths.open_root(root)
    try:
        assert target_of(paths.make_dirs_in_root(root_fd, "to-etc/a/b", use_openat2=use_openat2)) == f"{root}/etc/a/b"
        with pytest.raises(FileNotFoundError, match="does not exist inside the root"):
            paths.make_dirs_in_root(root_fd, "absolute/pwned", use_openat2=use_openat2)
    finally:
        os.close(root_fd)
    assert sorted(os.listdir(host)) == ["secret"]


# --- build: COPY never writes through a link an earlier source planted --------------------

@pytest.fixture
def store(labkit_home):
    return Store()


@pytest.fixture
def hostile_context(tmp_path):
    """`COPY a b /`: a/x is a link to a host dir, b/x/pwned a file; a/y a link to a host
    file, b/y a file."""
    host = tmp_path / "host-dir"
    host.mkdir(mode=0o755)
    os.chmod(host, 0o755)
    (host / "keep").write_text("host file\n")
    os.chmod(host / "keep", 0o644)
    context = tmp_path / "context"
    (context / "a").mkdir(parents=True)
    (context / "a" / "x").symlink_to(host)
    (context / "a" / "y").symlink_to(host / "keep")
    (context / "b" / "x").mkdir(parents=True)
    (context / "b" / "x" / "pwned").write_text("pwned\n")
    os.chmod(context / "b" / "x", 0o777)
    (context / "b" / "y").write_text("overwritten\n")
    os.chmod(context / "b" / "y", 0o777)
    return context, host


def host_dir_untouched(host) -> bool:
    return (sorted(os.listdir(host)) == ["keep"] and stat.S_IMODE(os.stat(host).st_mode) == 0o755
            and (host / "keep").read_text() == "host file\n" and stat.S_IMODE(os.stat(host / "keep").st_mode) == 0o644)


@pytest.mark.root
def test_copy_does_not_write_through_a_link_planted_by_an_earlier_source(store, hostile_context):
    context, host = hostile_context
    image = build("FROM busybox\nCOPY a b /\n", "copy-escape", context, store=store)
    assert host_dir_untouched(host)
    layer = store.layer_dir(image.layers[-1])
    # As Docker's untar: what b brings replaces a's links inside the layer.
    assert not (layer / "x").is_symlink() and (layer / "x" / "pwned").read_text() == "pwned\n"
    assert not (layer / "y").is_symlink() and (layer / "y").read_text() == "overwritten\n"
    assert stat.S_IMODE(os.stat(layer / "x").st_mode) == 0o777


def test_without_the_defence_the_same_copy_writes_into_the_host_dir(hostile_context, tmp_path):
    # What COPY did before: two copytree calls into one layer dir (only temp dirs are touched).
    context, host = hostile_context
    layer = tmp_path / "naive-layer"
    for source in ("a", "b"):
        shutil.copytree(context / source, layer, symlinks=True, dirs_exist_ok=True)
    assert (host / "pwned").read_text() == "pwned\n"
    assert not host_dir_untouched(host)


@pytest.mark.root
def test_copy_parents_never_take_a_host_dirs_owner_and_mode_through_a_link_below(store, tmp_path):
    host = tmp_path / "host-private"
    (host / "sub").mkdir(parents=True)
    os.chmod(host, 0o710)
    os.chmod(host / "sub", 0o701)
    (tmp_path / "f").write_text("f\n")
    image = build(f"FROM busybox\nRUN ln -s {host} /linked\nCOPY f /linked/sub/f\n", "parents", tmp_path, store=store,
                  run_step=run_build_step)
    layer = store.layer_dir(image.layers[-1])
    assert mode_of(layer / "linked") == 0o755 and mode_of(layer / "linked" / "sub") == 0o755
    # Without the defence: the same lookup, joined onto the layer below, reads the host's dirs.
    below = store.layer_dir(image.layers[-2])
    assert (mode_of(os.path.realpath(below / "linked")), mode_of(below / "linked" / "sub")) == (0o710, 0o701)


# --- run: a volume target that is a link in the image stays inside the container ----------

@pytest.fixture
def linked_image(store, tmp_path):
    """An image whose /cfg, /data and /dangling are links to host paths (/cfg ->
    <tmp>/host/x); the image has its own (empty) <tmp>/host, as busybox has /tmp."""
    host = tmp_path / "host"
    host.mkdir()
    build(f"FROM busybox\nRUN mkdir -p {host} && ln -s {host}/x /cfg && ln -s {host} /data"
          f" && ln -s {host}/nowhere /dangling\n",
          "linked", tmp_path, store=store, run_step=run_build_step)
    return host


@pytest.mark.root
def test_a_file_volume_on_a_linked_target_never_creates_the_file_on_the_host(linked_image, tmp_path, no_leftovers):
    host = linked_image
    volume = tmp_path / "settings"
    volume.write_text("from the volume\n")
    result = run(f"cat /cfg; ls {host}", image="linked", volumes=[f"{volume}:/cfg"]).check()
    assert result.stdout == "from the volume\nx\n"  # mounted on the image's own <tmp>/host/x
    assert os.listdir(host) == []


@pytest.mark.root
def test_without_the_defence_the_linked_target_is_a_host_path(linked_image, store):
    # What mount_volumes did before: rootfs + target, handed to the host's kernel.
    layer = get_image("linked", store).layer_dirs[-1]
    assert os.path.realpath(f"{layer}/cfg") == f"{linked_image}/x"


@pytest.mark.root
def test_a_directory_volume_under_a_linked_dir_is_made_inside_the_root(linked_image, tmp_path, no_leftovers):
    source = tmp_path / "source"
    source.mkdir()
    run("echo hi > /data/sub/file", image="linked", volumes=[f"{source}:/data/sub"]).check()
    assert (source / "file").read_text() == "hi\n"
    assert os.listdir(linked_image) == []  # /data -> <tmp>/host: the image's, not the host's


@pytest.mark.root
def test_a_tmpfs_under_a_linked_dir_is_made_inside_the_root(linked_image, no_leftovers):
    assert run("stat -f -c %T /data/scratch", image="linked", tmpfs=["/data/scratch"]).check().stdout == "tmpfs\n"
    assert os.listdir(linked_image) == []  # before, the mount point was made on the host


@pytest.mark.root
def test_a_directory_volume_under_a_dangling_link_is_refused_by_name(linked_image, tmp_path, no_leftovers):
    (tmp_path / "source").mkdir()
    result = run("true", image="linked", volumes=[f"{tmp_path / 'source'}:/dangling/sub"])
    assert result.exit_code == 125
    assert "volume target /dangling/sub" in result.error and "does not exist inside the root" in result.error
    assert os.listdir(linked_image) == []


# --- run: /proc, /sys and /dev of the image are ordinary directories ---------------------

def import_linked(store, tmp_path, name) -> str:
    """An image (a rootfs tarball) whose /NAME is a link that stays in the root:
    NAME -> myNAME. Returns the image's name."""
    import tarfile

    from labkit.images import import_image

    archive = tmp_path / f"{name}-linked.tar"
    with tarfile.open(archive, "w") as tar:
        directory = tarfile.TarInfo(f"my{name}")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, f"my{name}"
        tar.addfile(directory)
        tar.addfile(link)
    import_image(archive, name=f"{name}-linked", store=store)
    return f"{name}-linked"


@pytest.mark.root
@pytest.mark.parametrize("name", ["proc", "sys", "dev"])
def test_an_image_whose_kernel_directory_is_a_link_is_refused(name, store, tmp_path, no_leftovers):
    """An image with `/proc -> myproc` had proc mounted on /myproc, where no mask and no
    read-only path applies: /myproc/sys writable, the host's /proc/keys readable, and
    `core_pattern` open for writing (found by an audit). runc refuses the same."""
    image = import_linked(store, tmp_path, name)
    result = run("true", image=image)
    assert result.exit_code == 125
    assert f"the image's /{name} is a link to 'my{name}'" in result.error
    assert f"/{name} must be an ordinary directory" in result.error


@pytest.mark.root
def test_without_the_defence_proc_is_mounted_where_no_mask_looks(store, tmp_path):
    # What mount_kernel_filesystems did before: rootfs + "/proc", handed to the kernel,
    # which follows the image's link to /myproc; the masks looked under /proc.
    layer = get_image(import_linked(store, tmp_path, "proc"), store).layer_dirs[-1]
    assert os.path.realpath(f"{layer}/proc") == f"{layer}/myproc"


# --- masked and read-only kernel paths (Docker's lists) -------------------------------

# What a container finds at {path}: a directory's filesystem and entries, a file's device
# numbers and whether a first byte can be read (one byte only: /proc/kcore is huge).
SHOW_WHAT_IS_THERE = """
p={path}
if [ -d $p ]; then echo "dir $(stat -f -c %T $p) $(ls -A $p | wc -l)"
else echo "file $(stat -c %t:%T $p) $(head -c 1 $p 2>/dev/null | wc -c)"; fi
"""
# Options of the mount that holds {path}: the longest mount point above it.
MOUNT_OPTIONS = """awk -v p={path} '{{ m = $5; if ((p == m || index(p, m "/") == 1 || m == "/") && length(m) >= n) {{ n = length(m); o = $6 }} }} END {{ print o }}' /proc/self/mountinfo"""
KERNEL_SETTING = "/proc/sys/kernel/printk_ratelimit_burst"
# Not `read v`: busybox reads a byte at a time, and a sysctl file answers only the first.
WRITE_BACK = f"v=$(cat {KERNEL_SETTING}) && echo $v > {KERNEL_SETTING} && echo wrote $v"


@pytest.fixture
def without_masks(monkeypatch):
    """The defence off, and only it: the plan's lists emptied (capabilities, namespaces
    and everything else as by default)."""
    from labkit.runtime import plan

    monkeypatch.setattr(plan, "kernel_path_lists", lambda spec: {"masked_paths": [], "readonly_paths": []})


def on_this_host(paths_list):
    """A param per path this host has (a pattern: per match); what it lacks, a skip saying so."""
    params = []
    for pattern in paths_list:
        found = sorted(glob.glob(pattern))
        params += [pytest.param(path, id=path) for path in found] or [
            pytest.param(pattern, id=pattern, marks=pytest.mark.skip(reason=f"this host has no {pattern}"))]
    return params


def looks_masked(report: str) -> bool:
    """A file masked is /dev/null (char 1:3, nothing to read); a directory an empty tmpfs.
    Unmasked, a file is the kernel's (0:0 on proc or sysfs), a directory proc's or sysfs's."""
    kind, what, count = report.split()
    return (kind, what, count) == ("file", "1:3", "0") or (kind, what, count) == ("dir", "tmpfs", "0")


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.parametrize("path", on_this_host(MASKED_PATHS))
def test_a_masked_kernel_path_shows_nothing_of_the_host(path, no_leftovers):
    assert looks_masked(run(SHOW_WHAT_IS_THERE.format(path=path)).check().stdout)


@pytest.mark.root
@pytest.mark.parametrize("path", on_this_host(MASKED_PATHS))
def test_without_masks_the_same_kernel_path_is_the_hosts(path, without_masks, no_leftovers):
    assert not looks_masked(run(SHOW_WHAT_IS_THERE.format(path=path)).check().stdout)


# moby's 2025 additions (GHSA-6fw5-f8r9-fgfm): the host's interrupt counters and each
# CPU's thermal_throttle counters tell a container what the host is doing.
READ_INTERRUPTS = "wc -c < /proc/interrupts; grep -c CPU0 /proc/interrupts || true"
THERMAL_THROTTLE = "/sys/devices/system/cpu/cpu*/thermal_throttle"


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_proc_interrupts_reads_empty_in_a_container_and_from_exec(no_leftovers):
    assert run(READ_INTERRUPTS).check().stdout == "0\n0\n"
    container = Container(ContainerSpec(command="sleep 60"))
    container.start(detach=True)
    try:
        assert container.exec(READ_INTERRUPTS).check().stdout == "0\n0\n"
        assert looks_masked(container.exec(SHOW_WHAT_IS_THERE.format(path="/proc/interrupts")).check().stdout)
    finally:
        container.remove()


@pytest.mark.root
def test_privileged_proc_interrupts_shows_the_hosts_counters(no_leftovers):
    size, header = run(READ_INTERRUPTS, privileged=True).check().stdout.split()
    assert int(size) > 0 and header == "1"


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_every_cpus_thermal_throttle_is_masked_also_from_exec(no_leftovers):
    on_host = sorted(glob.glob(THERMAL_THROTTLE))
    if not on_host:
        pytest.skip(f"this host has no {THERMAL_THROTTLE} (no CPU reports thermal throttling): nothing to mask")
    show_each = "".join(SHOW_WHAT_IS_THERE.format(path=path) for path in on_host)
    assert all(looks_masked(line) for line in run(show_each).check().stdout.splitlines())
    assert not any(looks_masked(line) for line in run(show_each, privileged=True).check().stdout.splitlines())
    container = Container(ContainerSpec(command="sleep 60"))
    container.start(detach=True)
    try:
        lines = container.exec(show_each).check().stdout.splitlines()
        assert len(lines) == len(on_host) and all(looks_masked(line) for line in lines)
    finally:
        container.remove()


@pytest.mark.root
def test_a_masked_pattern_covers_every_match_in_the_containers_sys(monkeypatch, no_leftovers):
    # The thermal_throttle pattern's machinery, on a pattern every host matches (one per CPU).
    from labkit.runtime import plan

    pattern = "/sys/devices/system/cpu/cpu*/topology"
    on_host = sorted(glob.glob(pattern))
    show_each = "".join(SHOW_WHAT_IS_THERE.format(path=path) for path in on_host)
    assert on_host and not any(looks_masked(line) for line in run(show_each).check().stdout.splitlines())
    monkeypatch.setattr(plan, "kernel_path_lists", lambda spec: {"masked_paths": [pattern], "readonly_paths": []})
    lines = run(show_each).check().stdout.splitlines()
    assert len(lines) == len(on_host) and all(looks_masked(line) for line in lines)


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.parametrize("path", on_this_host(READONLY_PATHS))
def test_a_kernel_settings_path_is_mounted_read_only(path, no_leftovers):
    assert run(MOUNT_OPTIONS.format(path=path)).check().stdout.startswith("ro,")


@pytest.mark.root
@pytest.mark.parametrize("path", on_this_host(p for p in READONLY_PATHS if p != "/sys"))
def test_without_the_defence_the_kernel_settings_path_is_writable(path, without_masks, no_leftovers):
    # /sys is left out: a fresh sysfs is mounted read-only whatever the lists say.
    assert run(MOUNT_OPTIONS.format(path=path)).check().stdout.startswith("rw,")


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_container_cannot_change_a_host_kernel_setting(no_leftovers):
    result = run(WRITE_BACK)
    assert result.exit_code != 0 and "Read-only file system" in result.stderr


@pytest.mark.root
def test_without_the_defence_a_container_changes_a_host_kernel_setting(without_masks, no_leftovers):
    # Only the value already there is written back: nothing on the host changes.
    with open(KERNEL_SETTING) as setting:
        value = setting.read().strip()
    assert run(WRITE_BACK).check().stdout == f"wrote {value}\n"


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_exec_joins_a_container_whose_kernel_paths_are_protected(no_leftovers):
    container = Container(ContainerSpec(command="sleep 60"))
    container.start(detach=True)
    try:
        written = container.exec(WRITE_BACK)
        assert written.exit_code != 0 and "Read-only file system" in written.stderr
        assert looks_masked(container.exec(SHOW_WHAT_IS_THERE.format(path="/proc/keys")).check().stdout)
    finally:
        container.remove()


@pytest.mark.root
def test_a_user_namespace_container_has_the_same_masks(no_leftovers):
    userns = DEFAULT_NAMESPACES + ("user",)
    assert looks_masked(run(SHOW_WHAT_IS_THERE.format(path="/proc/keys"), namespaces=userns).check().stdout)
    assert run(MOUNT_OPTIONS.format(path="/proc/sys"), namespaces=userns).check().stdout.startswith("ro,")


@pytest.mark.root
@pytest.mark.parametrize("masked", [True, False], ids=["default", "without-the-defence"])
def test_the_hosts_sys_borrowed_by_a_user_namespace_is_read_only(masked, request, no_leftovers):
    # With --net host a user namespace may not mount a sysfs of its own: it binds the host's.
    if not masked:
        request.getfixturevalue("without_masks")
    options = run(MOUNT_OPTIONS.format(path="/sys"), namespaces=DEFAULT_NAMESPACES + ("user",), network="host")
    assert options.check().stdout.startswith("ro," if masked else "rw,")


@pytest.mark.root
@pytest.mark.skipif(not hasattr(ContainerSpec(), "privileged"),
                    reason="ContainerSpec.privileged (--privileged, issue 10 part A) is not in this tree")
def test_privileged_turns_the_masks_off(no_leftovers):
    assert not looks_masked(run(SHOW_WHAT_IS_THERE.format(path="/proc/keys"), privileged=True).check().stdout)
    assert run(MOUNT_OPTIONS.format(path="/proc/sys"), privileged=True).check().stdout.startswith("rw,")
