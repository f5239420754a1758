"""Images on the real kernel: layer store, canonical digests, overlay mounts (also with
128 layers), commit with whiteouts and opaque dirs, build with its cache, prune.

Overlay mounts happen inside `unshare -m` subprocesses (or containers of the runtime),
so nothing is ever mounted in the test process's own mount namespace.
"""

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest
from tar_reference import reference_digest

from labkit.errors import ImageError, ImageNotFound
from labkit.images import commit, diff, get_image
from labkit.images.builder import build as build_with_runner
from labkit.images.layers import canonical_entries, layer_digest, tree_size, write_canonical_tar
from labkit.images.overlay import MAX_OPTIONS, overlay_options
from labkit.images.store import Store
from labkit.images.whiteouts import is_opaque, is_whiteout
from labkit.runtime.client.build_step import run_build_step
from labkit.runtime.client.state import layers_in_use


def build(*arguments, **options):
    """A build as the front ends run one: RUN steps by the runtime's runner."""
    return build_with_runner(*arguments, run_step=run_build_step, **options)


def _runtime():
    try:
        from labkit.runtime import Container, ContainerSpec
    except (ImportError, AttributeError):
        return None
    return Container, ContainerSpec


needs_runtime = pytest.mark.skipif(_runtime() is None, reason="labkit.runtime.Container has not landed yet")


@pytest.fixture
def store(labkit_home):
    return Store()


def in_private_mount_namespace(code: str) -> subprocess.CompletedProcess:
    """Run Python `code` in a new, private mount namespace; its mounts die with it."""
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def change_through_overlay(image, container_dir, shell: str) -> None:
    """Mount `image` with an upper dir in `container_dir`, run `shell` in the union."""
    for name in ("upper", "work", "merged"):
        (container_dir / name).mkdir(parents=True)
    lowers = [str(d) for d in reversed(image.layer_dirs)]
    in_private_mount_namespace(f"""
        import subprocess
        from labkit.images.overlay import mount_overlay
        mount_overlay({str(container_dir / 'merged')!r}, {lowers!r}, {str(container_dir / 'upper')!r},
                      {str(container_dir / 'work')!r})
        subprocess.run(["sh", "-c", {shell!r}], cwd={str(container_dir / 'merged')!r}, check=True)
    """)


def listing_through_overlay(image, tmp_path, relative: str) -> list:
    """Names in `relative` of the image's merged view (read-only overlay)."""
    scratch = tmp_path / "view"
    for name in ("upper", "work", "merged"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    lowers = [str(d) for d in reversed(image.layer_dirs)]
    result = in_private_mount_namespace(f"""
        import json, os
        from labkit.images.overlay import mount_overlay
        mount_overlay({str(scratch / 'merged')!r}, {lowers!r}, {str(scratch / 'upper')!r}, {str(scratch / 'work')!r})
        print(json.dumps(sorted(os.listdir(os.path.join({str(scratch / 'merged')!r}, {relative!r})))))
    """)
    return json.loads(result.stdout)


def tar_names(layer_dir) -> list:
    return [entry.name for entry in canonical_entries(layer_dir)]


# --- canonical layers ----------------------------------------------------------------------

def make_tree(root, order):
    root.mkdir()
    for name in order:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"content of {name}")
            os.chmod(path, 0o644)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o755)


def test_digest_depends_on_content_not_on_creation_order_or_times(tmp_path):
    names = ["b/z", "a-b", "a/b/c", "a/a", "a.txt", "b/"]
    make_tree(tmp_path / "one", names)
    make_tree(tmp_path / "two", list(reversed(names)))
    os.utime(tmp_path / "two" / "a.txt", (12345, 12345))
    assert layer_digest(tmp_path / "one") == layer_digest(tmp_path / "two")
    os.chmod(tmp_path / "two" / "a.txt", 0o600)
    assert layer_digest(tmp_path / "one") != layer_digest(tmp_path / "two")


def test_canonical_tar_lists_entries_by_name_parents_first_with_no_times_or_owner_names(tmp_path):
    make_tree(tmp_path / "layer", ["b/z", "a-b", "a/b/c", "a/a"])
    with open(tmp_path / "layer.tar", "wb") as out:
        write_canonical_tar(tmp_path / "layer", out)
    with tarfile.open(tmp_path / "layer.tar") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=os.fsencode)
    assert names == ["a", "a-b", "a/a", "a/b", "a/b/c", "b", "b/z"]
    assert {(m.mtime, m.uname, m.gname) for m in members} == {(0, "", "")}


