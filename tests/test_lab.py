"""The README's main job: `labkit lab` serves the notebooks on 127.0.0.1 with a token."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is in the 'lab' extra (make lab installs it)")


def test_labkit_lab_serves_the_notebooks_on_loopback_with_a_token(tmp_path):
    lab = subprocess.Popen([sys.executable, "-m", "labkit.cli", "lab", "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           start_new_session=True, env=dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path)))
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = lab.stdout.readline()
            if not line:
                break
            match = re.search(r"(http://127\.0\.0\.1:\d+)/lab\?token=(\w+)", line)
            if match:
                url, token = match.groups()
        assert url, "labkit lab printed no URL with a token"
        contents = None
        while contents is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/contents?token={token}", timeout=5) as reply:
                    contents = json.load(reply)
            except OSError:
                time.sleep(0.5)
        assert contents is not None, "JupyterLab did not answer on its URL"
        names = {item["name"] for item in contents["content"]}
        assert "00-start-here.ipynb" in names
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/contents", timeout=5)  # no token: refused
        assert refused.value.code == 403
        with urllib.request.urlopen(f"{url}/api/kernelspecs?token={token}", timeout=5) as reply:
            assert "labkit" in json.load(reply)["kernelspecs"]
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
