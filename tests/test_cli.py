"""`labkit run | doctor | gc | ps` as a user types them (a real subprocess, real kernel)."""

import os
import subprocess
import sys
import time

import pytest


def labkit(*args, home, stdin=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), input=stdin, timeout=120)


@pytest.mark.root
def test_run_passes_output_and_exit_code_through(labkit_home):
    done = labkit("run", "--hostname", "box", "--memory", "32m", "--", "sh", "-c", "hostname; exit 4", home=labkit_home)
    assert done.stdout == "box\n"
    assert done.returncode == 4


@pytest.mark.root
def test_run_with_stdin(labkit_home):
    done = labkit("run", "-i", "--", "tr", "a-z", "A-Z", home=labkit_home, stdin="shout\n")
    assert (done.returncode, done.stdout) == (0, "SHOUT\n")


@pytest.mark.root
def test_run_has_removed_its_container_and_helper_when_the_command_returns(labkit_home):
    """`labkit` skips the interpreter's teardown at exit, not the helper's shutdown: the
    container's directory, mounts and cgroups, and the helper (a fork of the command, so
    it has the command's arguments), are gone by the time the shell gets the exit status."""
    from leak_checks import labkit_cgroups

    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    output = labkit_home / "output"
    with open(output, "w") as file:  # not a pipe: reading one to its end would wait for the helper too
        done = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--", "sh", "-c", f"hostname; : {marker}"],
                              stdout=file, stderr=subprocess.STDOUT, env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    left.append(pid)
        except OSError:
            pass  # exited meanwhile
    assert left == []
    assert done.returncode == 0, output.read_text()
    short_id = output.read_text().strip().removeprefix("labkit-")   # the name's part of the container id
    assert len(short_id) == 8
    assert os.listdir(labkit_home / "containers") == []
    with open("/proc/self/mountinfo") as mounts:
        assert str(labkit_home) not in mounts.read()
    assert not [path for path in labkit_cgroups() if os.path.basename(path).startswith(short_id)]


@pytest.mark.parametrize("args, message, code", [
    (["--memory", "lots", "--", "true"], "--memory 'lots' is not a size", 125),
    (["--image", "nosuch", "--", "true"], "no image named 'nosuch'", 125),   # docker run: 125
    (["-v", "/no/such/dir:/data", "--", "true"], "does not exist on the host", 125),
    pytest.param(["--", "no-such-command"], "command 'no-such-command' not found", 127, marks=pytest.mark.root),
    (["--cpus", "0", "--", "true"], "must be a positive number of cores", 125),
    (["--entrypoint", ""], "nothing to run", 125),
])
def test_bad_input_is_one_clear_line_and_nothing_is_left(labkit_home, args, message, code):
    done = labkit("run", *args, home=labkit_home)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    containers = labkit_home / "containers"
    assert not containers.exists() or os.listdir(containers) == []


@pytest.mark.root
def test_run_without_a_command_runs_the_images_cmd_and_entrypoint_replaces_it(labkit_home):
    done = labkit("run", "--", home=labkit_home)  # busybox's CMD is sh, which reads no stdin and ends
    assert (done.returncode, done.stderr) == (0, "")
    done = labkit("run", "--entrypoint", "echo", "--", "hi", home=labkit_home)
    assert (done.returncode, done.stdout) == (0, "hi\n")


@pytest.mark.root
def test_doctor_reports_each_namespace_and_the_cgroup_mode(labkit_home):
    done = labkit("doctor", home=labkit_home)
    for kind in ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"):
        assert f"namespace {kind}" in done.stdout
    assert "cgroup mode" in done.stdout and "overlay filesystem" in done.stdout
    assert done.returncode == 0, done.stdout


def test_gc_and_ps_run_on_an_empty_home(labkit_home):
    assert labkit("gc", home=labkit_home).returncode == 0
    listing = labkit("ps", home=labkit_home)
    assert listing.returncode == 0 and listing.stdout.startswith("NAME")