@pytest.mark.root
def test_whiteouts_and_opaque_dirs_are_written_in_oci_form(tmp_path):
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    os.mknod(layer / "gone", 0o020000, os.makedev(0, 0))
    os.setxattr(layer / "etc", "trusted.overlay.opaque", b"y")
    assert tar_names(layer) == [".wh.gone", "etc", "etc/.wh..wh..opq"]


# --- the store -------------------------------------------------------------------------------

def test_busybox_base_image_has_the_same_digest_every_time(store, tmp_path, monkeypatch):
    first = get_image("busybox", store).layers
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "elsewhere"))
    assert get_image("busybox", Store()).layers == first


def test_layers_shared_between_images_are_stored_once(store, tmp_path):
    base = get_image("busybox", store)
    for name in ("one", "two"):
        upper = tmp_path / name
        upper.mkdir()
        (upper / "file").write_text(name)
        commit(upper, base, name, store=store)
    assert len(store.layer_digests()) == 3
    assert store.image("one").layers[0] == store.image("two").layers[0] == base.layers[0]


def test_unknown_image_is_a_clear_error(store):
    with pytest.raises(ImageNotFound, match="no image named 'nope'.*busybox"):
        get_image("nope", store)


def test_prune_keeps_layers_used_by_images_and_containers(store, tmp_path, labkit_home):
    base = get_image("busybox", store)
    digests = {}
    for name in ("kept", "running", "dropped"):
        upper = tmp_path / name
        upper.mkdir()
        (upper / name).write_text(name)
        digests[name] = commit(upper, base, name, store=store).layers[-1]
    container = labkit_home / "containers" / "0123456789abcdef"
    container.mkdir(parents=True)
    (container / "state.json").write_text(json.dumps({"name": "c", "image_layers": store.image("running").layers}))
    os.unlink(store.images_root / "running.json")  # the image is gone, the container still runs on it
    os.unlink(store.images_root / "dropped.json")
    removed = store.prune(layers_used_by_containers=layers_in_use)
    assert removed == [digests["dropped"]]
    for name in ("kept", "running"):
        assert store.has_layer(digests[name])
    assert store.has_layer(base.layers[0])


def test_rm_removes_only_layers_no_other_image_uses(store, tmp_path):
    base = get_image("busybox", store)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "x").write_text("x")
    mine = commit(upper, base, "mine", store=store)
    assert store.remove_image("mine", layers_used_by_containers=layers_in_use) == [mine.layers[-1]]
    assert store.has_layer(base.layers[0]) and "mine" not in store.names()


def test_scratch_dirs_of_dead_processes_are_swept(store):
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = store.tmp_root / f"scratch-{finished.pid}-leftover"
    (stale / "layer").mkdir(parents=True)
    store.scratch_dir()
    assert not stale.exists()


# --- overlay ----------------------------------------------------------------------------------

@pytest.mark.root
def test_image_with_128_layers_mounts_and_reads_its_bottom_layer(store, tmp_path):
    layers = []
    for index in range(128):
        with store.scratch() as scratch:
            layer = scratch / "layer"
            layer.mkdir()
            (layer / ("bottom.txt" if index == 0 else f"layer-{index}")).write_text(f"layer {index}\n")
            layers.append(store.add_layer(layer))
    image = store.save_image("tall", layers, get_image("busybox", store).config, [])
    lowers = [str(d) for d in reversed(image.layer_dirs)]
    assert len(overlay_options(lowers, tmp_path / "upper", tmp_path / "work")) > MAX_OPTIONS
    for name in ("upper", "work", "merged"):
        (tmp_path / name).mkdir()
    result = in_private_mount_namespace(f"""
        from labkit.images.overlay import mount_overlay
        mount_overlay({str(tmp_path / 'merged')!r}, {lowers!r}, {str(tmp_path / 'upper')!r}, {str(tmp_path / 'work')!r})
        print(open({str(tmp_path / 'merged' / 'bottom.txt')!r}).read(), end="")
    """)
    assert result.stdout == "layer 0\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lowers-")] == []


