"""A real "Python 3 (labkit)" kernel for tests: started with jupyter_client from the
installed kernelspec, talked to over its channels like a notebook front end does.

Import the fixtures by name in a test module:

    from kernel_fixtures import kernel, labkit_kernelspec, LabkitKernel  # noqa: F401
"""

import os
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leak_checks import container_cgroup_leaf
from labkit.kernelspec import KERNEL_NAME


@dataclass
class Reply:
    """What one cell did, as a notebook front end sees it."""

    status: str
    messages: list = field(default_factory=list)   # iopub (msg_type, content), in arrival order
    ename: str | None = None
    evalue: str | None = None

    @property
    def streams(self) -> list:
        return [(c["name"], c["text"]) for t, c in self.messages if t == "stream"]

    @property
    def stdout(self) -> str:
        return "".join(text for name, text in self.streams if name == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(text for name, text in self.streams if name == "stderr")

    @property
    def text_results(self) -> list:
        return [c["data"].get("text/plain") for t, c in self.messages if t in ("execute_result", "display_data")]


class LabkitKernel:
    """One kernel process and a blocking client."""

    def __init__(self, labkit_home: Path):
        from jupyter_client.manager import KernelManager

        self.home = labkit_home
        self.manager = KernelManager(kernel_name=KERNEL_NAME)
        self.manager.start_kernel(env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def send(self, code: str) -> str:
        return self.client.execute(code, allow_stdin=False)

    def collect(self, msg_id: str, timeout: float = 60) -> Reply:
        """Read iopub until the kernel is idle again after `msg_id`, then its reply."""
        deadline = time.monotonic() + timeout
        messages = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish within {timeout} s")
            try:
                message = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind in ("stream", "error", "execute_result", "display_data"):
                messages.append((kind, content))
        while True:  # skip replies to cells an earlier, failed test stopped waiting for
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        content = reply["content"]
        return Reply(content["status"], messages, content.get("ename"), content.get("evalue"))

    def run(self, code: str, timeout: float = 60) -> Reply:
        return self.collect(self.send(code), timeout)

    def ok(self, code: str, timeout: float = 60) -> Reply:
        """Run a cell that must succeed; its error, if any, is the assertion message."""
        reply = self.run(code, timeout)
        assert reply.status == "ok", f"{reply.ename}: {reply.evalue}\n{reply.stderr}"
        return reply

    def shutdown(self, now=False):
        self.client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=now)


def past_the_abort(client, timeout: float = 60) -> None:
    """Return once the kernel runs cells again after one that ended in an error.

    ipykernel (7.x) answers an error, then aborts the requests queued behind it until a
    message it posts to itself comes round; a request sent the moment the error's reply
    arrives can be aborted unrun, which says nothing about labkit. A no-op cell is sent
    until one is run (status "ok"); anything but "ok" or "aborted" is a failure."""
    deadline = time.monotonic() + timeout
    while True:
        reply = client.execute_interactive("pass", timeout=max(1.0, deadline - time.monotonic()))
        status = reply["content"]["status"]
        if status == "ok":
            return
        assert status == "aborted", reply["content"]
        assert time.monotonic() < deadline, "the kernel still aborted every request"


def installed_kernel_python() -> str | None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0]
    except NoSuchKernel:
        return None


@pytest.fixture(scope="session")
def labkit_kernelspec():
    """The labkit kernelspec, installed into this venv (--sys-prefix) if it is missing or
    points at another Python. The kernel itself needs no root: a test whose cells make
    containers is marked root."""
    if installed_kernel_python() != sys.executable:
        from labkit.kernelspec import install

        install(prefix=sys.prefix)
    assert installed_kernel_python() == sys.executable
    return KERNEL_NAME


@pytest.fixture(scope="module")
def kernel(labkit_kernelspec, tmp_path_factory):
    """One labkit kernel for a test module, with its own LABKIT_HOME."""
    session = LabkitKernel(searchable(tmp_path_factory.mktemp("labkit-home")))
    yield session
    session.shutdown()


def searchable(home: Path) -> Path:
    """A --userns container runs as an unprivileged host uid, which must reach the layers
    below LABKIT_HOME: open the search bit up to /tmp (pytest makes its dirs 0700)."""
    home.mkdir(parents=True, exist_ok=True)
    for directory in (home, *home.parents):
        if str(directory) in ("/", "/tmp"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o011)
    return home


# --- what a container leaves on the host, to check that nothing is left -------------


def container_ids(home: Path) -> list:
    """The containers in `home`; each one's cgroup name is read (and remembered) from its
    state: a pool slot's cgroup is not named after the container."""
    root = home / "containers"
    ids = sorted(os.listdir(root)) if root.is_dir() else []
    for ident in ids:
        container_cgroup_leaf(ident, str(home))
    return ids


def cgroup_dirs(container_id: str) -> list:
    """This container's cgroup directories, in every hierarchy (v1) or the one (v2)."""
    found = []
    leaf = container_cgroup_leaf(container_id)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for candidate in (hierarchy / "labkit" / leaf, Path("/sys/fs/cgroup/labkit") / leaf):
            if candidate.is_dir():
                found.append(str(candidate))
    return sorted(set(found))


def cgroup_pids(container_id: str) -> set:
    pids = set()
    for directory in cgroup_dirs(container_id):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as handle:
                pids.update(int(line) for line in handle if line.strip())
        except FileNotFoundError:
            pass
    return pids


def mounts_mentioning(text: str) -> list:
    with open("/proc/self/mountinfo") as table:
        return [line for line in table if text in line]


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(predicate, timeout: float, step: float = 0.05):
    """Poll until `predicate()` is true; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
