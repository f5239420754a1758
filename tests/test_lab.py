"""The README's main job: `labkit lab` serves the notebooks on 127.0.0.1 with a token
that no other local user can read, and leaves nothing behind when it is stopped."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is in the 'lab' extra (make lab installs it)")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
URL = re.compile(r"(http://127\.0\.0\.1:\d+)/lab\?token=(\w+)")


class Lab:
    """`labkit lab` on a temp copy of 00-start-here, in its own session (as a terminal
    would start it), its runtime files in a temp dir."""

    def __init__(self, tmp_path, labkit_home):
        notebooks = tmp_path / "notebooks"
        notebooks.mkdir()
        shutil.copy(NOTEBOOKS / "00-start-here.ipynb", notebooks)
        self.runtime_dir = tmp_path / "runtime"
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(self.runtime_dir), LABKIT_HOME=str(labkit_home),
                   JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labkit.cli", "lab", "--port", "0", "--notebooks", str(notebooks)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=env)
        self.url = self.token = None
        for line in self.process.stdout:   # ends when labkit lab exits
            match = URL.search(line)
            if match:
                self.url, self.token = match.groups()
                break
        assert self.url, "labkit lab printed no URL with a token"

    def get(self, path):
        with urllib.request.urlopen(f"{self.url}{path}?token={self.token}", timeout=10) as reply:
            return json.load(reply)

    def post(self, path, body):
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.load(reply)

    def server_pid(self):
        children = [pid for pid in _children(self.process.pid) if b"jupyterlab" in _cmdline(pid)]
        assert len(children) == 1, f"expected one JupyterLab process below labkit lab, found {children}"
        return children[0]

    def stop(self, signum=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError("labkit lab did not exit within 90 s of the signal")


@pytest.fixture
def lab(tmp_path, labkit_home):
    started = Lab(tmp_path, labkit_home)
    yield started
    started.stop()


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_labkit_lab_serves_the_notebooks_on_loopback_with_a_token(lab):
    # The URL is printed only once the server answers: the first request succeeds, no retry.
    names = {item["name"] for item in lab.get("/api/contents")["content"]}
    assert names == {"00-start-here.ipynb"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{lab.url}/api/contents", timeout=5)  # no token: refused
    assert refused.value.code == 403
    assert "labkit" in lab.get("/api/kernelspecs")["kernelspecs"]


@pytest.mark.root
def test_the_token_is_not_on_any_command_line(lab):
    """argv is world-readable in /proc/<pid>/cmdline; the environment is not."""
    server = lab.server_pid()
    assert lab.token.encode() not in _cmdline(server)
    assert lab.token.encode() not in _cmdline(lab.process.pid)
    assert os.stat(f"/proc/{server}/environ").st_mode & 0o077 == 0
    with open(f"/proc/{server}/environ", "rb") as environ:
        assert f"JUPYTER_TOKEN={lab.token}".encode() in environ.read().split(b"\0")


def _start_kernel_with_a_container(lab):
    """A labkit kernel (through the server, as a browser would) that starts a long-lived
    container; returns (kernel pid, container pid, container cgroup path, container dir)."""
    from jupyter_client import BlockingKernelClient

    kernel_id = lab.post("/api/kernels", {"name": "labkit"})["id"]
    client = BlockingKernelClient(connection_file=str(lab.runtime_dir / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        # no wait_for_ready(): without a manager it judges liveness by a heartbeat that may
        # not have beaten yet; the server answered POST only once the kernel was up.
        code = ("from labkit.runtime import Container\n"
                "c = Container(command=['sleep', '1000'], hostname='left').start(detach=True)\n"
                "print(os.getpid(), c.pid, os.path.dirname(c.cgroup.procs_files()[0]), c.dir)")
        code = "import os\n" + code
        reply = client.execute_interactive(code, timeout=120, output_hook=_collect(lines := []))
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
    kernel, container, cgroup, directory = "".join(lines).split()
    return int(kernel), int(container), cgroup, Path(directory)


def _collect(lines):
    def hook(message):
        if message["msg_type"] == "stream":
            lines.append(message["content"]["text"])
    return hook


@pytest.mark.root
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_its_kernels_and_their_containers(lab, signum):
    server = lab.server_pid()
    kernel, container, cgroup, directory = _start_kernel_with_a_container(lab)
    below_before = _all_below(lab.process.pid)
    assert {server, kernel} <= below_before
    assert _alive(container) and os.path.isdir(cgroup) and directory.is_dir()

    assert lab.stop(signum) == 0
    left = [pid for pid in below_before | {server, kernel, container} if _alive(pid)]
    assert left == [], f"still running after labkit lab exited: {[(pid, _cmdline(pid)) for pid in left]}"
    assert not os.path.exists(cgroup), f"the container's cgroup {cgroup} is left"
    assert not directory.exists(), f"the container's directory {directory} is left"


def _all_below(pid):
    found, queue = set(), [pid]
    while queue:
        for child in _children(queue.pop()):
            found.add(child)
            queue.append(child)
    return found


@pytest.mark.root
def test_jupyterlab_starts_each_kernel_in_a_session_of_its_own(lab):
    """Why labkit lab does more than signal the server's process group: that signal
    never reaches a kernel (nor the helper and containers below it)."""
    server = lab.server_pid()
    kernel, _container, _cgroup, _directory = _start_kernel_with_a_container(lab)
    assert os.getsid(kernel) != os.getsid(server) and os.getpgid(kernel) != os.getpgid(server)