# --- commit and diff ----------------------------------------------------------------------------

@pytest.mark.root
def test_file_deleted_in_a_container_is_gone_from_the_committed_image_only(store, tmp_path):
    base = get_image("busybox", store)
    change_through_overlay(base, tmp_path / "c", "rm bin/ls && echo hi > hello")
    new = commit(tmp_path / "c" / "upper", base, "without-ls", store=store)
    assert ".wh.ls" in [n.rsplit("/", 1)[-1] for n in tar_names(new.layer_dirs[-1])]
    assert "ls" not in listing_through_overlay(new, tmp_path / "new", "bin")
    assert "ls" in listing_through_overlay(base, tmp_path / "old", "bin")
    assert diff(new.layers[-1], base).lines() == ["C /bin", "D /bin/ls", "A /hello"]


@pytest.mark.root
def test_directory_replaced_in_a_container_is_opaque_in_the_committed_layer(store, tmp_path):
    base = get_image("busybox", store)
    change_through_overlay(base, tmp_path / "c", "rm -r etc && mkdir etc && echo new > etc/motd")
    new = commit(tmp_path / "c" / "upper", base, "fresh-etc", store=store)
    assert is_opaque(new.layer_dirs[-1] / "etc")
    assert "etc/.wh..wh..opq" in tar_names(new.layer_dirs[-1])
    assert listing_through_overlay(new, tmp_path / "new", "etc") == ["motd"]
    assert "passwd" in listing_through_overlay(base, tmp_path / "old", "etc")


@pytest.mark.root
def test_init_layer_files_are_never_committed(store, tmp_path):
    base = get_image("busybox", store)
    change_through_overlay(base, tmp_path / "c",
                           "echo h > etc/hostname && echo 1.2.3.4 x >> etc/hosts && echo nameserver 9.9.9.9 > etc/resolv.conf")
    new = commit(tmp_path / "c" / "upper", base, "init-only", store=store)
    assert tar_names(new.layer_dirs[-1]) == []
    change_through_overlay(base, tmp_path / "d", "echo h > etc/hostname && echo kept > etc/motd && echo x > etc/hosts")
    other = commit(tmp_path / "d" / "upper", base, "with-motd", store=store)
    assert tar_names(other.layer_dirs[-1]) == ["etc", "etc/motd"]


@pytest.mark.root
def test_commit_keeps_the_whiteout_as_a_character_device_on_disk(store, tmp_path):
    base = get_image("busybox", store)
    change_through_overlay(base, tmp_path / "c", "rm bin/ls")
    new = commit(tmp_path / "c" / "upper", base, "x", store=store)
    assert is_whiteout(os.lstat(new.layer_dirs[-1] / "bin" / "ls"))


def _tricky_upper(upper):
    """An upper dir whose canonical order differs from a directory walk's ('a-b' sorts
    before 'a/…'), with every kind of entry a commit keeps or drops."""
    from labkit.images.whiteouts import make_opaque, make_whiteout

    (upper / "a" / "deep").mkdir(parents=True)
    (upper / "a" / "deep" / "f").write_bytes(os.urandom(3 << 20))
    (upper / "a-b").write_text("dash sorts before slash\n")
    os.link(upper / "a-b", upper / "a" / "hard")
    os.symlink("../a-b", upper / "a" / "link")
    os.mkfifo(upper / "a" / "fifo")
    make_whiteout(upper / "gone")
    (upper / "fresh").mkdir()
    make_opaque(upper / "fresh")
    (upper / "fresh" / "x").write_text("x")
    (upper / "etc").mkdir()
    (upper / "etc" / "hostname").write_text("dropped\n")   # etc/ empties: it goes too
    (upper / "ro").mkdir()
    (upper / "ro" / "kept").write_text("in a read-only dir\n")
    os.chmod(upper / "ro", 0o555)
    os.chown(upper / "a-b", 1234, 5678)
    os.chmod(upper / "a" / "deep" / "f", 0o640)


