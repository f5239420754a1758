"""Lab 4's probes of a veth pair made by hand, on the real kernel: each plausible way judged
by all five, as root (in a network namespace of the test's own, so the host's is never
touched) and as root of a user namespace that owns none of the host's (the rootless labkit
kernel): the pair is made inside the namespaces it made, and the notebook's own is refused.
What the grader adds to these (every PID inside the sandbox) is tested in test_labs.py and
test_grading_forgery.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from network_by_hand import PROBES

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "network_by_hand.py"

# the probes that fail for each way (every other one passes)
FAILING = {
    "right": set(),
    "one-namespace": {"two_network_namespaces", "veth_pair_between", "echo_between"},
    "end-left-behind": {"veth_pair_between", "veth_addresses_in", "veths_up", "echo_between"},
    "link-down": {"veths_up", "echo_between"},
    "other-subnet": {"veth_addresses_in"},
}
NOBODY = 65534


def judged(way, *prefix) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), site_packages()]))
    done = subprocess.run([*prefix, sys.executable if not prefix else "/usr/bin/python3", str(SCRIPT), way],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def site_packages() -> str:
    import pyroute2

    return str(Path(pyroute2.__file__).resolve().parent.parent)


def failing(seen) -> set:
    return {name for name, (passed, _) in seen.items() if not passed}


@pytest.mark.root
@pytest.mark.parametrize("way", sorted(FAILING))
def test_each_way_as_root_fails_exactly_its_probes(way):
    seen = judged(way, "unshare", "--net")
    assert set(seen) == set(PROBES), seen
    assert failing(seen) == FAILING[way], seen


def why_not_rootless() -> str | None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return "needs root (to become an ordinary user with setpriv)"
    for path in (SCRIPT, Path(site_packages()), HERE.parent / "labkit", Path("/usr/bin/python3")):
        probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "test", "-r",
                                str(path)])
        if probe.returncode != 0:
            return f"{path} is not readable by an ordinary user"
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare", "-Ur",
                            "unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this kernel gives an ordinary user no user namespace with a network namespace: {probe.stderr.strip()}"
    return None


ROOTLESS = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare", "-Ur"]


@pytest.mark.root
@pytest.mark.parametrize("way", ["right", "one-namespace", "link-down", "other-subnet"])
def test_each_way_rootless_fails_exactly_its_probes(way):
    why = why_not_rootless()
    if why:
        pytest.skip(why)
    seen = judged(way, *ROOTLESS)
    assert failing(seen) == FAILING[way], seen


@pytest.mark.root
def test_rootless_the_notebooks_own_namespace_is_not_wired():
    """Root of a user namespace owns the namespaces it makes, not the host's: a pair made in
    the notebook's own namespace is refused (why the lab's answer makes it inside one)."""
    why = why_not_rootless()
    if why:
        pytest.skip(why)
    seen = judged("end-left-behind", *ROOTLESS)
    assert seen.get("refused") == "ip link add hand0 type veth peer name hand1", seen
    assert "Operation not permitted" in seen["error"], seen
