"""Forgeries against the grader's own reads of a submission's files (issue 19, red team).

The grader judges from outside, as host root, while the submission's processes still run:
what it reads of the sandbox (the student's LABKIT_HOME, a container's root, a path the
notebook gives) is the student's to arrange. These tests plant, from inside a real sandbox,
what a cheating student would: symlinks in the store or a container's root that resolve to
the host's files when followed from the grader's root, and FIFOs where the grader opens a
file (open() waits for a writer for ever, and the whole grade run with it). Each shows the
trick working where the grader's old read would have followed it (the same open from the
host's root), then that the probe no longer does."""

import json
import os
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture
from test_grading_judge import judged

from labkit.grading import expect, probes
from labkit.grading.targets import Answer, reset_world, using_world

HEX = "ab" * 32
FOREVER = 20.0          # seconds after which a read that has not returned is a hang


def returns(fn, fifo=None, timeout=FOREVER):
    """(True, value or error) if fn() returns within `timeout`; (False, None) if it hangs,
    after which a writer opens `fifo` so that the hung thread can end."""
    outcome = {}

    def work():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # noqa: BLE001 — the caller judges it
            outcome["value"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(FOREVER)
        return False, None
    return True, outcome["value"]


def host_store(root) -> dict:
    """An image store on the host, outside any sandbox (what the host's /var/lib/labkit is
    to a student): one image 'hostimg' whose only layer has /marker."""
    (root / "images").mkdir(parents=True)
    (root / "layers" / HEX).mkdir(parents=True)
    (root / "layers" / HEX / "marker").write_text("the host's\n")
    (root / "images" / "hostimg.json").write_text(json.dumps({"layers": [f"sha256:{HEX}"], "config": {},
                                                              "history": []}))
    return {"images": str(root / "images"), "layers": str(root / "layers")}


# --- pure: a FIFO where the grader opens a file (no root needed) -----------------------------

def test_a_fifo_for_a_container_state_does_not_hang_the_watch(tmp_path):
    from labkit.grading.evidence import Watch

    directory = tmp_path / "containers" / "fifo"
    directory.mkdir(parents=True)
    os.mkfifo(directory / "state.json")
    # without the defence: a plain open of that file waits for a writer
    hung, _ = returns(lambda: open(directory / "state.json", "rb").close(), fifo=directory / "state.json", timeout=0.5)
    assert not hung
    watch = Watch(SimpleNamespace(home=str(tmp_path), cgroup_paths={}))
    done, error = returns(watch.look, fifo=directory / "state.json")
    assert done and error is None, "the grader's watch waited on a FIFO"
    assert watch.sightings == {}


def test_a_fifo_or_a_device_as_an_image_manifest_is_refused_at_once(tmp_path):
    from labkit.errors import ImageError
    from labkit.images.store import Store

    store = Store(tmp_path)
    store.images_root.mkdir(parents=True)
    os.mkfifo(store.images_root / "fifo.json")
    os.symlink("/dev/zero", store.images_root / "zero.json")
    for name in ("fifo", "zero"):
        done, error = returns(lambda: store.image(name), fifo=store.images_root / "fifo.json")
        assert done, f"reading image {name!r} hung"
        assert isinstance(error, ImageError) and "not a regular file" in str(error), error


def test_a_vm_guest_cannot_hand_the_host_a_symlink_or_a_fifo_as_its_verdict(tmp_path):
    """--sandbox vm: the exchange directory is shared with a guest the grader distrusts; a
    guest that broke its kernel could put a symlink (to a host file) or a FIFO there."""
    from labkit.grading.vm import VERDICT_CAP, _read_capped

    secret = tmp_path / "host-file.json"
    secret.write_text('{"cells": []}')
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    os.symlink(secret, exchange / "verdict.json")
    os.mkfifo(exchange / "executed.ipynb")
    # without the defence: a plain open follows the link to the host's file
    assert open(exchange / "verdict.json").read() == secret.read_text()
    with pytest.raises(ValueError, match="not a regular file"):
        _read_capped(exchange / "verdict.json", VERDICT_CAP)
    done, error = returns(lambda: _read_capped(exchange / "executed.ipynb", VERDICT_CAP), fifo=exchange / "executed.ipynb")
    assert done and isinstance(error, ValueError) and "not a regular file" in str(error), error
    assert _read_capped(exchange / "missing.json", VERDICT_CAP) is None


# --- the submissions the grader reads: handed in through a folder students can write --------

def handed_in(tmp_path):
    """The instructor's source (with its solutions) and a folder of submissions."""
    import nbformat

    source = tmp_path / "instructor" / "lab.ipynb"
    source.parent.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("answer = 'the solution'")]), str(source))
    inbound = tmp_path / "inbound"
    inbound.mkdir()
    return source, inbound