@pytest.mark.root
@pytest.mark.parametrize("consume", [False, True], ids=["copy", "move"])
def test_commit_digest_is_the_digest_of_the_layer_it_stored(store, tmp_path, consume):
    upper = tmp_path / "upper"
    upper.mkdir()
    _tricky_upper(upper)
    content = (upper / "a" / "deep" / "f").read_bytes()
    new = commit(upper, get_image("busybox", store), "tricky", store=store, consume=consume)
    stored = new.layer_dirs[-1]
    assert new.layers[-1] == layer_digest(stored)
    names = tar_names(stored)
    assert names.index("a-b") < names.index("a/deep")
    assert "etc" not in names and "gone" not in names and ".wh.gone" in names
    assert "fresh/.wh..wh..opq" in names
    assert os.stat(stored / "a" / "hard").st_ino == os.stat(stored / "a-b").st_ino
    assert os.stat(stored / "ro").st_mode & 0o777 == 0o555
    assert (os.stat(stored / "a-b").st_uid, os.stat(stored / "a-b").st_gid) == (1234, 5678)
    assert (stored / "a" / "deep" / "f").read_bytes() == content


def _upper_with_sockets(upper):
    """_tricky_upper plus sockets: one beside an init-layer file (the dir still goes) and
    one alone in a dir (the dir stays, empty: it was not emptied by the drop rule)."""
    import socket

    _tricky_upper(upper)
    for relative in ("etc/app.sock", "run/app.sock"):
        (upper / relative).parent.mkdir(exist_ok=True)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(upper / relative))


@pytest.mark.root
@pytest.mark.parametrize("consume", [False, True], ids=["copy", "move"])
def test_commit_digest_is_the_reference_digest_of_what_it_kept(store, tmp_path, consume):
    """The digest of a commit (copied or moved) is sha256 of the tar that Python's tarfile
    writes of what a layer keeps: init-layer files, sockets and the dir they emptied go."""
    upper = tmp_path / "upper"
    upper.mkdir()
    _upper_with_sockets(upper)
    expected = reference_digest(upper, leave_out={"etc", "etc/hostname", "etc/app.sock"})
    new = commit(upper, get_image("busybox", store), "reference", store=store, consume=consume)
    stored = new.layer_dirs[-1]
    assert new.layers[-1] == expected
    assert layer_digest(stored) == expected
    assert not (stored / "etc").exists() and os.listdir(stored / "run") == []
    assert new.history[-1]["size"] == tree_size(stored) > 3 << 20  # as history shows it, hard links and all


