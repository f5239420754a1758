"""Bad input, row by row: every option of the shared option table (labkit.cli's
CONTAINER_OPTIONS, which `labkit run`, `%%container` and the Python API all take) given
garbage, overflows, NaN and infinity, empty, huge and negative values, and reserved paths;
image names, build recipes and archives with hostile members.

Each row must give one line that names the option (or the recipe line, or the archive
entry) and the value, exit 125 from `labkit` (Docker's CLI code for its own errors), show
no traceback and leave nothing behind. The option rows run `labkit run`'s own main() in
this process: validation comes before the helper is forked, so they need no root. The
rows of the issue's list run again as a real `labkit` process as root, where nothing
left (container dir, cgroup, mount) is checked on the host; so do recipes and archives.
"""

import gc
import io
import os
import subprocess
import sys
import tarfile

import pytest
from kernel_fixtures import container_ids, kernel, labkit_kernelspec  # noqa: F401 — fixtures are used by name

from labkit.errors import BadImageInput, ConfigError

# (arguments to `labkit run`, what the one line must name). A row's value is in the line
# as given (quoted) or as argparse parsed it (a float option: nan, inf).
OPTION_ROWS = [
    # --image: names the store cannot hold
    (["--image", ""], "--image ''"),
    (["--image", "../etc"], "--image '../etc'"),
    (["--image", "a b"], "--image 'a b'"),
    (["--image", "x" * 200], "--image 'xxxx"),
    (["--image", "UP/per"], "--image 'UP/per'"),
    # --name, --hostname
    (["--name", ""], "--name ''"),
    (["--name=-lead"], "--name '-lead'"),
    (["--name", "n" * 64], "--name 'nnnn"),
    (["--name", "a/b"], "--name 'a/b'"),
    (["--hostname", ""], "--hostname ''"),
    (["--name", "web\n"], "--name 'web\\n'"),          # $ matched before a final newline
    (["--hostname", "web\n"], "--hostname 'web\\n'"),
    (["--hostname", "h" * 64], "--hostname 'hhhh"),
    (["--hostname", "bad_host!"], "--hostname 'bad_host!'"),
    # --memory: garbage, empty, negative, zero, NaN, inf, exponent, overflow, too little, 400 digits
    (["--memory", "lots"], "--memory 'lots'"),
    (["--memory", ""], "--memory ''"),
    (["--memory=-1"], "--memory '-1'"),
    (["--memory", "0"], "--memory '0'"),
    (["--memory", "nan"], "--memory 'nan'"),
    (["--memory", "inf"], "--memory 'inf'"),
    (["--memory", "1e3m"], "--memory '1e3m'"),
    (["--memory", "99999999999999g"], "--memory '99999999999999g'"),
    (["--memory", "1"], "--memory '1'"),
    (["--memory", "9" * 400], "--memory '9999"),
    # --cpus
    (["--cpus", "abc"], "--cpus 'abc'"),
    (["--cpus", ""], "--cpus ''"),
    (["--cpus", "nan"], "--cpus 'nan'"),
    (["--cpus", "inf"], "--cpus 'inf'"),
    (["--cpus=-1"], "--cpus '-1'"),
    (["--cpus", "0"], "--cpus '0'"),
    (["--cpus", "1e9"], "--cpus '1e9'"),
    (["--cpus", "0.0000001"], "--cpus '0.0000001'"),
    (["--cpus", "1e400"], "--cpus '1e400'"),
    # --pids-limit
    (["--pids-limit", "x"], "--pids-limit 'x'"),
    (["--pids-limit", ""], "--pids-limit ''"),
    (["--pids-limit", "0"], "--pids-limit '0'"),
    (["--pids-limit=-5"], "--pids-limit '-5'"),
    (["--pids-limit", "1.5"], "--pids-limit '1.5'"),
    (["--pids-limit", "4194305"], "--pids-limit '4194305'"),
    (["--pids-limit", "99999999999999999999"], "--pids-limit '99999999999999999999'"),
    # --env
    (["--env", ""], "--env ''"),
    (["--env", "=x"], "--env '=x'"),
    (["--env", "=x"], "--env '=x'"),
    (["--env-file", "/nonexistent/env"], "--env-file '/nonexistent/env'"),
    (["--env", "A=\0"], "--env 'A=\\x00'"),
    # --volume: form, missing source, relative target, reserved targets (as runc refuses)
    (["--volume", "/tmp"], "--volume '/tmp'"),
    (["--volume", "/tmp:"], "--volume '/tmp:'"),
    (["--volume", ":/data"], "--volume ':/data'"),
    (["--volume", "/tmp:/data:rx"], "--volume '/tmp:/data:rx'"),
    (["--volume", "/no/such/dir:/data"], "--volume source '/no/such/dir'"),
    (["--volume", "/tmp:data"], "--volume target 'data'"),
    (["--volume", "/tmp:/"], "--volume target '/'"),
    (["--volume", "/tmp:/proc"], "--volume target '/proc'"),
    (["--volume", "/tmp:/proc/sys"], "--volume target '/proc/sys'"),
    (["--volume", "/tmp:/proc/../proc"], "--volume target '/proc/../proc'"),
    (["--volume", "/tmp://proc/"], "--volume target '//proc/'"),
    (["--volume", "/tmp:/sys"], "--volume target '/sys'"),
    (["--volume", "/tmp:/dev"], "--volume target '/dev'"),
    # --workdir
    (["--workdir", ""], "--workdir ''"),
    (["--workdir", "relative"], "--workdir 'relative'"),
    # --user: beyond uid_t, (uid_t)-1, negative, too many parts, empty parts, not a name,
    # outside the user namespace's map
    (["--user", "99999999999"], "--user '99999999999'"),
    (["--user", "4294967295"], "--user '4294967295'"),
    (["--user=-5"], "--user '-5'"),
    (["--user", "a:b:c"], "--user 'a:b:c'"),
    (["--user", ":"], "--user ':'"),
    (["--user", "1000:"], "--user '1000:'"),
    (["--user", "bad name"], "--user 'bad name'"),
    (["--userns", "--user", "70000"], "--user '70000'"),
    # --timeout (argparse parses it as a float: garbage is its own usage error)
    (["--timeout", "nan"], "--timeout nan"),
    (["--timeout", "inf"], "--timeout inf"),
    (["--timeout=-1"], "--timeout -1"),
    (["--timeout", "0"], "--timeout 0"),
    (["--timeout", "abc"], "--timeout: invalid float value: 'abc'"),
    # --net, --publish
    (["--net", "bogus"], "--net 'bogus'"),
    (["--net", "container:"], "--net 'container:'"),
    (["--net", "container:bad/name"], "--net 'container:bad/name'"),
    (["--publish", "8080:80"], "publishing ports (8080:80) needs --net bridge"),
    (["--net", "bridge", "--publish", "99999:80"], "--publish '99999:80'"),
    (["--net", "bridge", "--publish", "abc"], "--publish 'abc'"),
    (["--net", "bridge", "--publish", "80:80/udp"], "--publish '80:80/udp'"),
    (["--net", "bridge", "--publish", "1.2.3:80:80"], "--publish '1.2.3:80:80'"),
    (["--net", "bridge", "--publish", "::1:80:80"], "--publish '::1:80:80'"),
    (["--net", "bridge", "--publish", "127.0.0.1::80"], "--publish '127.0.0.1::80'"),
    # --cap-add, --cap-drop, --security-opt
    (["--cap-add", "NOPE"], "--cap-add 'NOPE'"),
    (["--cap-add", ""], "--cap-add ''"),
    (["--cap-drop", "NOPE"], "--cap-drop 'NOPE'"),
    (["--security-opt", "bogus"], "--security-opt 'bogus'"),
    (["--security-opt", "seccomp=/no/such.json"], "/no/such.json"),
    # --device-read-bps, --device-write-bps
    (["--device-read-bps", "/dev/vda"], "--device-read-bps '/dev/vda'"),
    (["--device-read-bps", "/no/such:1m"], "--device-read-bps '/no/such:1m'"),
    (["--device-read-bps", "/dev/null:1m"], "--device-read-bps '/dev/null:1m'"),
    (["--device-write-bps", ":1m"], "--device-write-bps ':1m'"),
    # --timens (a float: as --timeout)
    (["--timens", "nan"], "--timens nan"),
    (["--timens", "inf"], "--timens inf"),
    (["--timens=-1e12"], "--timens -1000000000000.0"),
    (["--timens", "1e12"], "--timens 1000000000000.0"),
    (["--timens", "abc"], "--timens: invalid float value: 'abc'"),
    # --tmpfs
    (["--tmpfs", "relative"], "--tmpfs 'relative'"),
    (["--tmpfs", "/"], "--tmpfs '/'"),
    (["--tmpfs", "/proc"], "--tmpfs '/proc'"),
    (["--tmpfs", "/proc/sys"], "--tmpfs '/proc/sys'"),
    (["--tmpfs", "/sys"], "--tmpfs '/sys'"),
    (["--tmpfs", "/dev"], "--tmpfs '/dev'"),
    (["--tmpfs", "/a,b"], "--tmpfs '/a,b'"),
    (["--tmpfs", "/tmp:size=lots"], "--tmpfs '/tmp:size=lots'"),
    (["--tmpfs", "/tmp:mode=999"], "--tmpfs '/tmp:mode=999'"),
    (["--tmpfs", "/tmp:uid=-1"], "--tmpfs '/tmp:uid=-1'"),
    (["--tmpfs", "/tmp:nosuchoption"], "--tmpfs '/tmp:nosuchoption'"),
    (["--tmpfs", "/tmp:size"], "--tmpfs '/tmp:size'"),
    # --storage-opt, --log-opt: Docker's KEY=VALUE, then each value as its kind
    (["--storage-opt", "size=lots"], "--storage-opt size 'lots'"),
    (["--storage-opt", "size=0"], "--storage-opt size '0'"),
    (["--storage-opt", "size"], "--storage-opt 'size'"),
    (["--storage-opt", "nosuch=1"], "--storage-opt nosuch=1"),
    (["--log-opt", "max-size=-1"], "--log-opt max-size '-1'"),
    (["--log-opt", "max-file=0"], "--log-opt max-file '0'"),
    (["--log-opt", "max-file=x"], "--log-opt max-file 'x'"),
    (["--log-opt", "color=1"], "--log-opt color=1"),
    # --entrypoint (an empty one with nothing to run: tests/test_cli.py, as it is found
    # once the image is known)
    (["--entrypoint", "a\0b"], "--entrypoint 'a\\x00b'"),
    # an unknown option
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]
# The rows argparse itself lets through, for the spec alone.
SPEC_ROWS = [row for row in OPTION_ROWS if "invalid float" not in row[1] and "unrecognized" not in row[1]]

