"""`labkit run | doctor | gc | ps` as a user types them (a real subprocess, real kernel)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def labkit(*args, home, stdin=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), input=stdin, timeout=120)


def test_run_passes_output_and_exit_code_through(labkit_home):
    done = labkit("run", "--hostname", "box", "--memory", "32m", "--", "sh", "-c", "hostname; exit 4", home=labkit_home)
    assert done.stdout == "box\n"
    assert done.returncode == 4


def test_run_with_stdin(labkit_home):
    done = labkit("run", "-i", "--", "tr", "a-z", "A-Z", home=labkit_home, stdin="shout\n")
    assert (done.returncode, done.stdout) == (0, "SHOUT\n")


@pytest.mark.parametrize("args, message, code", [
    (["--memory", "lots", "--", "true"], "size 'lots' is not understood", 2),
    (["--image", "nosuch", "--", "true"], "no image named 'nosuch'", 2),
    (["-v", "/no/such/dir:/data", "--", "true"], "does not exist on the host", 2),
    (["--", "no-such-command"], "command 'no-such-command' not found", 127),
    (["--cpus", "0", "--", "true"], "must be a positive number of cores", 2),
    ([], "needs a command", 2),
])
def test_bad_input_is_one_clear_line_and_nothing_is_left(labkit_home, args, message, code):
    done = labkit("run", *args, home=labkit_home)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    containers = labkit_home / "containers"
    assert not containers.exists() or os.listdir(containers) == []


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