@pytest.mark.root
def test_run_python_runs_the_hosts_interpreter_in_busybox(labkit_home):
    done = labkit("run", "--python", "--", "python3", "-c", "import os, sys; print(os.getpid(), sys.version_info[:2])",
                  home=labkit_home)
    assert (done.returncode, done.stdout) == (0, f"1 {tuple(sys.version_info[:2])}\n"), done.stderr
    without = labkit("run", "--", "python3", "-c", "pass", home=labkit_home)
    assert (without.returncode, "command 'python3' not found" in without.stderr) == (127, True)


def test_python_spec_mounts_the_interpreter_read_only_once():
    from labkit.runtime import ContainerSpec

    spec = ContainerSpec(command=["python3", "-c", "pass"], python=True).validated()
    again = spec.validated()
    interpreter = os.path.realpath(sys.executable)
    assert spec.command[0] == again.command[0] == interpreter
    assert [v.target for v in again.volumes] == [v.target for v in spec.volumes]
    assert all(v.readonly and os.path.exists(v.target) for v in spec.volumes), "read-only, at host paths"
    assert interpreter in [v.target for v in spec.volumes]
    assert ContainerSpec(command=["python3"]).validated().volumes == []


def test_ps_says_orphaned_when_the_runtime_finds_the_owner_gone(labkit_home):
    from labkit.runtime.client.state import containers_root, write_state

    gone = os.getpid()  # a live PID, but with a start time it never had: a PID reused since
    directory = containers_root(labkit_home) / "0123456789abcdef"
    directory.mkdir(parents=True)
    write_state(directory, {"id": "0123456789abcdef", "name": "left", "image": "busybox", "status": "running",
                            "owner_pid": gone, "owner_start": -1, "client_pid": gone})
    line = [row for row in labkit("ps", "-a", home=labkit_home).stdout.splitlines() if row.startswith("left ")]
    assert line and line[0].split()[3] == "orphaned"
    assert "left " not in labkit("ps", home=labkit_home).stdout   # docker ps: only what is up


@pytest.mark.root
def test_ps_shows_the_true_state_running_then_exited_then_nothing(labkit_home, monkeypatch):
    """A detached container is "running" while its command runs (it used to show as
    "created", the state the helper writes before the start), "exited" under -a once it
    stopped, and gone from both once removed."""
    from labkit.runtime import Container, ContainerSpec

    monkeypatch.setenv("LABKIT_HOME", str(labkit_home))

    def status():
        rows = {tuple(row.split()[:1]): row.split()[3] for row in
                labkit("ps", "-a", home=labkit_home).stdout.splitlines()[1:]}
        shown = [row.split()[0] for row in labkit("ps", home=labkit_home).stdout.splitlines()[1:]]
        return rows.get(("state-probe",)), "state-probe" in shown

    container = Container(ContainerSpec(command=["sleep", "100"], name="state-probe")).start(detach=True)
    try:
        assert status() == ("running", True)
        container.stop(grace=0.5)
        assert status() == ("exited", False)
    finally:
        container.remove()
    assert status() == (None, False)


# --- one table of verbs and options ---------------------------------------------------------


def labkit_modules_after(code) -> set:
    """The labkit modules a fresh interpreter holds after `code` (argparse's exit caught)."""
    probe = ("import sys\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
             "except SystemExit:\n    pass\n"
             "print(' '.join(sorted(m for m in sys.modules if m == 'labkit' or m.startswith('labkit.'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.splitlines()[-1].split())


def test_help_imports_no_verb_module():
    loaded = labkit_modules_after("from labkit.cli import main\nmain(['--help'])")
    assert loaded == {"labkit", "labkit.cli", "labkit.errors", "labkit.verbs"}


def run_probe(home, body) -> str:
    """What a fresh interpreter prints after `labkit run -- true` in it, then `body`; a home
    whose busybox image is already in place, so the run does only what every run does."""
    labkit("run", "--", "true", home=home)
    probe = ("import os, sys\nfrom labkit.cli import main\n" + body)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, LABKIT_HOME=str(home)))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.root