# The issue's list, run again as a real `labkit` process (root): what was a traceback, a
# raw cgroup write error or an unrelated setup failure, and what was accepted.
CLI_ROWS = [
    (["--user", "99999999999"], "--user '99999999999'"),
    (["--timens", "nan"], "--timens nan"),
    (["--cpus", "1e9"], "--cpus '1e9'"),
    (["--volume", "/tmp:/"], "--volume target '/'"),
    (["--volume", "/tmp:/proc"], "--volume target '/proc'"),
    (["--tmpfs", "/proc"], "--tmpfs '/proc'"),
    (["--cpus", "0.0000001"], "--cpus '0.0000001'"),
    (["--memory", "99999999999999g"], "--memory '99999999999999g'"),
    (["--pids-limit", "99999999999999999999"], "--pids-limit '99999999999999999999'"),
    (["--userns", "--user", "70000"], "--user '70000'"),
]


def ids(rows) -> list:
    return [" ".join(args).replace("\0", "NUL")[:40] or "(none)" for args, _ in rows]


def test_every_option_that_takes_a_value_has_rows():
    from labkit.verbs import CONTAINER_OPTIONS

    covered = {arg.split("=")[0] for args, _ in OPTION_ROWS for arg in args if arg.startswith("--")}
    takes_value = {entry.flags[0] for entry in CONTAINER_OPTIONS if entry.kwargs.get("action") != "store_true"}
    assert takes_value - covered == set()