def test_a_submission_linked_to_the_source_is_not_read(tmp_path):
    from labkit.grading.grader import read_notebook

    source, inbound = handed_in(tmp_path)
    (inbound / "alice.ipynb").symlink_to(source)
    (inbound / "bob").symlink_to(source.parent)             # bob/lab.ipynb: "bob's" lab.ipynb
    # without the defence: both read as the source, solutions and all
    assert "the solution" in (inbound / "alice.ipynb").read_text() and "the solution" in (inbound / "bob" / "lab.ipynb").read_text()
    with pytest.raises(ValueError, match="the file is a symlink"):
        read_notebook(inbound / "alice.ipynb", source)
    with pytest.raises(ValueError, match="its folder is a symlink"):
        read_notebook(inbound / "bob" / "lab.ipynb", source)
    assert read_notebook(source)["cells"], "the source itself is still read"


def test_a_link_a_student_made_above_the_submission_folder_is_not_followed(tmp_path):
    """Only the file and its folder were opened without following links: alice's own
    `course -> <a folder only root reads>`, two levels above `course/labs/lab.ipynb`, had
    the grader read a root-only notebook as alice's work (an audit, as a student). A link on
    the way is followed only where root (or the grader's user) made it."""
    import nbformat

    from labkit.grading.grader import read_notebook

    source, inbound = handed_in(tmp_path)
    secret = tmp_path / "root-only" / "labs"
    secret.mkdir(parents=True)
    os.chmod(secret.parent, 0o700)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SOLUTION = 42")]), str(secret / "lab.ipynb"))
    alice = inbound / "alice"
    alice.mkdir()
    (alice / "course").symlink_to(secret.parent)
    os.chown(alice / "course", 65534, 65534, follow_symlinks=False)       # alice's link
    handed = alice / "course" / "labs" / "lab.ipynb"
    assert "SOLUTION = 42" in handed.read_text()                           # without the defence: the secret
    with pytest.raises(ValueError, match=r"a symlink on the way \(course -> .*\) is uid 65534's"):
        read_notebook(handed, source)
    os.chown(alice / "course", 0, 0, follow_symlinks=False)                # one root made: followed
    assert "SOLUTION = 42" in read_notebook(handed, source).cells[0].source


def test_a_fifo_or_a_huge_file_as_a_submission_is_refused_at_once(tmp_path):
    from labkit.grading import grader

    source, inbound = handed_in(tmp_path)
    os.mkfifo(inbound / "carol.ipynb")
    done, error = returns(lambda: grader.read_notebook(inbound / "carol.ipynb", source), fifo=inbound / "carol.ipynb")
    assert done and isinstance(error, ValueError) and "not a notebook" in str(error), error
    with open(inbound / "dave.ipynb", "wb") as handle:
        handle.truncate(grader.SUBMISSION_MOST + 1)          # sparse: no disk used
    with pytest.raises(ValueError, match="over 64 MiB"):
        grader.read_notebook(inbound / "dave.ipynb", source)


def test_a_hard_link_to_the_source_is_not_a_submission(tmp_path):
    from labkit.grading.grader import read_notebook

    source, inbound = handed_in(tmp_path)
    os.link(source, inbound / "erin.ipynb")
    with pytest.raises(ValueError, match="the source notebook itself"):
        read_notebook(inbound / "erin.ipynb", source)


# --- the kernel's ZMQ sockets live in a folder the sandbox writes ------------------------------

