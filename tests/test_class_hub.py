"""A class on one machine: a real JupyterHub (PyPI's jupyterhub, npm's
configurable-http-proxy) with three local students, each student's server started as
that student by LocalProcessSpawner and running the labkit kernel rootless.

The hub listens on loopback only; the test is its instructor (a service with an admin
token from the config). It starts two students' servers through the hub's REST API, runs
a `%%container` cell in each student's kernel through the proxy (Jupyter server REST and
the kernel's websocket, as JupyterLab does), and shows what a shared machine must
guarantee: each student's containers run under that student's own ids; student A can
neither list, signal, enter nor read B's containers, layers or files; neither reads the
instructor's source labs; and stopping the hub leaves no process, container or mount.
See docs/class.md for the setup this test builds."""

import asyncio
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hub_client import HubAPI

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # the class's Python: every student may run it
RANGE = 65536


def proxy_command():
    """configurable-http-proxy as `make setup` installs it (npm, under the venv), or on PATH."""
    local = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    found = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    if found is None or shutil.which("node") is None:
        pytest.skip("configurable-http-proxy (npm) or node is not installed; `make setup` installs both")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the students: real local accounts with /etc/subuid ranges, removed after the test ----


def free_subordinate_base(count_needed: int) -> int:
    """The first id past every range /etc/subuid and /etc/subgid grant, rounded up, so that
    ours overlap no one's (other tests may add users concurrently: the pid spreads us out)."""
    end = 100000
    for path in ("/etc/subuid", "/etc/subgid"):
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                fields = line.split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    end = max(end, int(fields[1]) + int(fields[2]))
    base = -(-max(end, 1_000_000_000 + (os.getpid() % 1000) * count_needed * RANGE) // RANGE) * RANGE
    if base + count_needed * RANGE > 2**32 - 2:
        pytest.skip(f"no free range of {count_needed} x {RANGE} ids left in /etc/subuid")
    return base


def processes_of(uids) -> list:
    """[(pid, uid, command line)] of every process whose real uid is in `uids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if uid in uids:
            found.append((int(entry), uid, command.strip()))
    return found


def id_ranges(students) -> set:
    """Every host uid the students or their containers may run as."""
    uids = set()
    for student in students:
        uids.add(student.uid)
        uids.update(range(student.subuid, student.subuid + RANGE))
    return uids


class Student:
    def __init__(self, name, subuid):
        self.name, self.subuid = name, subuid
        entry = pwd.getpwnam(name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)

    @property
    def labkit_home(self) -> Path:
        return self.home / ".local" / "share" / "labkit"


@pytest.fixture(scope="module")
def students():
    """Three accounts as a teaching host makes them: private homes (0700) and a 65,536-id
    range each in /etc/subuid and /etc/subgid. userdel -r removes them even on failure,
    after any process still running as them (ours: the hub started them) is killed."""
    prefix = f"lkhub{os.getpid() % 100000}"
    base = free_subordinate_base(3)
    made = []
    try:
        for index, letter in enumerate("abc"):
            name = prefix + letter
            first = base + index * RANGE
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "-K", "HOME_MODE=0700",
                            "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name], check=True, capture_output=True)
            made.append(name)
            subprocess.run(["usermod", "--add-subuids", f"{first}-{first + RANGE - 1}",
                            "--add-subgids", f"{first}-{first + RANGE - 1}", name], check=True, capture_output=True)
            made[-1] = Student(name, first)
        yield made
    finally:
        accounts = [s for s in made if isinstance(s, Student)]
        for pid, _, _ in processes_of(id_ranges(accounts)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for student in made:
            name = student if isinstance(student, str) else student.name
            subprocess.run(["userdel", "--remove", name], capture_output=True)
            assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"account {name} left behind"
        for path in ("/etc/subuid", "/etc/subgid"):
            assert prefix not in Path(path).read_text(), f"{path} still grants {prefix}*"


# --- the class's software: one Python environment every student may run -----------------


def reachable_by_all(path: Path) -> bool:
    """May every user walk down to `path` (and read it)?"""
    for directory in (path, *path.parents):
        if not os.stat(directory).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o004)


class ClassEnv:
    """The students' Python environment and the labkit code they run."""

    def __init__(self, prefix: Path, labkit_path: Path):
        self.prefix, self.labkit_path = prefix, labkit_path
        self.python = prefix / "bin" / "python3"


@pytest.fixture(scope="module")
def class_env():
    """`make setup`'s students' environment ($(VENV)/class: the system's Python, jupyterhub,
    jupyter_server, the labkit kernel), as TLJH's /opt/tljh/user. The students run this
    checkout's labkit from a copy any user may read (PYTHONPATH, ahead of the editable
    install): the checkout may sit where only root may enter (a fresh clone in a 0700
    directory); so may the environment, which is then copied too (run with `python -m`,
    its scripts' #! lines name the original place)."""
    prefix = Path(sys.prefix) / "class"
    if not (prefix / ".labkit-installed").exists():
        pytest.skip(f"{prefix} is missing: `make setup` builds the students' environment")
    root = Path(tempfile.mkdtemp(prefix="labkit-class-"))
    os.chmod(root, 0o755)
    try:
        shutil.copytree(REPO / "labkit", root / "src" / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
        if not reachable_by_all(prefix / "bin" / "python3"):
            subprocess.run(["cp", "-a", str(prefix), str(root / "env")], check=True)
            prefix = root / "env"
            subprocess.run([str(prefix / "bin" / "python3"), "-m", "labkit", "kernel", "install", "--sys-prefix"],
                           check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(root / "src")))
        yield ClassEnv(prefix, root / "src")
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def source_labs():
    """The instructor's source labs (solutions, hidden tests): root's, 0700."""
    directory = Path(tempfile.mkdtemp(prefix="labkit-source-labs-"))
    (directory / "01-namespaces-lab.ipynb").write_text('{"cells": [], "solution": "secret"}')
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


HUB_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = "{state}/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
c.Spawner.cmd = ["{env}/bin/python3", "-m", "jupyterhub.singleuser"]
c.Spawner.environment = {{"PYTHONPATH": "{labkit_path}"}}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Authenticator.allowed_users = {students!r}
c.JupyterHub.services = [{{"name": "instructor", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "instructor", "services": ["instructor"],
                            "scopes": ["admin:users", "admin:servers", "access:servers", "list:users"]}}]
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
"""


class Hub:
    def __init__(self, env, students, state: Path):
        self.state = state
        self.token = secrets.token_hex(32)
        ports = {name: free_port() for name in ("proxy_port", "hub_port", "proxy_api_port")}
        (state / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
            env=env.prefix, labkit_path=env.labkit_path, proxy=proxy_command(), state=state, token=self.token,
            students={s.name for s in students}, **ports))
        self.api = HubAPI(f"http://127.0.0.1:{ports['proxy_port']}", self.token)
        environment = {"PATH": f"{env.prefix}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                       "HOME": str(state)}
        self.log = open(state / "hub.log", "w")
        # The hub runs as root from the test's own environment (as TLJH's /opt/tljh/hub);
        # the students' servers from the class's (TLJH's /opt/tljh/user).
        self.process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(state / "jupyterhub_config.py")],
                                        cwd=state, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def log_tail(self) -> str:
        self.log.flush()
        return (self.state / "hub.log").read_text()[-4000:]

    def stop(self, timeout=120):
        """SIGTERM, as systemd stops it: the hub stops every server and the proxy."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def hub(class_env, students):
    state = Path(tempfile.mkdtemp(prefix="labkit-hub-"))
    running = Hub(class_env, students, state)
    try:
        running.api.wait_until_up()
        yield running
    finally:
        running.stop()
        shutil.rmtree(state)


# --- the cells -------------------------------------------------------------------------------

SHOW_IDS = """%%container
echo uid_map; cat /proc/self/uid_map; echo gid_map; cat /proc/self/gid_map; id -u
"""

# B's container stays up until the test (the host's root) sends it SIGUSR1.
HOLD = """%%container --name box
echo uid_map; cat /proc/self/uid_map
trap 'echo held-box stopped; exit 0' USR1
while :; do sleep 0.1; done
"""

# What A tries against B's running container, from A's own kernel: each attempt's errno, or
# "allowed" where the kernel let it happen.
ATTEMPTS = """
import errno, json, os, signal, subprocess, sys
def attempt(what):
    try:
        what()
        return "allowed"
    except OSError as error:
        return errno.errorcode[error.errno]
pid, home, source = {pid}, {home!r}, {source!r}
tried = {{
    "signal": attempt(lambda: os.kill(pid, signal.SIGKILL)),
    "enter its namespaces": attempt(lambda: os.close(os.open(f"/proc/{{pid}}/ns/mnt", os.O_RDONLY))),
    "read its root": attempt(lambda: os.listdir(f"/proc/{{pid}}/root/")),
    "read its layers": attempt(lambda: os.listdir(os.path.join(home, ".local/share/labkit/layers"))),
    "read its files": attempt(lambda: os.listdir(home)),
    "read the source labs": attempt(lambda: os.listdir(source)),
}}
listed = subprocess.run([sys.executable, "-m", "labkit.cli", "ps"], capture_output=True, text=True)
tried["labkit ps"] = listed.stdout + listed.stderr
print(json.dumps(tried))
"""


def map_lines(text: str, name: str) -> list:
    """The lines of the map printed under the header `name` (uid_map or gid_map)."""
    lines = text.split(name + "\n", 1)[1].splitlines()
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) != 3 or not all(field.isdigit() for field in fields):
            break
        found.append(tuple(int(field) for field in fields))
    return found