@pytest.fixture
def in_process_cli(tmp_path, monkeypatch, capsys):
    """`labkit run ARGS -- true` through the CLI's own main(), in this process: (exit
    status, stderr). Nothing may appear in LABKIT_HOME."""
    from labkit.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("LABKIT_HOME", str(home))

    def no_container(*args, **kwargs):
        raise AssertionError("this bad input got past validation: labkit run went on to start a container")

    monkeypatch.setattr("labkit.runtime.client.helper_client.fork_from_caller", no_container)
    # labkit run executes itself again from the sealed interpreter first: here that would
    # be pytest, started over. The real process's rows (CLI_ROWS) go through it.
    monkeypatch.setattr("labkit.linux.sealed_exe.run_sealed", lambda: None)
    collecting = gc.isenabled()

    def run(args, command=("--", "true")):
        try:
            code = main(["run", *args, *command])
        except SystemExit as usage:   # argparse's own errors
            code = usage.code
        finally:
            if collecting:
                gc.enable()   # cmd_run turns the collector off for its short-lived process
        return code, capsys.readouterr().err

    yield run
    assert not home.exists() or os.listdir(home) == [], "bad input made something in LABKIT_HOME"


def assert_one_clear_line(stderr, named):
    lines = [line for line in stderr.splitlines() if not line.startswith("usage:") and line.strip()]
    assert len(lines) == 1, stderr
    assert named in lines[0], f"{named!r} not in {lines[0]!r}"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args, named", OPTION_ROWS, ids=ids(OPTION_ROWS))