def test_run_starts_no_program_but_the_containers(labkit_home):
    """No helper program of the C library (find_library runs `ldconfig -p`), no `ip`: each
    costs a fork and an exec on every run."""
    started = run_probe(labkit_home, (
        "def note(event, args):\n"
        "    if event in ('subprocess.Popen', 'os.posix_spawn', 'os.system'):\n"
        "        os.write(1, f'{event} {args[0]}\\n'.encode())\n"
        "sys.addaudithook(note)\n"
        "assert main(['run', '--', 'true']) == 0\n"
        "import subprocess\n"
        "subprocess.run(['true'])  # the probe's own check that it sees a program start\n"))
    assert started.splitlines() == ["subprocess.Popen true"]


@pytest.mark.root
def test_run_loads_no_netlink_and_no_other_verb_in_the_command_or_its_helper(labkit_home):
    """`labkit run --network none` needs neither pyroute2 nor labkit.net's netlink side, nor
    any other verb's module: not in the command, and not in the helper forked from it
    (its modules are listed when it takes the start request)."""
    from labkit.cli import PLUGINS

    printed = run_probe(labkit_home, (
        "from labkit.runtime.helper import zygote\n"
        "take_start = zygote.Zygote.op_start\n"
        "def listing_start(self, request, fds):\n"
        "    print('helper', *sorted(sys.modules), flush=True)\n"
        "    return take_start(self, request, fds)\n"
        "zygote.Zygote.op_start = listing_start\n"
        "assert main(['run', '--', 'true']) == 0\n"
        "print('command', *sorted(sys.modules))\n"))
    listings = {line.split()[0]: set(line.split()[1:]) for line in printed.splitlines()}
    assert set(listings) == {"helper", "command"}
    not_for_run = {module for module, *_ in PLUGINS} | {
        "labkit.net.bridge", "labkit.net.rtnl", "labkit.net.hooks", "labkit.net.ports", "labkit.net.veth",
        "labkit.images.builder", "labkit.images.transfer", "labkit.magics", "labkit.doctor", "labkit.widgets",
        # as root: the rootless overlay's probe, fuse-overlayfs and the shared user namespace's keeper
        "labkit.images.rootless_overlay", "labkit.images.fuse_overlay", "labkit.net.rootless_bridge"}
    assert "labkit.runtime.client.container" in listings["command"] and "labkit.runtime.inside.recipe" in listings["helper"]
    for process, loaded in listings.items():
        assert not loaded & not_for_run, process
        assert not {m for m in loaded if m.split(".")[0] in ("pyroute2", "IPython", "matplotlib")}, process


@pytest.mark.root
def test_the_command_leaves_the_default_seccomp_profile_to_its_helper(labkit_home):
    """`labkit run` names Docker's default profile and its helper compiles it (or reads it
    from its cache): the command itself loads no libseccomp tables."""
    printed = run_probe(labkit_home, "assert main(['run', '--', 'true']) == 0\nprint(*sorted(sys.modules))\n")
    assert "labkit.security.options" in printed.split()
    assert "labkit.linux.seccomp" not in printed.split()


def test_help_lists_every_verb_also_when_asked_before_one(labkit_home):
    """`labkit run …` builds run's parser alone (each parser costs gettext lookups on disk);
    the top level's --help, wherever it stands, still lists every verb."""
    from labkit.cli import PLUGINS, VERBS, build_parser

    every = {verb.name for verb in VERBS} | {name for *_, named in PLUGINS for name in named}
    for args in (["--help"], ["-h", "run"], ["--help", "image"]):
        shown = labkit(*args, home=labkit_home).stdout
        assert {name for name in every if f"    {name}" in shown} == every, args
    assert subcommand_names(build_parser("run")) == {"run"}


def test_a_verb_imports_its_own_module_and_no_other():
    from labkit.cli import PLUGINS

    loaded = labkit_modules_after("from labkit.cli import main\nmain(['network', '--help'])")
    assert "labkit.net.cli" in loaded
    assert not loaded & {module for module, *_ in PLUGINS if module != "labkit.net.cli"}
    assert "labkit.runtime" not in loaded


