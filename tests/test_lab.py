"""The README's main job: `labkit lab` serves the notebooks on 127.0.0.1 with a token
that no other local user can read, and leaves nothing behind when it is stopped."""

import os
import signal
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is in the 'lab' extra (make lab installs it)")

from lab_process import alive, children, cmdline, lab  # noqa: E402,F401 — the fixture is used by name


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
    assert lab.token.encode() not in cmdline(server)
    assert lab.token.encode() not in cmdline(lab.process.pid)
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
    assert alive(container) and os.path.isdir(cgroup) and directory.is_dir()

    assert lab.stop(signum) == 0
    left = [pid for pid in below_before | {server, kernel, container} if alive(pid)]
    assert left == [], f"still running after labkit lab exited: {[(pid, cmdline(pid)) for pid in left]}"
    assert not os.path.exists(cgroup), f"the container's cgroup {cgroup} is left"
    assert not directory.exists(), f"the container's directory {directory} is left"


def _all_below(pid):
    found, queue = set(), [pid]
    while queue:
        for child in children(queue.pop()):
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