def test_a_bad_option_is_one_line_naming_it_and_exits_125(in_process_cli, args, named):
    code, stderr = in_process_cli(args)
    assert code == 125, stderr
    assert_one_clear_line(stderr, named)


@pytest.mark.parametrize("args, named", SPEC_ROWS, ids=ids(SPEC_ROWS))
def test_the_python_api_refuses_the_same_values_with_a_config_error(args, named):
    """What the magics and `Container(...)` call: ContainerSpec.validated()."""
    from labkit.cli import build_parser
    from labkit.verbs import spec_from_options

    options = build_parser("run").parse_args(["run", *args, "--", "true"])
    with pytest.raises(ConfigError) as refused:
        spec_from_options(options, ["true"]).validated()
    assert "\n" not in str(refused.value) and named in str(refused.value)


def test_good_values_at_each_bound_pass():
    """The refusals above are bounds, not a blanket no: the values at each edge pass."""
    from labkit.runtime import ContainerSpec

    spec = ContainerSpec(memory="6m", cpus=0.01, pids=4194304, user="4294967294:0", timeout=1e-3,
                         volumes=["/tmp:/dev/shm/data", "/tmp:/sys-like", "/tmp:/procfs"],
                         tmpfs=["/dev/shm", "/run"], time_offset=-1).validated()
    assert (spec.memory, spec.cpus, spec.pids, spec.user) == (6 << 20, 0.01, 4194304, "4294967294:0")
    assert [v.target for v in spec.volumes] == ["/dev/shm/data", "/sys-like", "/procfs"]
    spec = ContainerSpec(cpus="175921860", namespaces=("mnt", "user"), user="65535").validated()
    assert spec.cpus == 175921860.0 and spec.user == "65535"


