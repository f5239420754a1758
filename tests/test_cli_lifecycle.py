"""The container lifecycle on the command line, as a user types it (real subprocesses, real
kernel): `run -d` returns at once and the container outlives it under its monitor;
exec, logs, stop, kill, rm, inspect, stats, ps; `-t` on a real pty; and nothing is left
behind: by rm -f, by a killed monitor, by --rm."""

import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.root


def labkit(*args, home, stdin=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), input=stdin, timeout=timeout)


def monitors(home) -> list:
    """PIDs of the monitors (and their helpers) working for this LABKIT_HOME."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() not in ("labkit-monitor", "labkit-helper"):
                    continue
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"LABKIT_HOME={home}".encode() in environ.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def assert_nothing_left(home, ident=None, made=(), timeout=10.0):
    """No directory, mount, cgroup, monitor or helper of the container `ident` (or of each
    container in `made`, the ids a leak_checks.NamesMade saw) is left."""
    from leak_checks import labkit_cgroups

    def ours(path):
        leaf = os.path.basename(path)
        return leaf.startswith(ident) if ident else leaf in made

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {"dirs": os.listdir(home / "containers") if (home / "containers").exists() else [],
                "cgroups": [p for p in labkit_cgroups() if ours(p)],
                "processes": monitors(home)}
        with open("/proc/self/mountinfo") as mounts:
            left["mounts"] = [line for line in mounts if str(home) in line]
        if not any(left.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"left behind: {left}")


def state(home, name) -> dict:
    done = labkit("inspect", name, home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]["State"]


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_detached_container_outlives_the_command_and_is_managed_by_name(labkit_home):
    started = labkit("run", "-d", "--name", "web", "--memory", "32m", "busybox", "sh", "-c",
                     "echo hello; trap 'echo bye; exit 3' TERM; while :; do sleep 0.1; done", home=labkit_home)
    assert started.returncode == 0, started.stderr
    ident = started.stdout.strip()
    assert len(ident) == 16 and started.stderr == ""
    try:
        # `labkit run -d` has exited; the container runs on.
        listing = labkit("ps", home=labkit_home).stdout.splitlines()
        assert [row.split()[:4] for row in listing[1:]] == [["web", ident, "busybox", "running"]]
        wait_for(lambda: labkit("logs", "web", home=labkit_home).stdout == "hello\n")
        assert labkit("exec", "web", "hostname", home=labkit_home).stdout == "web\n"
        assert labkit("exec", "web", "sh", "-c", "exit 7", home=labkit_home).returncode == 7
        assert labkit("exec", "-i", "web", "tr", "a-z", "A-Z", stdin="up\n", home=labkit_home).stdout == "UP\n"
        assert labkit("exec", "-e", "WHO=me", "-w", "/tmp", "-u", "nobody", "web", "sh", "-c",
                      "echo $WHO $(pwd) $(id -u)", home=labkit_home).stdout == "me /tmp 65534\n"
        missing = labkit("exec", "web", "no-such-command", home=labkit_home)
        assert (missing.returncode, "not found" in missing.stderr) == (127, True)
        assert labkit("exec", "web", "/etc", home=labkit_home).returncode == 126
        record = state(labkit_home, "web")
        assert record["Status"] == "running" and record["Running"] and record["Pid"] > 0
        assert os.path.exists(f"/proc/{record['Pid']}")
        whole = json.loads(labkit("inspect", "web", home=labkit_home).stdout)[0]
        assert whole["HostConfig"]["Memory"] == 32 << 20 and whole["Config"]["Image"] == "busybox"
        assert whole["Name"] == "/web" and whole["Id"] == ident
        stats = labkit("stats", "--no-stream", "web", home=labkit_home)
        assert stats.returncode == 0 and "/ 32.0 MiB" in stats.stdout.splitlines()[1]
        top = labkit("top", "web", home=labkit_home).stdout
        assert "sleep 0.1" in top or "sh -c" in top

        stopped = labkit("stop", "-t", "10", "web", home=labkit_home)
        assert (stopped.returncode, stopped.stdout) == (0, "web\n")
        after = state(labkit_home, "web")
        assert (after["Status"], after["Running"], after["ExitCode"]) == ("exited", False, 3)
        assert after["FinishedAt"] > after["StartedAt"]
        assert labkit("logs", "web", home=labkit_home).stdout == "hello\nbye\n"
        assert [row.split()[3] for row in labkit("ps", "-a", home=labkit_home).stdout.splitlines()[1:]] == ["exited"]
        assert labkit("ps", home=labkit_home).stdout.splitlines()[1:] == []
        refused = labkit("exec", "web", "true", home=labkit_home)
        assert refused.returncode == 125 and "not running" in refused.stderr
    finally:
        removed = labkit("rm", "-f", "web", home=labkit_home)
    assert (removed.returncode, removed.stdout) == (0, "web\n")
    assert_nothing_left(labkit_home, ident)


def test_stop_kills_after_the_grace_time_and_kill_sends_the_signal_asked(labkit_home):
    ident = labkit("run", "-d", "--name", "deaf", "busybox", "sleep", "1000", home=labkit_home).stdout.strip()
    try:
        # PID 1 has no handler for SIGTERM: the kernel drops it, so stop's SIGKILL ends it.
        assert labkit("stop", "-t", "0.3", "deaf", home=labkit_home).returncode == 0
        assert state(labkit_home, "deaf")["ExitCode"] == 137
        labkit("rm", "deaf", home=labkit_home)
        labkit("run", "-d", "--name", "ears", "busybox", "sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.1; done",
               home=labkit_home)
        time.sleep(0.3)   # the trap set
        assert labkit("kill", "-s", "USR1", "ears", home=labkit_home).stdout == "ears\n"
        wait_for(lambda: not state(labkit_home, "ears")["Running"])
        assert state(labkit_home, "ears")["ExitCode"] == 42
        bad = labkit("kill", "-s", "NOPE", "ears", home=labkit_home)
        assert bad.returncode == 125 and "not a signal" in bad.stderr
    finally:
        for name in ("deaf", "ears"):
            labkit("rm", "-f", name, home=labkit_home)
    assert_nothing_left(labkit_home, ident)


def test_rm_refuses_a_running_container_without_f_and_unknown_names_exit_125(labkit_home):
    ident = labkit("run", "-d", "--name", "busy", "busybox", "sleep", "1000", home=labkit_home).stdout.strip()
    try:
        refused = labkit("rm", "busy", home=labkit_home)
        assert refused.returncode == 125 and "-f" in refused.stderr
        assert state(labkit_home, "busy")["Running"]
        for verb in (["logs"], ["stop"], ["inspect"], ["exec"], ["rm"], ["kill"]):
            done = labkit(*verb, "nobody", *(["true"] if verb == ["exec"] else []), home=labkit_home)
            assert done.returncode == 125 and "no such container" in done.stderr, (verb, done.stderr)
        both = labkit("rm", "-f", "busy", "nobody", home=labkit_home)
        assert (both.returncode, both.stdout) == (1, "busy\n")   # docker rm: the others are removed
    finally:
        labkit("rm", "-f", "busy", home=labkit_home)
    assert_nothing_left(labkit_home, ident)


def test_rm_with_d_removes_the_container_when_it_exits(labkit_home):
    ident = labkit("run", "-d", "--rm", "busybox", "sh", "-c", "sleep 0.3", home=labkit_home).stdout.strip()
    assert len(ident) == 16
    assert_nothing_left(labkit_home, ident, timeout=20)


def test_a_command_that_cannot_run_detached_exits_127_or_126(labkit_home):
    from leak_checks import NamesMade

    made = NamesMade(labkit_home / "containers")   # the ids: their cgroups are these tests' to judge
    try:
        missing = labkit("run", "-d", "--rm", "busybox", "no-such-command", home=labkit_home)
        assert (missing.returncode, "not found" in missing.stderr, missing.stdout) == (127, True, "")
        assert labkit("run", "-d", "--rm", "busybox", "/etc", home=labkit_home).returncode == 126
        ids = made.read()
    finally:
        made.close()
    assert len(ids) == 2, ids
    assert_nothing_left(labkit_home, made=ids)


def test_a_killed_monitor_leaves_nothing_behind(labkit_home):
    ident = labkit("run", "-d", "--name", "orphan", "busybox", "sleep", "1000", home=labkit_home).stdout.strip()
    owner = json.loads(labkit("inspect", "orphan", home=labkit_home).stdout)[0]["Labkit"]["Owner"]
    with open(f"/proc/{owner}/comm") as comm:
        assert comm.read().strip() == "labkit-monitor"
    os.kill(owner, signal.SIGKILL)
    assert_nothing_left(labkit_home, ident)


def test_a_detached_interactive_shell_stays_up_for_exec(labkit_home):
    """`docker run -dit IMAGE sh`: stdin kept open (and a terminal with -t), so the shell waits."""
    ident = labkit("run", "-dit", "--name", "box", "busybox", "sh", home=labkit_home).stdout.strip()
    try:
        time.sleep(0.5)
        assert state(labkit_home, "box")["Running"]
        assert labkit("exec", "box", "sh", "-c", "[ -t 0 ] && echo tty", home=labkit_home).stdout == ""
        assert labkit("exec", "box", "cat", "/proc/1/cmdline", home=labkit_home).stdout == "sh\0"
    finally:
        labkit("rm", "-f", "box", home=labkit_home)
    assert_nothing_left(labkit_home, ident)


# --- -t: a real pseudo-terminal -------------------------------------------------------------


class Terminal:
    """`labkit ARGS` on a pty of this test, 33 rows by 101 columns, as a user's terminal."""

    def __init__(self, home, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["LABKIT_HOME"] = str(home)
            os.execv(sys.executable, [sys.executable, "-m", "labkit.cli", *args])
        import fcntl
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        self.output = b""

    def read_until(self, token: bytes, timeout=20.0):
        deadline = time.monotonic() + timeout
        while token not in self.output:
            assert time.monotonic() < deadline, f"no {token!r} in {self.output!r}"
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        return token in self.output

    def send(self, data: bytes):
        os.write(self.fd, data)

    def exit_code(self):
        while select.select([self.fd], [], [], 5)[0]:
            try:
                if not os.read(self.fd, 4096):
                    break
            except OSError:
                break
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("detached_first", [False, True], ids=["run -it", "exec -it"])
def test_it_gives_the_command_a_terminal_with_its_size_and_control_c(labkit_home, detached_first):
    if detached_first:
        labkit("run", "-d", "--name", "term", "busybox", "sleep", "1000", home=labkit_home)
        terminal = Terminal(labkit_home, "exec", "-it", "term", "sh")
    else:
        terminal = Terminal(labkit_home, "run", "-it", "busybox", "sh")
    try:
        terminal.read_until(b"# ")
        terminal.send(b"stty size; [ -t 0 ] && echo on-a-tty; echo T=$TERM\r")
        terminal.read_until(b"T=xterm")
        assert b"33 101" in terminal.output and b"on-a-tty" in terminal.output
        terminal.send(b"sleep 60; echo after-sleep\r")
        time.sleep(0.5)
        terminal.send(b"\x03")   # ^C: SIGINT to the foreground job (sleep), not to labkit or the shell
        terminal.send(b"echo still-here; exit 5\r")
        terminal.read_until(b"\nstill-here")   # within read_until's 20 s: the sleep of 60 s was cut
        assert terminal.exit_code() == 5
        assert b"\nafter-sleep" not in terminal.output   # the interrupted line went no further
    finally:
        if detached_first:
            labkit("rm", "-f", "term", home=labkit_home)


def test_run_t_restores_the_terminal_it_put_in_raw_mode(labkit_home):
    """The user's terminal is back in its own mode (echo, canonical) when labkit returns."""
    import termios

    parent, child = pty.openpty()
    before = termios.tcgetattr(child)
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "-it", "busybox", "sh", "-c", "exit 4"],
                          stdin=child, stdout=child, stderr=child, env=dict(os.environ, LABKIT_HOME=str(labkit_home)),
                          timeout=60)
    after = termios.tcgetattr(child)
    os.close(parent)
    os.close(child)
    assert done.returncode == 4
    assert after == before and after[3] & termios.ECHO and after[3] & termios.ICANON