def test_a_new_container_option_is_one_entry_and_reaches_every_front_end():
    from labkit import cli, verbs
    from labkit.magics.container import cell_parser, line_parser
    from labkit.verbs import option

    verbs.CONTAINER_OPTIONS.append(option("--box-name", spec_field="hostname", help="a second spelling"))
    try:
        parsed = [cli.build_parser("run").parse_args(["run", "--box-name", "b1", "--", "true"]),
                  cell_parser().parse_args(["--box-name", "b1"]),
                  line_parser().parse_args(["run", "--box-name", "b1", "--", "true"])]
        specs = [verbs.spec_from_options(options, ["true"]) for options in parsed]
    finally:
        verbs.CONTAINER_OPTIONS.pop()
    assert [spec.hostname for spec in specs] == ["b1"] * 3
    with pytest.raises(SystemExit):
        cli.build_parser("run").parse_args(["run", "--box-name", "b1", "--", "true"])


def test_the_cli_and_the_magics_read_the_option_table_not_each_other():
    assert "labkit.cli" not in labkit_modules_after("import labkit.magics.container")
    assert not {m for m in labkit_modules_after("import labkit.cli") if m.startswith("labkit.magics")}


def test_a_new_image_verb_is_one_entry_in_the_cli_and_the_magic(capsys):
    from labkit import cli
    from labkit.images.cli import IMAGE_VERBS
    from labkit.magics.image import line_parser
    from labkit.verbs import Verb, option

    IMAGE_VERBS.append(Verb("greet", "say hello", lambda options: print(f"hello {options.who}"), (option("who"),)))
    try:
        assert cli.main(["image", "greet", "cli"]) == 0
        options = line_parser().parse_args(["greet", "magic"])
        options.func(options)
    finally:
        IMAGE_VERBS.pop()
    assert capsys.readouterr().out == "hello cli\nhello magic\n"


def subcommand_names(parser) -> set:
    import argparse

    return set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_image_magic_and_labkit_image_accept_the_same_verbs():
    from labkit.cli import build_parser
    from labkit.magics.image import line_parser

    image = next(a for a in build_parser("image")._actions if a.dest == "verb").choices["image"]
    assert subcommand_names(image) == subcommand_names(line_parser())
    assert {"ls", "inspect", "history", "layers", "diff", "rm", "prune", "import", "export"} <= subcommand_names(image)


def test_plugins_declare_exactly_the_verbs_they_add():
    """`labkit --help` lists PLUGINS' verbs without importing them: the list must stay true."""
    import argparse
    import importlib

    from labkit.cli import PLUGINS

    for module_name, function, declared in PLUGINS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        getattr(importlib.import_module(module_name), function)(subparsers)
        added = {action.dest: action.help for action in subparsers._choices_actions}
        assert added == declared, module_name


@pytest.mark.root
def test_a_one_container_helper_started_by_exec_is_the_forked_ones_twin(labkit_home):
    """A caller that asked for a one-container helper but cannot fork it (a thread has
    started) gets it by exec: no ready slots, and its removals made in the helper, not by
    a janitor process. Before, the exec'd one was told only LABKIT_POOL=0 and forked a
    janitor at its first removal."""
    probe = (
        "import os, threading\n"
        "from labkit.runtime.client import helper_client\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "helper_client.fork_from_caller(one_container=True)\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()   # not single-threaded\n"
        "assert Container(ContainerSpec(command='true')).run().exit_code == 0\n"
        "helper = helper_client.get_helper()\n"
        "assert not isinstance(helper.process, helper_client.ForkedHelper)\n"
        "pong = helper_client._ping_own_helper('probe')\n"
        "children = open(f'/proc/{helper.pid}/task/{helper.pid}/children').read().split()\n"
        "print(pong['pool_size'], len(pong['ready_slots']), len(children))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "0"]
