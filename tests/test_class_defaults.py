"""Class-wide defaults an instructor sets in one file (labkit.defaults): every container
gets them, none may ask for more than the file's max, and a bounded read-write layer is
really bounded. Parsing is plain logic; the rest runs on the real kernel, as root."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.defaults import class_defaults
from labkit.errors import ConfigError
from labkit.runtime import Container, ContainerSpec

CLASS_FILE = """
[memory]
default = "48m"
max = "64m"
[pids]
default = 40
max = 100
[cpus]
max = 1.5
[storage]
default = "8m"
max = "16m"
"""


@pytest.fixture
def class_file(tmp_path, monkeypatch):
    """Points LABKIT_DEFAULTS at a file the test writes (returns a writer)."""
    path = tmp_path / "defaults.toml"
    monkeypatch.setenv("LABKIT_DEFAULTS", str(path))

    def write(text):
        path.write_text(text)
        os.chmod(path, 0o644)
        return path

    return write


# --- the file, read (no root needed) -------------------------------------------------------


def test_a_container_that_asks_for_nothing_gets_the_class_defaults(class_file):
    class_file(CLASS_FILE)
    spec = ContainerSpec().validated()
    assert (spec.memory, spec.pids, spec.storage_size) == (48 << 20, 40, 8 << 20)
    assert spec.cpus == 1.5  # a max without a default: asking for nothing must not mean more


def test_a_container_may_ask_for_less_or_up_to_the_max(class_file):
    class_file(CLASS_FILE)
    spec = ContainerSpec(memory="16m", pids=100, cpus=0.5, storage_opt=["size=16m"]).validated()
    assert (spec.memory, spec.pids, spec.cpus, spec.storage_size) == (16 << 20, 100, 0.5, 16 << 20)


@pytest.mark.parametrize("options, refused", [
    ({"memory": "1g"}, r"--memory 1\.0 GiB is more than this host allows: 64\.0 MiB \(\[memory\] max in {file}\)"),
    ({"pids": 5000}, r"--pids-limit 5000 is more than this host allows: 100 \(\[pids\] max in {file}\)"),
    ({"cpus": 2}, r"--cpus 2 is more than this host allows: 1\.5 \(\[cpus\] max in {file}\)"),
    ({"storage_opt": ["size=1g"]}, r"--storage-opt size 1\.0 GiB is more than this host allows"),
])
def test_more_than_the_files_max_is_refused_naming_the_file(class_file, options, refused):
    path = class_file(CLASS_FILE)
    with pytest.raises(ConfigError, match=refused.format(file=path)):
        ContainerSpec(**options).validated()


def test_without_a_file_nothing_but_logs_and_imports_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DEFAULTS", str(tmp_path / "none.toml"))
    spec = ContainerSpec(memory="1g").validated()
    assert (spec.memory, spec.pids, spec.cpus, spec.storage_size) == (1 << 30, None, None, None)
    assert (spec.log_max_size, spec.log_max_files) == (10 << 20, 3)
    assert class_defaults().default("import_size") == 4 << 30


@pytest.mark.parametrize("text, message", [
    ("[memmory]\ndefault = '1g'\n", r"unknown table \[memmory\]"),
    ("[memory]\nmaximum = '1g'\n", r"\[memory\] takes only `default` and `max`"),
    ("[memory]\ndefault = '2g'\nmax = '1g'\n", r"\[memory\] default 2\.0 GiB is more than its max 1\.0 GiB"),
    ("[pids]\ndefault = 'many'\n", r"\[pids\] default 'many' is not a whole number"),
    ("[memory\n", "is not valid TOML"),
])
def test_a_mistake_in_the_file_is_named_with_the_file(class_file, text, message):
    path = class_file(text)
    with pytest.raises(ConfigError, match=message) as refused:
        ContainerSpec().validated()
    assert str(path) in str(refused.value)


def test_a_file_others_may_write_is_refused_not_obeyed(class_file):
    path = class_file(CLASS_FILE)
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match=r"may be changed by other users .*chmod go-w"):
        ContainerSpec().validated()


def test_unknown_storage_and_log_options_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"--storage-opt quota=1g: unknown option 'quota'; the options are size"):
        ContainerSpec(storage_opt=["quota=1g"]).validated()
    with pytest.raises(ConfigError, match=r"--log-opt max-size 'lots' is not a size"):
        ContainerSpec(log_opt=["max-size=lots"]).validated()


# --- on the real kernel ------------------------------------------------------------------

MEMORY_LIMIT = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
PIDS_LIMIT = "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"


@pytest.mark.root
def test_the_class_defaults_reach_the_containers_cgroup(class_file, labkit_home, no_leftovers):
    class_file(CLASS_FILE)
    result = Container(ContainerSpec(command=f"{MEMORY_LIMIT}; {PIDS_LIMIT}")).run().check()
    assert result.stdout.split() == [str(48 << 20), "40"]


@pytest.mark.root
def test_labkit_run_over_the_max_fails_with_one_line_naming_the_file(class_file, labkit_home):
    path = class_file(CLASS_FILE)
    ran = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--memory", "1g", "--", "true"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0
    assert f"[memory] max in {path}" in ran.stderr and "Traceback" not in ran.stderr
    assert not (labkit_home / "containers").exists() or os.listdir(labkit_home / "containers") == []


FILL = "dd if=/dev/zero of=/big bs=1M count=24 2>&1; echo status=$?"


@pytest.mark.root
def test_a_bounded_read_write_layer_fills_up_at_its_size(labkit_home, no_leftovers, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DEFAULTS", str(tmp_path / "none.toml"))
    bounded = Container(ContainerSpec(command=FILL, storage_opt=["size=8m"])).run()
    assert "No space left on device" in bounded.stdout and "status=1" in bounded.stdout
    # the defence is the size: the same write into an unbounded layer goes through
    unbounded = Container(ContainerSpec(command=FILL)).run()
    assert "status=0" in unbounded.stdout, unbounded.stdout


@pytest.mark.root
def test_the_class_storage_default_bounds_a_container_that_asks_for_nothing(class_file, labkit_home, no_leftovers):
    class_file(CLASS_FILE)
    result = Container(ContainerSpec(command=FILL, memory="64m")).run()
    assert "No space left on device" in result.stdout


@pytest.mark.root
def test_a_bounded_layer_is_committed_and_its_mount_removed_with_the_container(labkit_home, no_leftovers, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("LABKIT_DEFAULTS", str(tmp_path / "none.toml"))
    container = Container(ContainerSpec(command="echo kept > /note", storage_opt=["size=4m"]))
    try:
        container.run(remove=False).check()
        assert os.path.ismount(container.files.layer)
        image = container.commit("bounded")
        assert (image.layer_dirs[-1] / "note").read_text() == "kept\n"
    finally:
        container.remove()
    assert not container.files.path.exists()


@pytest.mark.root
def test_a_bounded_layer_works_for_a_user_namespace_container(labkit_home, no_leftovers, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DEFAULTS", str(tmp_path / "none.toml"))
    from labkit.runtime import DEFAULT_NAMESPACES

    result = Container(ContainerSpec(command=FILL, storage_opt=["size=8m"],
                                     namespaces=DEFAULT_NAMESPACES + ("user",))).run()
    assert "No space left on device" in result.stdout, result.stdout + result.stderr


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3 for an ordinary user to run")
def test_where_the_layer_cannot_be_bounded_the_refusal_says_so(tmp_path):
    # An ordinary user may not mount a tmpfs on the host: the kernel refuses, labkit says what it means.
    os.chmod(tmp_path, 0o777)
    for directory in tmp_path.parents:
        if str(directory) == "/tmp":
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o005)
    # The ordinary user reads labkit from a copy beside the test: the checkout itself may sit
    # below a directory only root may enter (a fresh clone in a 0700 mktemp dir, as in CI).
    source = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "labkit", source / "labkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("from pathlib import Path; from labkit.errors import HostError\n"
             "from labkit.runtime.container_dir import mount_layer_tmpfs\n"
             f"Path('{tmp_path}/layer').mkdir()\n"
             f"try: mount_layer_tmpfs(Path('{tmp_path}/layer'), 8 << 20)\n"
             "except HostError as error: print(error)\n")
    ran = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "env",
                          f"PYTHONPATH={source}", SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    assert ran.stdout.startswith("--storage-opt size 8.0 MiB: cannot bound the read-write layer on this host "
                                 "(a tmpfs of that size could not be mounted: Operation not permitted)"), ran.stderr


# The CLI as an ordinary user, pointed (LABKIT_DEFAULTS) at a class file it cannot read.
RUN_WITH_DEFAULTS = """
import os, sys
os.environ["LABKIT_DEFAULTS"] = sys.argv[1]
if sys.argv[2] == "open":
    open(sys.argv[1]).close()