def test_run_image_without_a_command_runs_its_entrypoint_and_cmd(labkit_home, tmp_path):
    (tmp_path / "Dockerfile").write_text('FROM busybox\nENTRYPOINT ["echo", "from-entrypoint"]\nCMD ["default-arg"]\n')
    built = labkit("build", "-t", "greeter", str(tmp_path), home=labkit_home)
    assert built.returncode == 0, built.stderr
    assert labkit("run", "greeter", home=labkit_home).stdout == "from-entrypoint default-arg\n"
    assert labkit("run", "greeter", "given", "args", home=labkit_home).stdout == "from-entrypoint given args\n"
    assert labkit("run", "--entrypoint", "hostname", "-h", "h1", "greeter", home=labkit_home).stdout == "h1\n"
    assert labkit("run", "--image", "greeter", "--", "other", home=labkit_home).stdout == "from-entrypoint other\n"
    missing = labkit("run", "no-such-image", home=labkit_home)
    assert missing.returncode == 125 and "no-such-image" in missing.stderr
    ident = labkit("run", "-d", "--name", "greet", "greeter", home=labkit_home).stdout.strip()
    wait_for(lambda: not state(labkit_home, "greet")["Running"])
    assert labkit("logs", "greet", home=labkit_home).stdout == "from-entrypoint default-arg\n"
    labkit("rm", "greet", home=labkit_home)
    assert_nothing_left(labkit_home, ident)