def connect_then_swap(tmp_path, held):
    """The trick, with real Unix sockets and a real ZMQ socket of the grader's: the "kernel"
    listens at kernel-1, the grader connects; the kernel renames a symlink to a host socket
    over kernel-1 and drops the connection. Returns the host socket, the grader's ZMQ
    context, (its socket, a monitor of it) and the held descriptor (or None)."""
    import socket

    import zmq

    from labkit.grading.sandbox.kernel import held_socket_url, hold_socket

    (tmp_path / "kernel").mkdir(parents=True)
    host_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_socket.bind(str(tmp_path / "host.sock"))    # what only host root may reach
    host_socket.listen()
    path = str(tmp_path / "kernel" / "kernel-1")
    kernel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    kernel.bind(path)
    kernel.listen()
    context = zmq.Context()
    grader = context.socket(zmq.DEALER)
    grader.linger = 0
    monitor = grader.get_monitor_socket()
    descriptor = hold_socket(path) if held else None
    grader.connect(held_socket_url(descriptor) if held else f"ipc://{path}")
    kernel.settimeout(FOREVER)
    connection, _ = kernel.accept()       # the grader reached the kernel's socket either way
    os.symlink(str(tmp_path / "host.sock"), path + ".new")
    os.replace(path + ".new", path)
    connection.close()
    kernel.close()
    return host_socket, context, (grader, monitor), descriptor


def test_a_kernel_that_swaps_its_socket_and_drops_the_connection_gets_no_host_socket(tmp_path):
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    # Without the defence: ZMQ reconnects through the name, and the symlink takes it to the host's socket.
    host_socket, context, _grader, _ = connect_then_swap(tmp_path / "plain", held=False)
    host_socket.settimeout(FOREVER)
    host_socket.accept()[0].close()
    context.destroy(linger=0)
    host_socket.close()

    # The grader's way: connected through the held descriptor, every reconnect goes to the
    # kernel's own (now closed) socket, refused; the host's socket is never reached.
    host_socket, context, (_, monitor), descriptor = connect_then_swap(tmp_path / "held", held=True)
    try:
        retried = 0
        while retried < 3:    # three reconnects tried (and refused) after the swap
            assert monitor.poll(FOREVER * 1000), "ZMQ did not try to reconnect"
            retried += recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECT_RETRIED
        host_socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            host_socket.accept()
    finally:
        context.destroy(linger=0)
        host_socket.close()
        os.close(descriptor)


def test_only_a_socket_is_held_as_the_kernels(tmp_path):
    from labkit.grading.sandbox.kernel import hold_socket

    assert hold_socket(str(tmp_path / "not-yet")) is None        # the kernel has not bound it yet
    os.symlink("/run/some-host.sock", tmp_path / "kernel-1")
    os.mkfifo(tmp_path / "kernel-2")
    for planted in ("kernel-1", "kernel-2"):
        with pytest.raises(RuntimeError, match="other than a socket"):
            hold_socket(str(tmp_path / planted))


# --- a commit is what the grader saw, not what the store says ----------------------------------

class CommitScene:
    """A store with a base image and a container's read-write layer, watched by a real Watch
    and judged by a GraderWorld (the sandbox's kind="none": the watch's evidence is what is
    under test, not the sandbox). The container is marked as having run."""

    def __init__(self, root):
        from labkit.grading.evidence import Sighting, Watch
        from labkit.grading.judge import GraderWorld
        from labkit.images.store import ImageConfig, Store
        from labkit.runtime.container_dir import ContainerDir

        self.root, self.store = root, Store(root)
        base = root / "base-layer"
        (base / "bin").mkdir(parents=True)
        (base / "bin" / "sh").write_text("#!\n")
        digest = self.store.add_layer(base)
        self.store.save_image("base", [digest], ImageConfig(), [self.store.history_entry("base", digest, 3)])
        self.upper = ContainerDir.of("c1", root).upper
        (self.upper / "root").mkdir(parents=True)
        (self.upper / "root" / "todo").write_text("buy milk\n")
        (self.upper / "etc").mkdir()
        (self.upper / "etc" / "hosts").write_text("10.0.0.9 db\n")    # an init file: a commit drops it
        box = SimpleNamespace(home=str(root), cgroup_paths={}, pid=None, scratch=str(root))
        self.watch = Watch(box)           # its thread is not started: each look is the test's
        self.watch.sightings["c1"] = Sighting("c1", "editor", "labkit/c1", 0.0, ran=True)
        self.world = GraderWorld(box, lambda name: (None, None), self.watch)

    def commit(self, upper=None, name="lab-commit"):
        """labkit's own commit (what the magic, the CLI and Container.commit call)."""
        from labkit.images.commit import commit

        return commit(upper or self.upper, "base", name, store=self.store, container={"id": "c1", "name": "editor"})

    def judge(self, name="lab-commit"):
        outcome = judged(self.world, expect("commit", 2, probes.commit_excludes_init(name, "base"))).outcomes[0]
        return outcome.passed, outcome.observed