from labkit.cli import command
sys.argv = ["labkit", "run", "--", "true"]
command()
"""


@pytest.mark.root  # becoming another user takes root; root itself reads any file
def test_a_class_file_the_user_cannot_read_is_one_line_naming_it_and_exits_125():
    from ordinary_user import NOBODY, OrdinaryUser

    user = OrdinaryUser()  # its temporary root is 0755, as /etc is (pytest's tmp_path is root's 0700)
    try:
        directory = user.root / "etc-labkit"
        directory.mkdir(mode=0o755)
        path = directory / "defaults.toml"
        path.write_text(CLASS_FILE)
        os.chmod(path, 0o600)  # root's, as a careless `umask 077` leaves /etc/labkit/defaults.toml
        # The kernel's answer: this user cannot open it (the traceback labkit used to print).
        opened = user.run("-c", RUN_WITH_DEFAULTS, str(path), "open")
        assert opened.returncode == 1 and "PermissionError" in opened.stderr, opened.stderr
        ran = user.run("-c", RUN_WITH_DEFAULTS, str(path), "run")
        assert ran.returncode == 125, ran.stdout + ran.stderr
        assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert f"the class defaults file {path} cannot be read by uid {NOBODY}: Permission denied" in ran.stderr
        assert f"chmod a+r {path}" in ran.stderr
        # A directory on the way the user may not enter: the same line, from stat.
        os.chmod(path, 0o644)
        os.chmod(directory, 0o700)
        ran = user.run("-c", RUN_WITH_DEFAULTS, str(path), "run")
        assert ran.returncode == 125 and "Traceback" not in ran.stderr, ran.stderr
        assert f"the class defaults file {path} cannot be read" in ran.stderr
        # Readable, it is obeyed: the class's max refuses more (not a blanket refusal).
        os.chmod(directory, 0o755)
        over = user.run("-c", RUN_WITH_DEFAULTS.replace('"--", "true"', '"--memory", "1g", "--", "true"'),
                        str(path), "run")
        assert over.returncode == 125 and f"[memory] max in {path}" in over.stderr, over.stderr
    finally:
        user.remove()
