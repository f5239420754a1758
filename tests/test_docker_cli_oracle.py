"""`labkit` against podman on the same commands: the 25 most-used `docker run` flags (what
each does in labkit and in podman, or the difference and why), and the lifecycle verbs
(run, exec, logs, stop, kill, inspect, ps, rm) with their exit codes (125, 126, 127),
states, signals and stop timeout.

podman runs with runc (crun refuses this hybrid cgroup host), its storage in a temporary
directory (test_docker_oracle.Podman), on busybox exported from labkit as a rootfs: the
same files on both sides. No network: every row runs with none, and -p is not tried on
podman (its bridge would need netavark and an address outside this test's own). Skipped,
saying why, where podman or runc is absent.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from test_docker_oracle import MISSING, PATH, Podman

from labkit.images import export_image, get_image
from labkit.images.store import Store

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} (apt-get install podman runc; "
                                                       "make setup installs them)")]

IMAGE = "IMAGE"   # busybox in labkit, the same files imported into podman
PODMAN_IMAGE = "localhost/bb"
# runc sets rlimits podman asks for by default, which this host's container refuses
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


class Both:
    def __init__(self, top):
        import tempfile
        from pathlib import Path

        self.top = top
        # podman refuses a runroot of more than 50 characters: pytest's directories are longer
        self.podman = Podman(Path(tempfile.mkdtemp(prefix="labkit-pd-", dir="/tmp")))
        self.home = top / "labkit"

    def labkit(self, *args, env=None, input=None):
        args = ["busybox" if a == IMAGE else str(a) for a in args]
        return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, input=input,
                              env=dict(os.environ, LABKIT_HOME=str(self.home), **(env or {})), timeout=120)

    def pod(self, *args, env=None, input=None):
        args = [PODMAN_IMAGE if a == IMAGE else str(a) for a in args]
        if args[:1] == ["run"]:
            defaults = PODMAN_RUN[2:] if "--network" in args else PODMAN_RUN
            args = ["run", *defaults, *args[1:]]
        return subprocess.run(self.podman.base_args + args, capture_output=True, text=True, input=input, timeout=300,
                              env=dict(os.environ, TMPDIR=str(self.podman.top / "tmp"), **(env or {})))


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    top = tmp_path_factory.mktemp("cli-oracle")
    os.chmod(top, 0o755)
    tools = Both(top)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LABKIT_HOME", str(tools.home))
        try:
            export_image(get_image("busybox", Store()), top / "bb.tar", "rootfs")
            tools.podman("import", "--change", f"ENV {PATH}", "--change", 'CMD ["sh"]', top / "bb.tar", PODMAN_IMAGE)
            (top / "data").mkdir()
            (top / "data" / "f").write_text("from the host\n")
            (top / "env").write_text("# a comment\nA=1\nB=two words\n")
            yield tools
        finally:
            tools.labkit("gc")
            tools.podman.cleanup()
    assert not tools.podman.top.exists()


# --- the flags --------------------------------------------------------------------------------
# (flags, command, difference): the same command with the same flags on both; the outputs
# and exit codes must match, or differ as `difference` says (and then they must differ: a
# difference listed that no longer is one fails too). TOP is the test's temporary directory.

CAPS = "grep CapEff /proc/self/status"
PODMANS_CAPS = ("labkit's default capabilities are Docker's 14; podman's (containers.conf) leave out NET_RAW, "
                "MKNOD and AUDIT_WRITE")
FLAGS = {
    "-e KEY=VALUE": (["-e", "A=1"], "echo $A", None),
    "-e KEY": (["-e", "FROM_CALLER"], "echo ${FROM_CALLER-unset}", None),
    "-e KEY (unset)": (["-e", "NOT_SET_ANYWHERE"], "echo ${NOT_SET_ANYWHERE-unset}", None),
    "--env-file": (["--env-file", "TOP/env"], "echo $A $B", None),
    "-v SRC:DST:ro": (["-v", "TOP/data:/data:ro"], "cat /data/f; touch /data/g 2>/dev/null || echo read-only", None),
    "-w": (["-w", "/tmp"], "pwd", None),
    "-u": (["-u", "65534:65534"], "id -u; id -g", None),
    "--entrypoint": (["--entrypoint", "echo"], None, None),
    "-h": (["-h", "box"], "hostname", None),
    "--network none": (["--network", "none"], "ls /sys/class/net", None),
    "-m": (["-m", "64m"], "cat /sys/fs/cgroup/memory/memory.limit_in_bytes", None),
    "--cpus": (["--cpus", "0.5"], "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us", None),
    "--pids-limit": (["--pids-limit", "20"], "cat /sys/fs/cgroup/pids/pids.max", None),
    "--read-only": (["--read-only"], "touch /x 2>/dev/null || echo read-only", None),
    "--tmpfs PATH:size": (["--tmpfs", "/scratch:size=1m"], "df -k /scratch | tail -1 | awk '{print $2}'; "
                          "touch /scratch/f && echo writable", None),
    "--cap-add": (["--cap-add", "SYS_ADMIN"], CAPS, PODMANS_CAPS),
    "--cap-drop": (["--cap-drop", "NET_RAW"], CAPS, PODMANS_CAPS),
    "--cap-drop ALL --cap-add": (["--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "KILL"], CAPS, None),
    "--privileged": (["--privileged"], "ls /dev | grep -c . | awk '{print ($1 > 20)}'",
                     "labkit's --privileged gives every capability and device access (the device cgroup, mknod) "
                     "but keeps its own small /dev; Docker and podman bind every host device node into it"),
    "--security-opt no-new-privileges": (["--security-opt", "no-new-privileges"], "grep NoNewPrivs /proc/self/status",
                                         None),
    "--init": (["--init"], "cat /proc/1/comm",
               "PID 1 is labkit's own reaper, named labkit-init; podman's is catatonit"),
    "--name": (["--name", "named"], "hostname",
               "labkit's hostname is the container's name (so students see it); podman's is the short ID, as Docker's"),
    "--restart": (["--restart", "no"], "true",
                  "not offered: labkit restarts nothing (a student's container ends when its command does); "
                  "labkit exits 125"),
    "--label": (["--label", "a=b"], "true", "not offered (no labels on containers yet); labkit exits 125"),
    "--add-host": (["--add-host", "db:10.0.0.2"], "true", "not offered; labkit exits 125"),
    "--pid host": (["--pid", "host"], "true", "refused: a lab about namespaces keeps them; labkit exits 125"),
}


def _args(flags, top):
    return [str(flag).replace("TOP", str(top)) for flag in flags]


@pytest.mark.parametrize("name", list(FLAGS))
def test_a_run_flag_does_what_podman_does_or_the_difference_is_listed(both, name):
    flags, probe, difference = FLAGS[name]
    command = ["hi"] if probe is None else ["sh", "-c", probe]
    env = {"FROM_CALLER": "from-the-caller"}
    ours = both.labkit("run", *_args(flags, both.top), IMAGE, *command, env=env)
    theirs = both.pod("run", "--rm", *_args(flags, both.top), IMAGE, *command, env=env)
    assert theirs.returncode == 0, theirs.stderr
    if difference is None:
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), ours.stderr
    else:
        assert (ours.returncode, ours.stdout) != (theirs.returncode, theirs.stdout), f"no longer differs: {difference}"
        if "exits 125" in difference:
            assert ours.returncode == 125 and "unrecognized arguments" in ours.stderr


def test_the_flag_table_holds_twenty_five_docker_run_flags():
    flags = {name.split()[0] for name in FLAGS} | {"-d", "-i", "-t", "--rm", "-p"}
    assert len(flags) >= 25, sorted(flags)


# --- the lifecycle ------------------------------------------------------------------------------


def _ident(done):
    return done.stdout.strip()


@pytest.mark.parametrize("command, code", [
    (["sh", "-c", "exit 3"], 3),
    (["no-such-command"], 127),
    (["/etc"], 126),
])
def test_run_exit_codes_match(both, command, code):
    assert both.labkit("run", IMAGE, *command).returncode == both.pod("run", "--rm", IMAGE, *command).returncode == code


def test_a_bad_flag_is_125_on_both(both):
    assert both.labkit("run", "--no-such-flag", IMAGE, "true").returncode == 125
    assert both.pod("run", "--no-such-flag", IMAGE, "true").returncode == 125


def test_stdin_with_i_and_without(both):
    for tool in (both.labkit, both.pod):
        assert tool("run", "-i", *(["--rm"] if tool == both.pod else []), IMAGE, "tr", "a-z", "A-Z",
                    input="up\n").stdout == "UP\n"
        assert tool("run", *(["--rm"] if tool == both.pod else []), IMAGE, "cat", input="lost\n").stdout == ""


# Exit codes where podman is not Docker and labkit follows neither: (step, labkit, podman, why)
LIFECYCLE_DIFFERENCES = {
    "rm of a running container without -f": (125, 2, "labkit's own errors are 125, Docker's CLI says 1"),
    "exec in an exited container": (125, 255, "as above; podman passes on its exec session's 255"),
}


def test_the_lifecycle_verbs_behave_as_podmans(both):
    script = "echo started; trap 'echo bye; exit 3' TERM; while :; do sleep 0.1; done"
    seen = {}
    for tool, label in ((both.labkit, "labkit"), (both.pod, "podman")):
        steps = seen[label] = {}
        started = tool("run", "-d", "--name", "life", IMAGE, "sh", "-c", script)
        steps["run -d"] = (started.returncode, len(_ident(started)) >= 16, started.stderr)
        deadline = time.monotonic() + 20
        while "started" not in tool("logs", "life").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        steps["ps shows it"] = "life" in tool("ps").stdout
        steps["exec"] = (tool("exec", "life", "sh", "-c", "exit 7").returncode,
                         tool("exec", "life", "no-such-command").returncode, tool("exec", "life", "/etc").returncode)
        steps["exec -i"] = tool("exec", "-i", "life", "cat", input="in\n").stdout
        steps["exec -e -w -u"] = tool("exec", "-e", "X=1", "-w", "/tmp", "-u", "65534", "life", "sh", "-c",
                                      "echo $X $(pwd) $(id -u)").stdout
        steps["inspect running"] = _state(tool, "life")[:3]
        steps["rm of a running container without -f"] = tool("rm", "life").returncode
        stopped = tool("stop", "-t", "10", "life")
        steps["stop"] = (stopped.returncode, stopped.stdout.strip())
        steps["inspect exited"] = _state(tool, "life")
        steps["logs"] = tool("logs", "life").stdout
        steps["ps -a"] = ("life" in tool("ps").stdout, "life" in tool("ps", "-a").stdout)
        steps["exec in an exited container"] = tool("exec", "life", "true").returncode
        steps["rm"] = tool("rm", "life").returncode
        steps["inspect after rm"] = tool("inspect", "life").returncode
        steps["stop of nothing"] = tool("stop", "nobody").returncode
        steps["logs of nothing"] = tool("logs", "nobody").returncode

        tool("run", "-d", "--name", "deaf", IMAGE, "sleep", "1000")
        steps["stop timeout: SIGKILL"] = (tool("stop", "-t", "1", "deaf").returncode, _state(tool, "deaf")[3])
        tool("rm", "-f", "deaf")
        tool("run", "-d", "--name", "ears", IMAGE, "sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.1; done")
        time.sleep(0.5)
        killed = tool("kill", "-s", "USR1", "ears")
        deadline = time.monotonic() + 20
        while _state(tool, "ears")[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        steps["kill -s USR1"] = (killed.returncode, _state(tool, "ears")[3])
        steps["kill -s of a bad signal"] = tool("kill", "-s", "NOPE", "ears").returncode
        steps["rm -f"] = tool("rm", "-f", "ears").returncode
    ours, theirs = seen["labkit"], seen["podman"]
    for step, (code_ours, code_theirs, why) in LIFECYCLE_DIFFERENCES.items():
        assert (ours.pop(step), theirs.pop(step)) == (code_ours, code_theirs), why
    assert ours == theirs


def _state(tool, name):
    done = tool("inspect", name)
    if done.returncode:
        return (None, None, None, None)
    state = json.loads(done.stdout)[0]["State"]
    return (state["Status"], state["Running"], bool(state["Pid"]), state["ExitCode"])