# --- as a real `labkit` process, as root --------------------------------------------------

def labkit(*args, home, cwd=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), timeout=300, cwd=cwd)


@pytest.fixture
def nothing_left_on_the_host(labkit_home):
    """Asserts no container was begun (so no cgroup or mount was made for one: a container's
    directory comes first, and the helper makes its cgroup only once asked to start it), no
    scratch dir is left, and no mount mentions this home. Other tests on this host make
    cgroups of their own meanwhile, so the cgroups are judged by that order, not by a diff."""
    from leak_checks import labkit_mounts

    yield labkit_home
    assert not (labkit_home / "containers").exists() or os.listdir(labkit_home / "containers") == [], \
        "a container was begun for bad input"
    scratch = labkit_home / "tmp"
    assert not scratch.exists() or os.listdir(scratch) == [], "a scratch dir was left behind"
    assert labkit_mounts(labkit_home) == [], "a mount was left behind"


@pytest.mark.root
@pytest.mark.parametrize("args, named", CLI_ROWS, ids=ids(CLI_ROWS))
def test_the_issues_bad_inputs_through_labkit_run(nothing_left_on_the_host, args, named):
    done = labkit("run", *args, "--", "true", home=nothing_left_on_the_host)
    assert done.returncode == 125, done.stderr
    assert_one_clear_line(done.stderr, named)


@pytest.mark.root
def test_the_container_exit_status_still_passes_through(labkit_home):
    """125 is labkit's own: a command that exits 125 (or anything) is passed on as it is."""
    assert labkit("run", "--", "sh", "-c", "exit 125", home=labkit_home).returncode == 125
    assert labkit("run", "--", "sh", "-c", "exit 3", home=labkit_home).returncode == 3


# --- build recipes -------------------------------------------------------------------------

TALL = "FROM busybox\n" + "COPY f /f\nCOPY g /g\n" * 253   # 506 COPY layers on busybox's one

RECIPE_ROWS = [
    ("", "recipe"),
    ("RUN true\n", "recipe line 1"),
    ("FROM busybox\nFROB x\n", "recipe line 2"),
    ("FROM busybox\nHEALTHCHECK CMD true\n", "recipe line 2: HEALTHCHECK is not supported"),
    ("FROM no-such-image\n", "recipe line 1: FROM no-such-image"),
    ("FROM busybox\nENV\n", "recipe line 2"),
    ("FROM busybox\nCOPY ../outside /x\n", "recipe line 2"),
    ("FROM busybox\nCOPY --bogus=1 f /f\n", "recipe line 2: COPY option(s) --bogus"),
    (TALL, "overlayfs stacks at most 500 lower layers"),
]


@pytest.mark.root
@pytest.mark.parametrize("recipe, named", RECIPE_ROWS, ids=["empty", "no-from", "unknown", "healthcheck", "missing-base",
                                                            "empty-env", "copy-outside", "copy-flag", "505-layers"])
def test_a_bad_recipe_is_one_line_naming_its_line_and_exits_125(nothing_left_on_the_host, tmp_path, recipe, named):
    context = tmp_path / "context"
    context.mkdir()
    (context / "f").write_text("f\n")
    (context / "g").write_text("g\n")
    (context / "Dockerfile").write_text(recipe)
    done = labkit("build", "-t", "bad", str(context), home=nothing_left_on_the_host)
    assert done.returncode == 125, done.stderr
    assert_one_clear_line(done.stderr, named)
    assert "bad" not in labkit("image", "ls", home=nothing_left_on_the_host).stdout.split()


