"""`labkit lab` as a user starts it, for tests: a temp copy of the notebooks, temp
workspaces and settings (autosave and restored tabs would otherwise leak between runs),
its runtime files in a temp dir, in its own session as a terminal would start it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
URL = re.compile(r"(http://127\.0\.0\.1:\d+)/lab\?token=(\w+)")


class Lab:
    """`labkit lab` on a temp copy of 00-start-here, in its own session (as a terminal
    would start it), its runtime files in a temp dir."""

    def __init__(self, tmp_path, labkit_home, notebooks=("00-start-here.ipynb",)):
        self.notebooks = tmp_path / "notebooks"
        self.notebooks.mkdir()
        for name in notebooks:
            shutil.copy(NOTEBOOKS / name, self.notebooks)
        self.runtime_dir = tmp_path / "runtime"
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(self.runtime_dir), LABKIT_HOME=str(labkit_home),
                   JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
                   JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labkit.cli", "lab", "--port", "0", "--notebooks", str(self.notebooks)],
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
        servers = [pid for pid in children(self.process.pid) if b"jupyterlab" in cmdline(pid)]
        assert len(servers) == 1, f"expected one JupyterLab process below labkit lab, found {servers}"
        return servers[0]

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


def children(pid):
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


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