def test_a_commit_of_a_containers_read_write_layer_passes(tmp_path):
    scene = CommitScene(tmp_path)
    scene.watch.look_at_images()          # the store as the notebook found it
    scene.commit()
    assert scene.judge() == (True, "committed from container editor's read-write layer")


def test_a_layer_ascribed_to_a_removed_container_is_not_a_commit(tmp_path):
    import shutil

    scene = CommitScene(tmp_path)
    scene.watch.look_at_images()
    copy = tmp_path / "kept-aside"
    shutil.copytree(scene.upper, copy)
    shutil.rmtree(tmp_path / "containers" / "c1")     # the container ran, and was removed
    image = scene.commit(upper=copy)      # its layer, made from a copy and ascribed to it
    # Without the defence the store's record is all there is, and it says what a commit says:
    # one layer on the base, no init file, made from container c1, which ran here.
    from labkit.grading.layers import committed_from
    assert committed_from(image) == {"id": "c1", "name": "editor"} and scene.watch.sightings["c1"].ran
    assert scene.judge() == (False, "container editor's read-write layer was gone when lab-commit appeared: "
                                    "its top layer was not committed from it")


def test_a_layer_that_is_not_the_containers_is_not_a_commit(tmp_path):
    scene = CommitScene(tmp_path)
    scene.watch.look_at_images()
    other = tmp_path / "by-hand"
    (other / "root").mkdir(parents=True)
    (other / "root" / "todo").write_text("made by hand\n")
    scene.commit(upper=other)             # the container is alive; the layer is not its
    passed, observed = scene.judge()
    assert not passed and "is not what container editor's read-write layer held" in observed


def test_a_manifest_edited_in_place_to_name_a_container_is_not_a_commit(tmp_path):
    from labkit.images.commit import commit

    scene = CommitScene(tmp_path)
    commit(scene.upper, "base", "lab-commit", store=scene.store)   # a layer with no container named
    scene.watch.look_at_images()
    path = scene.store.images_root / "lab-commit.json"
    manifest = json.loads(path.read_text())
    manifest["history"][-1]["container"] = {"id": "c1", "name": "editor"}
    with open(path, "r+") as same_file:   # the same file: no new manifest appears
        same_file.write(json.dumps(manifest))
        same_file.truncate()
    assert scene.judge() == (False, "lab-commit was not seen appearing as a commit of container editor "
                                    "while the notebook ran")


# --- in a real sandbox ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    if os.geteuid() != 0:
        pytest.skip("needs root: a grading sandbox")
    from labkit.grading.evidence import Watch
    from labkit.grading.judge import GraderWorld
    from labkit.grading.sandbox import Sandbox

    answers = {}
    with Sandbox(kind="namespaces") as box, Watch(box) as watch:
        world = GraderWorld(box, lambda name: (repr(answers[name]), None), watch)
        yield box, world, answers