@pytest.mark.root
def test_commit_that_fails_while_copying_leaves_no_layer_scratch_dir_thread_or_open_file(store, tmp_path):
    """A write the kernel refuses half-way through a file (EFBIG past RLIMIT_FSIZE)."""
    upper = tmp_path / "upper"
    upper.mkdir()
    _tricky_upper(upper)   # a/deep/f is 3 MiB: past the 1 MiB limit
    get_image("busybox", store)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, resource, signal, threading
        from labkit.images import commit, get_image
        from labkit.images.store import Store
        store = Store()
        base = get_image("busybox", store)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        def open_files():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    yield os.readlink(f"/proc/self/fd/{{fd}}")
                except FileNotFoundError:
                    pass  # the listing's own
        try:
            commit({str(upper)!r}, base, "too-big", store=store)
        except OSError as error:
            print("refused", error.errno == 27, threading.active_count(),
                  sum(name.startswith(({str(upper)!r}, str(store.home))) for name in open_files()))
    """)], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["refused", "True", "1", "0"], result.stderr
    assert "too-big" not in store.names()
    assert store.layer_digests() == get_image("busybox", store).layers
    assert os.listdir(store.tmp_root) == []
    assert commit(upper, get_image("busybox", store), "fits", store=store).layers[-1] \
        == layer_digest(store.image("fits").layer_dirs[-1])  # without the limit, the same commit works


# --- build ---------------------------------------------------------------------------------------

RECIPE = """\
FROM busybox
ENV GREETING=hello
RUN echo $GREETING > /greeting && rm /bin/ls
COPY app.txt /app/
WORKDIR /app
RUN cat app.txt > copy.txt
CMD ["cat", "/greeting"]
"""


@pytest.fixture
def context(tmp_path):
    directory = tmp_path / "context"
    directory.mkdir()
    (directory / "app.txt").write_text("the app\n")
    return directory


@pytest.mark.root
@needs_runtime
def test_three_step_build_makes_one_layer_per_step_and_rebuilds_from_cache(store, context):
    steps = []
    image = build(RECIPE, "demo", context, store=store, on_progress=lambda i, n, text: steps.append((i, n, text)))
    assert len(image.layers) == 4  # busybox + RUN + COPY + RUN
    assert image.config.env[-1] == "GREETING=hello" and image.config.workdir == "/app"
    assert image.config.cmd == ["cat", "/greeting"]
    layers_before = set(store.layer_digests())
    steps.clear()
    again = build(RECIPE, "demo", context, store=store, on_progress=lambda i, n, text: steps.append((i, n, text)))
    assert again.layers == image.layers
    assert set(store.layer_digests()) == layers_before
    assert sum("(cached)" in text for _, _, text in steps) == 3
    assert {n for _, n, _ in steps} == {7}


@pytest.mark.root
@needs_runtime
def test_build_digests_are_the_same_in_a_fresh_store(store, context, tmp_path, monkeypatch):
    first = build(RECIPE, "demo", context, store=store).layers
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "second-home"))
    assert build(RECIPE, "demo", context, store=Store()).layers == first


@pytest.mark.root
@needs_runtime
def test_changing_a_copied_file_rebuilds_from_that_step(store, context):
    first = build(RECIPE, "demo", context, store=store)
    (context / "app.txt").write_text("changed\n")
    second = build(RECIPE, "demo", context, store=store)
    assert second.layers[:2] == first.layers[:2]
    assert second.layers[2] != first.layers[2]


@pytest.mark.root
@needs_runtime
def test_built_image_runs_with_its_changes(store, context):
    Container, ContainerSpec = _runtime()
    build(RECIPE, "demo", context, store=store)
    result = Container(ContainerSpec(image="demo", command=["sh", "-c", "cat /greeting copy.txt; test -e /bin/ls"])).run()
    assert result.stdout == "hello\nthe app\n"
    assert result.exit_code == 1


@pytest.mark.root
@needs_runtime
def test_container_commit_excludes_init_files_and_keeps_deletions(store):
    Container, ContainerSpec = _runtime()
    container = Container(ContainerSpec(image="busybox", command=[
        "sh", "-c", "rm /bin/ls; echo 1.2.3.4 db >> /etc/hosts; echo kept > /etc/motd"]))
    try:
        assert container.run(remove=False).exit_code == 0
        new = commit(container.upper_dir, get_image("busybox", store), "committed", store=store)
    finally:
        container.remove()
    names = tar_names(new.layer_dirs[-1])
    assert "etc/motd" in names and "bin/.wh.ls" in names
    assert not {"etc/hosts", "etc/hostname", "etc/resolv.conf"} & set(names)
    check = Container(ContainerSpec(image="committed", command=["sh", "-c", "cat /etc/motd; test -e /bin/ls"])).run()
    assert (check.stdout, check.exit_code) == ("kept\n", 1)


@pytest.mark.root
@needs_runtime
def test_failed_run_step_names_its_line_and_leaves_the_store_as_it_was(store, context):
    get_image("busybox", store)
    before = set(store.layer_digests())
    with pytest.raises(ImageError, match=r"recipe line 2: 'RUN exit 3' failed with exit code 3"):
        build("FROM busybox\nRUN exit 3\n", "broken", context, store=store)
    assert set(store.layer_digests()) == before and "broken" not in store.names()
    assert list(store.tmp_root.iterdir()) == []


def test_recipe_syntax_errors_name_the_line(store, context):
    with pytest.raises(ImageError, match=r"recipe line 3: unknown instruction 'RUNN'"):
        build("FROM busybox\n# a comment\nRUNN echo\n", "x", context, store=store)
    with pytest.raises(ImageError, match=r"recipe line 1: the first instruction must be FROM"):
        build("RUN echo\n", "x", context, store=store)
    with pytest.raises(ImageError, match=r"recipe line 2: COPY source 'missing' does not exist"):
        build("FROM busybox\nCOPY missing /x\n", "x", context, store=store)
    with pytest.raises(ImageError, match=r"recipe line 2: COPY source '../x' is outside the build context"):
        build("FROM busybox\nCOPY ../x /x\n", "x", context, store=store)


def test_build_from_an_unknown_image_is_a_clear_error(store, context):
    with pytest.raises(ImageError, match=r"recipe line 1: FROM nothing-here: no image named 'nothing-here'"):
        build("FROM nothing-here\n", "x", context, store=store)


@pytest.mark.root
def test_copy_only_build_caches_on_file_content(store, context):
    recipe = "FROM busybox\nCOPY app.txt /app/app.txt\n"
    first = build(recipe, "c", context, store=store)
    assert build(recipe, "c", context, store=store).layers == first.layers
    assert (first.layer_dirs[-1] / "app" / "app.txt").read_text() == "the app\n"


# --- `labkit image ls | inspect | history`, as a user types them ---------------------------

def labkit_image(*args, home):
    return subprocess.run([sys.executable, "-m", "labkit.cli", "image", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), timeout=120)


@pytest.fixture
def web_image(labkit_home, tmp_path):
    """busybox plus one committed layer holding /srv/index.html (3 bytes)."""
    store = Store()
    upper = tmp_path / "upper"
    (upper / "srv").mkdir(parents=True)
    (upper / "srv" / "index.html").write_text("hi\n")
    return commit(upper, get_image("busybox", store), "web", store=store, message="add index.html")


def table(text):
    return [line.split() for line in text.splitlines() if line.strip()]


def test_image_ls_lists_each_image_with_its_layer_count_and_top_layer(web_image, labkit_home):
    done = labkit_image("ls", home=labkit_home)
    assert done.returncode == 0, done.stderr
    header, *rows = table(done.stdout)
    assert header == ["NAME", "LAYERS", "SIZE", "TOP", "LAYER"]
    by_name = {row[0]: row for row in rows}
    assert sorted(by_name) == ["busybox", "web"]
    assert by_name["web"][1] == "2" and by_name["busybox"][1] == "1"
    assert by_name["web"][-1] == web_image.layers[-1].split(":")[1][:12]
    assert by_name["busybox"][-1] == web_image.layers[0].split(":")[1][:12]


def test_image_inspect_prints_the_stored_image_as_json(web_image, labkit_home):
    done = labkit_image("inspect", "web", home=labkit_home)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["name"] == "web"
    assert shown["layers"] == web_image.layers
    assert shown["config"]["cmd"] == ["sh"] and shown["config"]["workdir"] == "/"
    assert [step["created_by"] for step in shown["history"]][-1] == "add index.html"
    assert [step["layer"] for step in shown["history"]] == web_image.layers
    assert shown["history"][-1]["size"] == 3


def test_image_history_lists_the_steps_newest_first_with_their_layers(web_image, labkit_home):
    done = labkit_image("history", "web", home=labkit_home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["STEP", "CREATED", "SIZE", "LAYER"]
    assert lines[1].startswith("add index.html") and lines[1].split()[-2:] == ["B", web_image.layers[1][7:19]]
    assert lines[2].startswith("labkit: busybox") and lines[2].split()[-1] == web_image.layers[0][7:19]
    assert len(lines) == 3


@pytest.mark.parametrize("verb", ["inspect", "history"])
def test_image_commands_name_a_missing_image_in_one_line(labkit_home, verb):
    done = labkit_image(verb, "nosuch", home=labkit_home)
    assert done.returncode == 2
    assert "no image named 'nosuch'" in done.stderr and "Traceback" not in done.stderr


# --- Dockerfile behaviours that need a real build ------------------------------------------

@pytest.mark.root
def test_copy_to_a_directory_the_image_has_goes_inside_it_as_in_docker(store, context):
    image = build("FROM busybox\nCOPY app.txt /tmp\nWORKDIR /new/dir\nCOPY app.txt .\n", "into", context,
                  store=store)
    assert (image.layer_dirs[-2] / "tmp" / "app.txt").read_text() == "the app\n"
    assert (image.layer_dirs[-1] / "new" / "dir" / "app.txt").read_text() == "the app\n"


@pytest.mark.root
def test_dockerignore_keeps_files_out_of_a_build(store, context):
    (context / "secrets").mkdir()
    (context / "secrets" / "key").write_text("hunter2\n")
    (context / "debug.log").write_text("log\n")
    recipe = "FROM busybox\nCOPY . /app/\n"
    with_everything = build(recipe, "all", context, store=store)
    assert (with_everything.layer_dirs[-1] / "app" / "secrets" / "key").exists()  # without the file: all goes in
    (context / ".dockerignore").write_text("secrets\n*.log\n")
    image = build(recipe, "ignored", context, store=store)
    names = sorted(p.name for p in (image.layer_dirs[-1] / "app").iterdir())
    assert names == [".dockerignore", "app.txt"]
    with pytest.raises(ImageError, match="'secrets/key' does not exist .*dockerignore"):
        build("FROM busybox\nCOPY secrets/key /key\n", "x", context, store=store)


@pytest.mark.root
def test_build_args_reach_arg_substitution_and_run_but_not_the_image(store, context):
    recipe = "FROM busybox\nARG WHO=nobody\nENV GREETING=hello-$WHO\nRUN echo \"$WHO $GREETING\" > /out\n"
    image = build(recipe, "args", context, store=store, build_args={"WHO": "lab"})
    assert (image.layer_dirs[-1] / "out").read_text() == "lab hello-lab\n"
    assert "GREETING=hello-lab" in image.config.env and not any(e.startswith("WHO=") for e in image.config.env)


def test_from_a_registry_path_without_network_is_one_clear_line(store, context):
    with pytest.raises(ImageError, match=r"FROM docker.io/library/alpine:3.19: .*builds offline and pulls nothing"):
        build("FROM docker.io/library/alpine:3.19\n", "x", context, store=store)
    get_image("busybox", store)
    image = build("FROM docker.io/library/busybox:latest\n", "resolved", context, store=store)
    assert image.layers == get_image("busybox", store).layers


def test_blobs_kept_by_an_import_go_with_the_last_image_that_uses_them(store, tmp_path):
    from labkit.images import export_image, import_image

    export_image(get_image("busybox", store), tmp_path / "busybox.tar", "rootfs")
    image = import_image(tmp_path / "busybox.tar", name="imported", store=store)
    blob = store.blob_path(image.sources[0].digest)
    assert blob.read_bytes() == (tmp_path / "busybox.tar").read_bytes()
    store.remove_image("imported", layers_used_by_containers=layers_in_use)
    assert not blob.exists()


def test_a_damaged_blob_is_never_exported(store, tmp_path):
    from labkit.images import export_image, import_image

    export_image(get_image("busybox", store), tmp_path / "busybox.tar", "rootfs")
    image = import_image(tmp_path / "busybox.tar", name="imported", store=store)
    with open(store.blob_path(image.sources[0].digest), "r+b") as blob:
        blob.seek(2000)
        blob.write(b"X")
    with pytest.raises(ImageError, match="is damaged"):
        export_image(image, tmp_path / "out.tar", "oci")


@pytest.mark.root
def test_a_run_under_another_shell_or_user_is_not_taken_from_the_cache(store, context):
    plain = build("FROM busybox\nRUN echo $0 $(id -u) > /s\n", "a", context, store=store)
    ash = build('FROM busybox\nSHELL ["/bin/ash", "-c"]\nRUN echo $0 $(id -u) > /s\n', "b", context, store=store)
    nobody = build("FROM busybox\nUSER nobody\nRUN echo $0 $(id -u) > /tmp/s\n", "c", context, store=store)
    assert (plain.layer_dirs[-1] / "s").read_text() == "/bin/sh 0\n"
    assert (ash.layer_dirs[-1] / "s").read_text() == "/bin/ash 0\n"
    assert (nobody.layer_dirs[-1] / "tmp" / "s").read_text() == "/bin/sh 65534\n"


@pytest.mark.root
def test_copy_from_a_stage_follows_its_links_inside_the_stage_never_onto_the_host(store, context):
    recipe = ("FROM busybox AS build\nRUN mkdir -p /real/dir && echo inside > /real/dir/passwd && "
              "ln -s /real/dir /app && ln -s /etc/passwd /app-passwd\n"
              "FROM busybox\nCOPY --from=build /app/passwd /from-link\nCOPY --from=build /app-passwd /copied-passwd\n")
    image = build(recipe, "links", context, store=store)
    assert (image.layer_dirs[-2] / "from-link").read_text() == "inside\n"
    busybox_passwd = (get_image("busybox", store).layer_dirs[0] / "etc" / "passwd").read_text()
    assert (image.layer_dirs[-1] / "copied-passwd").read_text() == busybox_passwd  # the stage's, not the host's
    assert busybox_passwd != open("/etc/passwd").read()