@pytest.mark.root
def test_a_tall_image_says_which_line_went_over_overlays_limit(nothing_left_on_the_host, tmp_path):
    """499 image layers and the init layer are overlay's 500: the step that would make the
    500th image layer is the one named (line 1 is FROM; COPY layers alternate f and g)."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "f").write_text("f\n")
    (context / "g").write_text("g\n")
    (context / "Dockerfile").write_text(TALL)
    done = labkit("build", "-t", "tall", str(context), home=nothing_left_on_the_host)
    assert done.returncode == 125
    assert "recipe line 500: COPY would make layer 500" in done.stderr, done.stderr


# --- archives with hostile members ------------------------------------------------------------

def archive_with(tmp_path, *members) -> str:
    """A rootfs tarball: a bin/ directory, then each (TarInfo, data) member."""
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        top = tarfile.TarInfo("bin")
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(top)
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return str(path)


def member(name, kind=tarfile.REGTYPE, linkname="", data=b"x"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info, data


ARCHIVE_ROWS = {
    "6-KB name": ([member("a" * 6000)], "has a part of 6000 bytes"),
    "name part of 300": ([member("d/" + "b" * 300)], "has a part of 300 bytes"),
    "path over PATH_MAX": ([member("/".join(["c" * 200] * 21))], "longer than Linux's 4095 bytes"),
    "2100 deep": ([member("/".join(["d"] * 2100) + "/f")], "2101 directories deep"),
    "absolute": ([member("/etc/passwd")], "is an absolute path"),
    "dot-dot": ([member("bin/../../outside")], "contains '..'"),
    "device": ([member("bin/sda", tarfile.BLKTYPE)], "device node"),
    "symlink out": ([member("bin/up", tarfile.SYMTYPE, "../../etc")], "climbs out of the image root"),
    "long symlink": ([member("bin/far", tarfile.SYMTYPE, "x" * 5000)], "longer than Linux's 4095 bytes"),
    "through a symlink": ([member("bin/lnk", tarfile.SYMTYPE, "/etc"), member("bin/lnk/passwd")],
                          "would be written through 'bin/lnk'"),
    "twice": ([member("bin/f"), member("bin/f")], "appears twice"),
    "not a tar": (None, "is not a readable tar archive"),
    "hard link out": ([member("bin/h", tarfile.LNKTYPE, "etc/shadow")], "hard link"),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(ARCHIVE_ROWS))
def test_a_hostile_archive_member_is_one_line_naming_it_and_exits_125(nothing_left_on_the_host, tmp_path, case):
    members, named = ARCHIVE_ROWS[case]
    if members is None:
        path = tmp_path / "garbage.tar"
        path.write_bytes(b"not an archive\n" * 100)
    else:
        path = archive_with(tmp_path, *members)
    done = labkit("image", "import", "--name", "hostile", path, home=nothing_left_on_the_host)
    assert done.returncode == 125, done.stderr
    assert_one_clear_line(done.stderr, named)
    assert len(done.stderr) < 1000, "a 6 KB name is shown shortened"
    assert "hostile" not in labkit("image", "ls", home=nothing_left_on_the_host).stdout.split()


def test_a_hostile_member_is_a_bad_image_input_without_root(tmp_path):
    from labkit.images.extract import extract_layer

    target = tmp_path / "layer"
    target.mkdir()
    with open(archive_with(tmp_path, member("a" * 6000)), "rb") as stream:
        with pytest.raises(BadImageInput, match="has a part of 6000 bytes"):
            extract_layer(stream, target)


# --- the notebook magics: a real exception, so that the notebook fails loudly ---------------

MAGIC_ROWS = [
    ("%%container --cpus 1e9\ntrue", "ConfigError", "--cpus '1e9'"),
    ("%%container --volume /tmp:/proc\ntrue", "ConfigError", "--volume target '/proc'"),
    ("%%container --tmpfs /proc\ntrue", "ConfigError", "--tmpfs '/proc'"),
    ("%%container --user 99999999999\ntrue", "ConfigError", "--user '99999999999'"),
    ("%%container --timens nan\ntrue", "ConfigError", "--timens nan"),
    ("%container run -d --memory 99999999999999g -- sleep 1", "ConfigError", "--memory '99999999999999g'"),
]


@pytest.mark.root
def test_bad_input_in_a_magic_fails_the_cell_with_one_line(kernel):
    for cell, ename, named in MAGIC_ROWS:
        reply = kernel.run(cell)
        assert (reply.status, reply.ename) == ("error", ename), cell
        assert named in reply.evalue and "\n" not in reply.evalue, reply.evalue
        assert [kind for kind, _ in reply.messages] == ["error"], "an error message, not a printed line"
    assert container_ids(kernel.home) == []


@pytest.mark.root
@pytest.mark.parametrize("keywords, named", [
    (dict(user="99999999999"), "--user '99999999999'"),
    (dict(env=["=NOKEY"]), "--env '=NOKEY'"),
    (dict(workdir="relative"), "--workdir 'relative'"),
    (dict(timeout=float("nan")), "--timeout nan"),
], ids=["user", "env", "workdir", "timeout"])
def test_exec_checks_its_options_as_the_spec_does(no_leftovers, keywords, named):
    from labkit.runtime import Container, ContainerSpec

    container = Container(ContainerSpec(command=["sleep", "60"]))
    container.start(detach=True)
    try:
        with pytest.raises(ConfigError, match=named.replace("'", ".")):
            container.exec(["true"], **keywords)
        assert container.top() and len(container.top()) == 1, "no process was started for the bad exec"
    finally:
        container.remove()


@pytest.mark.root
def test_without_the_check_a_volume_replaces_the_masked_proc(no_leftovers, tmp_path, monkeypatch):
    """What the /proc refusal prevents: with the check taken out, a volume at /proc hides
    the container's own procfs (and with it every mask Docker's profile puts on it)."""
    from labkit.runtime import Container, ContainerSpec

    shown = tmp_path / "shown"
    shown.mkdir()
    (shown / "marker").write_text("host directory\n")
    with pytest.raises(ConfigError, match="--volume target '/proc'"):
        Container(ContainerSpec(command=["cat", "/proc/marker"], volumes=[f"{shown}:/proc"]))
    monkeypatch.setattr(sys.modules[ContainerSpec.__module__], "mount_target", lambda path, what: path)
    result = Container(ContainerSpec(command=["cat", "/proc/marker"], volumes=[f"{shown}:/proc"])).run()
    assert (result.exit_code, result.stdout) == (0, "host directory\n"), result.stderr


# --- members that got past the checks above: whiteouts of nothing, numbers out of range ---------------

def with_pax(name, **headers):
    info, data = member(name)
    info.pax_headers = {key: str(value) for key, value in headers.items()}
    return info, data


MORE_ARCHIVE_ROWS = {
    "whiteout of nothing": ([member("bin/.wh.")], "a whiteout of '', which names no file"),
    "whiteout of ..": ([member(".wh...")], "a whiteout of '..', which names no file"),
    "uid past 32 bits": ([with_pax("bin/f", uid=99999999999)], "its uid 99999999999 is not an id Linux has"),
    "negative gid": ([with_pax("bin/f", gid=-5)], "its gid -5 is not an id Linux has"),
    "mtime 1e300": ([with_pax("bin/f", mtime="1e300")], "its modification time 1e+300 is not a time"),
    "mtime nan": ([with_pax("bin/f", mtime="nan")], "its modification time nan is not a time"),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(MORE_ARCHIVE_ROWS))
def test_a_whiteout_of_nothing_or_a_number_out_of_range_is_one_line_and_exits_125(nothing_left_on_the_host,
                                                                                  tmp_path, case):
    members, named = MORE_ARCHIVE_ROWS[case]
    done = labkit("image", "import", "--name", "hostile", archive_with(tmp_path, *members),
                  home=nothing_left_on_the_host)
    assert done.returncode == 125, done.stderr
    assert_one_clear_line(done.stderr, named)
    assert "hostile" not in labkit("image", "ls", home=nothing_left_on_the_host).stdout.split()