def inside(box, script):
    """Run a shell script in the sandbox as a student's cell would, to its end."""
    done = subprocess.run(box.launch_prefix() + ["sh", "-c", script], cwd=str(box.scratch),
                          env={**os.environ, **box.kernel_env()}, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, f"{script!r} failed in the sandbox"


def sleeper_in(box) -> int:
    """A `sleep` started in the sandbox; its PID as the notebook knows it."""
    from labkit.grading.targets import namespace_pids

    subprocess.Popen(box.launch_prefix() + ["sh", "-c", "exec sleep 600"], cwd=str(box.scratch),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    level = len(namespace_pids(box.pid)) - 1
    end = time.monotonic() + 15
    while time.monotonic() < end:
        for pid in box.pids():
            try:
                if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep\x00600\x00"):
                    return namespace_pids(pid)[level]
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("no sleep started in the sandbox")


@pytest.mark.root
def test_a_symlink_the_sandbox_plants_for_a_kernel_socket_is_refused(sandbox):
    from labkit.grading.sandbox.kernel import hold_socket

    box = sandbox[0]
    inside(box, f"ln -s /run/labkit/sandboxes {box.kernel_dir}/planted-1")   # the sandbox can write there
    assert os.path.islink(box.kernel_dir / "planted-1")
    with pytest.raises(RuntimeError, match="other than a socket"):
        hold_socket(str(box.kernel_dir / "planted-1"))


@pytest.mark.root
def test_a_store_symlinked_to_the_hosts_images_earns_nothing(sandbox, tmp_path):
    from labkit.grading import probes
    from labkit.images.store import Store

    box, world, _ = sandbox
    host = host_store(tmp_path / "host-home")
    inside(box, f"mkdir -p \"$LABKIT_HOME\" && cd \"$LABKIT_HOME\" && rm -rf images layers && "
                f"ln -s {host['images']} images && ln -s {host['layers']} layers")
    # without the defence: the store read from the grader's root is the host's
    assert Store(box.home).image("hostimg").layer_dirs[0].joinpath("marker").is_file()
    report = judged(world, expect("marker", 1, probes.image_contains("hostimg", "/marker")),
                    expect("no marker", 1, probes.image_lacks("hostimg", "/marker")))
    assert [o.passed for o in report.outcomes] == [False, False], [o.observed for o in report.outcomes]
    assert all("no image 'hostimg'" in o.observed for o in report.outcomes), [o.observed for o in report.outcomes]
    inside(box, "cd \"$LABKIT_HOME\" && rm -f images layers")


@pytest.mark.root
def test_the_grader_builds_nothing_in_a_submissions_store(sandbox):
    from labkit.grading import probes

    box, world, _ = sandbox
    inside(box, "mkdir -p \"$LABKIT_HOME\" && rm -rf \"$LABKIT_HOME\"/*")
    report = judged(world, expect("busybox", 1, probes.image_contains("busybox", "/bin/sh")))
    assert not report.outcomes[0].passed
    assert "no image 'busybox'" in report.outcomes[0].observed
    assert os.listdir(box.home) == [], "the grader wrote into the submission's store"


@pytest.mark.root
def test_a_symlink_in_a_processs_root_is_not_followed_into_the_hosts_files(sandbox, tmp_path):
    from labkit.grading import probes

    box, world, answers = sandbox
    secret = tmp_path / "host-secret"
    secret.write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    link = os.path.join(box.scratch, "shadow")
    inside(box, f"ln -sf {secret} {link}")
    answers["pid"] = sleeper_in(box)
    host = world.process(answers["pid"]).pid
    # without the defence: /proc/PID/root, then the link's absolute target from the grader's root
    with open(f"/proc/{host}/root{link}") as handle:
        assert "SECRET-HASH" in handle.read()
    report = judged(world, expect("shadow", 1, probes.file_in_root(Answer("pid"), link, "SECRET")))
    outcome = report.outcomes[0]
    assert not outcome.passed and "SECRET" not in outcome.observed, outcome.observed
    assert f"it has no {link}" in outcome.observed


@pytest.mark.root
def test_a_fifo_where_a_probe_reads_a_file_does_not_hang_the_grader(sandbox):
    from labkit.grading import probes

    box, world, answers = sandbox
    fifo = os.path.join(box.scratch, "hosts-fifo")
    inside(box, f"rm -f {fifo} && mkfifo {fifo}")
    answers["pid"] = sleeper_in(box)
    done, report = returns(lambda: judged(world, expect("hosts", 1, probes.file_in_root(Answer("pid"), fifo, "db"))),
                           fifo=fifo)
    assert done, "the grader waited on a FIFO the student made"
    assert not report.outcomes[0].passed and "not a regular file" in report.outcomes[0].observed


@pytest.mark.root
def test_no_module_is_imported_from_a_sandboxs_root(sandbox):
    """The grader's thread in the sandbox's root would import what the student mounted over
    Python's library there: every import is refused in it."""
    from labkit.grading.targets import in_root

    box, _, _ = sandbox

    def import_something():
        import labkit_redteam_no_such_module  # noqa: F401

    with pytest.raises(ImportError, match="while reading inside the root"):
        in_root(box.pid, import_something)
    assert in_root(box.pid, os.getcwd) == "/"
    assert in_root(box.pid, os.getcwd, cwd=str(box.scratch)) == str(box.scratch)


# --- the executed notebook's output cap -------------------------------------------------------

OVER_THE_CAP = {
    # an update of an output that names a display id replaces its data past the cap
    "update": ("from IPython.display import display, update_display\n"
               "display('small', display_id='d')\n"
               "update_display('U' * (3 << 20), display_id='d')"),
    # one big update replaces each of many small outputs with that id
    "many": ("from IPython.display import display, update_display\n"
             "for _ in range(40):\n"
             "    display('small', display_id='m')\n"
             "update_display('M' * (200 << 10), display_id='m')"),
    # an output's metadata was not counted
    "metadata": ("from IPython.display import display\n"
                 "display({'text/plain': 'tiny'}, raw=True, metadata={'x': 'X' * (3 << 20)})"),
}


@pytest.mark.root
@pytest.mark.parametrize("trick", sorted(OVER_THE_CAP))
def test_no_output_passes_the_executed_notebooks_cap(labkit_kernelspec, tmp_path, trick):  # noqa: F811
    import nbformat

    from labkit.grading.grader import OUTPUT_CAP, grade

    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    source.metadata["kernelspec"] = {"name": "labkit", "display_name": "labkit", "language": "python"}
    submission = nbformat.from_dict(json.loads(json.dumps(source)))
    submission.cells.append(nbformat.v4.new_code_cell(OVER_THE_CAP[trick]))
    path = tmp_path / "student.ipynb"
    nbformat.write(submission, str(path))
    graded = grade(source, str(tmp_path / "source.ipynb"), str(path), cell_timeout=60, sandbox="none")
    kept = len(json.dumps(graded.executed.cells[-1].outputs))
    assert kept < 2 * OUTPUT_CAP, f"{kept} characters of output kept"
    assert "output was cut at 1 MiB" in json.dumps(graded.executed.cells[-1].outputs)


@pytest.mark.root
@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_a_processs_hosts_file_is_read_as_it_sees_it(sandbox, tmp_path, planted):
    """reaches_by_name reads the pinging process's /etc/hosts: a FIFO there hung the
    grader, an absolute symlink gave it the host's file's address."""
    from labkit.grading import network
    from labkit.grading.targets import namespace_pids

    box, world, _ = sandbox
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.8.7 db\n")
    plant = "mkfifo /etc/hosts" if planted == "fifo" else f"ln -s {hosts} /etc/hosts"
    seconds = {"fifo": "6011", "symlink": "6012"}[planted]      # tells the processes apart
    subprocess.Popen(box.launch_prefix() + ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                            f"mount -t tmpfs none /etc && {plant} && exec sleep {seconds}"],
                     cwd=str(box.scratch), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    end, pid = time.monotonic() + 15, None
    while pid is None and time.monotonic() < end:
        for candidate in box.pids():
            try:
                if open(f"/proc/{candidate}/cmdline", "rb").read() == f"sleep\0{seconds}\0".encode():
                    pid = candidate
            except OSError:
                pass
        time.sleep(0.05)
    assert pid is not None and namespace_pids(pid)
    if planted == "symlink":    # without the defence: the link's target read from the grader's root
        assert "10.9.8.7" in open(f"/proc/{pid}/root/etc/hosts").read()
    def read_hosts():
        token = using_world(world)      # in returns()'s thread: a world is per context
        try:
            return network._hosts_address(pid, "db")
        finally:
            reset_world(token)

    done, address = returns(read_hosts, fifo=f"/proc/{pid}/root/etc/hosts")
    assert done, "the grader waited on a FIFO at the process's /etc/hosts"
    assert address is None, address


@pytest.mark.root
def test_a_proc_of_another_pid_namespace_is_not_its_own(sandbox):
    """Lab 5's classic mistake: /proc mounted by a process still outside the new PID
    namespace (or inherited) lists the sandbox's processes, where PID 1 is another process;
    the probe took it for the container's own /proc."""
    from labkit.grading import probes

    box, world, answers = sandbox
    scripts = {"inherited": "exec sleep 6021", "own": "mount -t proc proc /proc && exec sleep 6022"}
    found = {}
    for kind, script in scripts.items():
        subprocess.Popen(box.launch_prefix() + ["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                                                "sh", "-c", script],
                         cwd=str(box.scratch), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    end = time.monotonic() + 15
    while len(found) < 2 and time.monotonic() < end:
        for candidate in box.pids():
            for kind, script in scripts.items():
                try:
                    if open(f"/proc/{candidate}/cmdline", "rb").read() == f"sleep\0{script[-4:]}\0".encode():
                        found[kind] = candidate
                except OSError:
                    pass
        time.sleep(0.05)
    assert len(found) == 2, found
    level = len(open(f"/proc/{box.pid}/status").read().split("NSpid:")[1].split("\n")[0].split()) - 1
    for kind, host in found.items():
        answers[kind] = int(open(f"/proc/{host}/status").read().split("NSpid:")[1].split("\n")[0].split()[level])
    report = judged(world, expect("inherited", 1, probes.own_proc(Answer("inherited"))),
                    expect("own", 1, probes.own_proc(Answer("own"))))
    assert [o.passed for o in report.outcomes] == [False, True], [o.observed for o in report.outcomes]