def host_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def container_process(student, marker="held-box"):
    """Host pid of the student's container process running the held cell."""
    for pid, uid, command in processes_of({student.uid}):
        if marker in command and command.startswith("sh -c"):
            return pid
    return None


def as_student(student, env, *argv):
    return subprocess.run(["setpriv", f"--reuid={student.uid}", f"--regid={student.gid}", "--init-groups",
                           "--", *argv], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": f"{env.prefix}/bin:/usr/bin:/bin", "HOME": str(student.home), "LANG": "C.UTF-8",
                               "PYTHONPATH": str(env.labkit_path)})


def test_a_class_of_students_on_one_hub_each_in_containers_of_their_own(hub, students, class_env, source_labs):
    a, b, c = students
    for student in (a, b):
        hub.api.start_server(student.name)
    kernels = {s.name: hub.api.start_kernel(s.name) for s in (a, b)}

    async def lesson():
        socket_a = hub.api.kernel(a.name, kernels[a.name])
        socket_b = hub.api.kernel(b.name, kernels[b.name])
        await socket_a.connect()
        await socket_b.connect()
        try:
            # The kernel runs as root of the student's user namespace (labkit unshare): its
            # host uid is read from outside.
            pids = {s.name: await sock.run("import os; print(os.getpid())") for s, sock in ((a, socket_a), (b, socket_b))}
            who = {name: host_uid(int(reply.stdout)) for name, reply in pids.items()}
            shown = await socket_a.run(SHOW_IDS)
            held = socket_b.send(HOLD)
            deadline = time.monotonic() + 120
            while (pid := container_process(b)) is None:
                assert time.monotonic() < deadline, f"B's container never started: {socket_b.replies[held]}"
                await asyncio.sleep(0.2)
            listed_by_b = as_student(b, class_env, str(class_env.python), "-m", "labkit.cli", "ps")
            tried = await socket_a.run(ATTEMPTS.format(pid=pid, home=str(b.home), source=str(source_labs)))
            still_running = os.path.exists(f"/proc/{pid}")
            os.kill(pid, signal.SIGUSR1)
            box = await socket_b.wait(held)
            return who, shown, pid, listed_by_b, tried, still_running, box
        finally:
            socket_a.close()
            socket_b.close()

    who, shown, pid, listed_by_b, tried, still_running, box = asyncio.run(lesson())

    # Each student's server and kernel run as that student.
    assert who == {a.name: a.uid, b.name: b.uid}, who
    # Each student's containers run under that student's own ids: root inside is the
    # student, every other id comes from the student's own /etc/subuid range.
    assert shown.status == "ok", shown
    assert map_lines(shown.stdout, "uid_map") == [(0, a.uid, 1), (1, a.subuid, RANGE)], shown.stdout
    assert map_lines(shown.stdout, "gid_map") == [(0, a.gid, 1), (1, a.subuid, RANGE)], shown.stdout
    assert box.status == "ok" and "held-box stopped" in box.stdout, box
    assert map_lines(box.stdout, "uid_map") == [(0, b.uid, 1), (1, b.subuid, RANGE)], box.stdout
    # B lists its own container; A, asking the same, does not see it, and every attempt of
    # A's on it is refused by the kernel while it runs.
    assert "box" in listed_by_b.stdout, listed_by_b
    assert tried.status == "ok", tried
    tried = json.loads(tried.stdout)
    assert "box" not in tried.pop("labkit ps")
    assert still_running
    assert tried == {"signal": "EPERM", "enter its namespaces": "EACCES", "read its root": "EACCES",
                     "read its layers": "EACCES", "read its files": "EACCES",
                     "read the source labs": "EACCES"}, tried

    hub.stop()
    # Stopping the hub leaves nothing: no process of any student (servers, kernels, labkit
    # helpers, containers), no proxy, no mount, no container state in their homes. The
    # servers are stopped with SIGTERM and their children end after them (a fresh clone's full
    # run still saw four exiting, nameless ones): give them a minute to go, then nothing may be left.
    deadline = time.monotonic() + 60
    while processes_of(id_ranges(students)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(id_ranges(students)) == []
    assert hub.process.poll() is not None
    proxy_pid = hub.state / "proxy.pid"
    assert not proxy_pid.exists() or not os.path.exists(f"/proc/{proxy_pid.read_text().strip()}")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert all(str(s.home) not in mounts for s in students)
    for student in (a, b):
        containers = student.labkit_home / "containers"
        assert not containers.exists() or os.listdir(containers) == [], os.listdir(containers)


def test_without_the_0700_mode_the_source_labs_are_readable(students, class_env, source_labs):
    """The refusal above is the directory's mode at work, not an accident of the setup."""
    a = students[0]
    assert as_student(a, class_env, "ls", str(source_labs)).returncode != 0
    os.chmod(source_labs, 0o755)
    try:
        listed = as_student(a, class_env, "ls", str(source_labs))
        assert listed.returncode == 0 and "01-namespaces-lab.ipynb" in listed.stdout
    finally:
        os.chmod(source_labs, 0o700)
