"""Rootless labkit: an ordinary user runs containers, builds and commits images, and a
`%%container` cell in a kernel, on the real kernel, with root only in a user namespace.

As root, the module makes a throw-away user (tests/throwaway_users.py: useradd, with an
/etc/subuid range of its own) and runs labkit as that user from this checkout; the user and everything it left
are removed afterwards, also when a test fails. The checkout and the venv's packages must
be readable by another user (a checkout below a 0700 directory, such as a mktemp dir, is
not: the module skips and says so)."""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import labkit
from throwaway_users import readable_by_others, throwaway_user, why_user_cannot_run_this_checkout

pytestmark = pytest.mark.root

REPO = Path(labkit.__file__).resolve().parent.parent


@dataclass
class Student:
    name: str
    uid: int
    gid: int
    home: Path
    python: str
    env: dict

    @property
    def labkit_home(self) -> Path:
        return self.home / ".local" / "share" / "labkit"

    def run(self, argv, timeout=180, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)

    def labkit(self, *args, timeout=180) -> subprocess.CompletedProcess:
        return self.run([self.python, "-m", "labkit", *args], timeout=timeout)

    def ok(self, *args, timeout=180) -> str:
        done = self.labkit(*args, timeout=timeout)
        assert done.returncode == 0, f"labkit {' '.join(args)} exited {done.returncode}: {done.stderr}"
        return done.stdout

    def python_script(self, code, timeout=180) -> subprocess.CompletedProcess:
        return self.run([self.python, "-c", code], timeout=timeout)

    def processes(self) -> list:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid in self.uids():
                        found.append(int(entry))
                except FileNotFoundError:
                    pass
        return found

    def uids(self) -> set:
        ranges = {self.uid}
        first, count = subordinate_range(self.name)
        return ranges | set(range(first, first + count))


def python_for_others() -> str | None:
    """An interpreter of this one's version that another user may run (this venv's may
    point into root's home)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        real = os.path.realpath(candidate)
        if os.path.exists(real) and readable_by_others(Path(real)) is None and os.stat(real).st_mode & stat.S_IXOTH:
            return candidate
    return None


def subordinate_range(name) -> tuple:
    for line in Path("/etc/subuid").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[1]), int(fields[2])
    return 0, 0


@pytest.fixture(scope="module")
def student():
    """A throw-away user (tests/throwaway_users.py: its home, a range of its own far from
    useradd's and the grading sandboxes', so any process in it is this user's), running
    labkit from this checkout; it and everything it left are removed afterwards."""
    yield from a_student("lkrl", 65536)


@pytest.fixture
def wide_student():
    """A throw-away user as `student`, with a range of 131,072 ids: room to keep a --userns
    container's ids apart from ordinary containers'."""
    yield from a_student("lkrw", 2 * 65536)


def a_student(prefix, ids):
    if os.geteuid() != 0:
        pytest.skip("makes a throw-away user: needs root")
    why = why_user_cannot_run_this_checkout()
    if why:
        pytest.skip(why)
    python = python_for_others()
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that an ordinary user may run "
                    f"({sys.executable} lies below a private directory)")
    if not os.path.exists("/usr/bin/newuidmap"):
        pytest.skip("newuidmap/newgidmap are not installed (Debian package uidmap)")
    with contextlib.ExitStack() as stack:
        try:
            user = stack.enter_context(throwaway_user(prefix, ids))
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot make a user here: {error.cmd[0]} says {error.stderr.decode().strip()}")
        env = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "PATH": "/usr/local/bin:/usr/bin:/bin",
               "LANG": "C.UTF-8", "PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}",
               "PYTHONDONTWRITEBYTECODE": "1"}
        yield Student(user.name, user.uid, user.gid, Path(user.home), python, env)
    assert subordinate_range(user.name) == (0, 0), f"{user.name} still has a range in /etc/subuid"
    assert not Path(user.home).exists()


@pytest.fixture
def nothing_left(student):
    """After the test: no process of the user's, no container directory, no scratch dir,
    no mount of the user's home on the host."""
    yield student
    deadline = time.monotonic() + 10
    while student.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert student.processes() == [], "processes of the user's left running"
    for kind in ("containers", "tmp"):
        directory = student.labkit_home / kind
        left = sorted(os.listdir(directory)) if directory.exists() else []
        assert left == [], f"{kind} left behind in the user's LABKIT_HOME: {left}"
    with open("/proc/self/mountinfo") as table:
        assert str(student.home) not in table.read()


def test_an_ordinary_user_runs_a_container_as_root_of_their_own_range(nothing_left):
    student = nothing_left
    out = student.ok("run", "--", "sh", "-c", "id -u; cat /proc/self/uid_map; hostname")
    lines = out.split("\n")
    assert lines[0] == "0"
    first, count = subordinate_range(student.name)
    maps = [line.split() for line in lines[1:3]]
    assert maps == [["0", str(student.uid), "1"], ["1", str(first), str(count)]]
    assert lines[3].startswith("labkit-")
    assert student.labkit_home.is_dir()   # $XDG_DATA_HOME/labkit, the default rootless
    assert stat.S_IMODE(os.stat(student.labkit_home).st_mode) == 0o700


def test_a_container_user_is_a_subordinate_id_on_the_host(nothing_left):
    student = nothing_left
    script = (
        "import json, os\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "c = Container(ContainerSpec(command=['sleep', '60'], user='1000', name='box'))\n"
        "c.start()\n"
        "r = c.exec(['sh', '-c', 'id -u; echo from exec'])\n"
        "host = os.stat(f'/proc/{c.pid}').st_uid\n"
        "c.kill(); c.wait(); c.remove()\n"
        "print(json.dumps({'out': r.stdout, 'host_uid': host}))\n"
    )
    done = student.python_script(script)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["out"] == "1000\nfrom exec\n"
    first, _ = subordinate_range(student.name)
    assert answer["host_uid"] == first + 999


def test_root_in_a_rootless_container_cannot_read_a_host_file_only_root_can(nothing_left, tmp_path):
    student = nothing_left
    secret_dir = Path("/var/tmp") / f"labkit-rootless-{os.getpid()}"
    secret_dir.mkdir(mode=0o755)
    try:
        secret = secret_dir / "secret"
        secret.write_text("root only\n")
        os.chmod(secret, 0o600)
        done = student.labkit("run", "--volume", f"{secret}:/secret:ro", "--volume", "/etc/shadow:/shadow:ro",
                              "--", "sh", "-c", "cat /secret; cat /shadow; id -u")
        assert "root only" not in done.stdout and "root:" not in done.stdout
        assert done.stdout.strip() == "0"
        assert done.stderr.count("Permission denied") == 2
        # Without the defence (the host's root runs it) the same volume reads the file.
        from labkit.runtime import Container, ContainerSpec

        result = Container(ContainerSpec(command=["cat", "/secret"], volumes=[f"{secret}:/secret:ro"])).run()
        assert result.stdout == "root only\n"
    finally:
        for path in sorted(secret_dir.glob("*")):
            path.unlink()
        secret_dir.rmdir()


def test_dockers_masked_paths_and_seccomp_hold_rootless(nothing_left):
    student = nothing_left
    out = student.ok("run", "--", "sh", "-c",
                     "grep -c Seccomp:.*2 /proc/self/status; wc -c < /proc/timer_list; ls /sys/firmware | wc -l; "
                     "(echo x > /proc/sys/kernel/domainname) 2>&1 | grep -c Read-only; unshare -U true 2>&1 | grep -c 'not permitted'")
    assert out.split() == ["1", "0", "0", "1", "1"]
    # Without Docker's seccomp profile, the same nested user namespace is allowed.
    out = student.ok("run", "--security-opt", "seccomp=unconfined", "--", "sh", "-c", "unshare -U true && echo made")
    assert out.strip() == "made"


def test_mknod_says_it_needs_root(nothing_left):
    student = nothing_left
    done = student.labkit("run", "--", "mknod", "/dev/x", "c", "1", "3")
    assert done.returncode != 0
    assert "not permitted" in done.stderr


def test_a_build_with_files_of_other_ids_and_its_removal(nothing_left):
    student = nothing_left
    context = student.home / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN mkdir -p /home/alice && echo secret > /home/alice/s && chown -R 1000:1000 /home/alice "
        "&& chmod 600 /home/alice/s\n"
        "USER 1000\n"
        "RUN echo mine > /home/alice/note && chmod 600 /home/alice/note\n")
    for path in (context, context / "Dockerfile"):
        os.chown(path, student.uid, student.gid)
    student.ok("build", "-t", "owned", str(context))
    out = student.ok("run", "--image", "owned", "--", "sh", "-c", "id -u; ls -ln /home/alice; cat /home/alice/note")
    assert out.split("\n")[0] == "1000"
    assert out.count(" 1000     1000 ") == 2 and "mine" in out
    first, _ = subordinate_range(student.name)
    owners = {st.st_uid for layer in (student.labkit_home / "layers").iterdir()
              for st in [os.lstat(p) for p in layer.rglob("*") if "alice" in str(p)]}
    assert owners == {first + 999}
    student.ok("image", "rm", "owned")
    layers = sorted(os.listdir(student.labkit_home / "layers"))
    assert len(layers) == 1   # the base image's alone: the user removed the range's files


def test_commit_keeps_the_containers_owners(nothing_left):
    student = nothing_left
    script = (
        "from labkit.cli import enter_user_namespace_if_rootless\n"
        "enter_user_namespace_if_rootless()\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "c = Container(ContainerSpec(command=['sh', '-c', 'echo hi > /f; chown 1000:1000 /f; chmod 600 /f; "
        "sleep 60'], name='tocommit'))\n"
        "c.start()\n"
        "while c.exec(['test', '-f', '/f']).returncode: pass\n"
        "c.commit('committed')\n"
        "c.kill(); c.wait(); c.remove()\n"
    )
    done = student.python_script(script)
    assert done.returncode == 0, done.stderr
    out = student.ok("run", "--image", "committed", "--", "sh", "-c", "ls -ln /f; cat /f")
    assert " 1000     1000 " in out and "hi" in out
    student.ok("image", "rm", "committed")


def test_a_container_cell_in_a_labkit_kernel_of_the_user(nothing_left):
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file
    from kernel_fixtures import LabkitKernel

    from labkit.kernelspec import spec_for

    student = nothing_left
    connection = str(student.home / "kernel.json")
    write_connection_file(connection, ip="127.0.0.1")
    os.chown(connection, student.uid, student.gid)
    argv = [word.replace("{connection_file}", connection) for word in spec_for(student.python)["argv"]]
    process = subprocess.Popen(argv, user=student.uid, group=student.gid, extra_groups=[], env=student.env,
                               cwd=student.home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    client = BlockingKernelClient(connection_file=connection)
    client.load_connection_file()
    client.start_channels(hb=False)   # without a manager, a heartbeat not yet seen counts as a dead kernel
    try:
        try:
            client.wait_for_ready(timeout=60)
        except RuntimeError:
            process.kill()
            raise AssertionError(f"the user's kernel did not start: {process.communicate()[1][-2000:]}") from None
        kernel = LabkitKernel.__new__(LabkitKernel)
        kernel.client = client
        reply = kernel.ok("%%container\necho hello from a cell; id -u; cat /proc/self/uid_map | wc -l")
        assert reply.stdout.split() == ["hello", "from", "a", "cell", "0", "2"]
        reply = kernel.ok("%container run -d --name web -- sleep 60\n"
                          "%container exec web -- cat /etc/hostname")
        assert "web" in reply.stdout
        kernel.ok("%container stop web\n%container rm web")
    finally:
        client.shutdown()
        client.stop_channels()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.unlink(connection)


def test_gc_removes_a_killed_owners_container_with_files_of_other_ids(nothing_left):
    student = nothing_left
    script = (
        "import os\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "c = Container(ContainerSpec(command=['sh', '-c', 'mkdir /d; touch /d/f; chown -R 1000 /d; chmod 700 /d; "
        "echo ready; sleep 60'], name='orphan'))\n"
        "c.start()\n"
        "while c.exec(['test', '-d', '/d']).returncode: pass\n"
        "from labkit.runtime.client import helper_client\n"
        "os.kill(helper_client.get_helper().pid, 9)\n"   # the helper first: it would tidy up after its owner
        "os.kill(os.getpid(), 9)\n"
    )
    student.python_script(script)
    deadline = time.monotonic() + 10
    while student.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = list((student.labkit_home / "containers").iterdir())
    assert len(left) == 1   # the killed owner could not remove it
    out = student.ok("gc")
    assert "container orphan" in out


def test_without_a_range_one_id_is_mapped_and_that_is_said_once(student):
    """uid 65534 (nobody) has no /etc/subuid range: root in the container is nobody on the
    host, and no other id exists there."""
    import shutil

    nobody = 65534
    if subordinate_range("nobody") != (0, 0):
        pytest.skip("nobody has a /etc/subuid range on this host")
    home = Path("/var/tmp") / f"labkit-nobody-{os.getpid()}"
    home.mkdir(mode=0o755)
    os.chown(home, nobody, nobody)
    try:
        env = {**student.env, "HOME": str(home), "USER": "nobody", "LOGNAME": "nobody"}
        done = subprocess.run([student.python, "-m", "labkit", "run", "--", "sh", "-c",
                               "cat /proc/self/uid_map; chown 1000 /tmp 2>&1 | grep -c Invalid"],
                              user=nobody, group=nobody, extra_groups=[], env=env, cwd=home, capture_output=True,
                              text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", str(nobody), "1", "1"]
        assert done.stderr.count("rootless with one id only") == 1
        assert sorted(os.listdir(home / ".local" / "share" / "labkit" / "containers")) == []
    finally:
        shutil.rmtree(home)



def test_a_userns_container_runs_from_a_0700_home_which_stays_closed(nothing_left):
    """--userns rootless: the container's root is the first id of the user's range, not
    the user, and yet its files come from LABKIT_HOME below the user's 0700 home; the home
    and the directories above LABKIT_HOME are not opened to any other id for that."""
    student = nothing_left
    os.chmod(student.home, 0o700)
    modes_before = {path: stat.S_IMODE(os.stat(path).st_mode) for path in (student.home, student.home / ".local")
                    if path.exists()}
    script = (
        "import json, os\n"
        "from labkit.runtime import Container, ContainerSpec, userns_fields\n"
        "c = Container(ContainerSpec(command=['sh', '-c', 'id -u; cat /proc/self/uid_map; touch /made; "
        "ls -ln /made; sleep 60'], name='nested', **userns_fields(True)))\n"
        "c.start()\n"
        "while c.exec(['test', '-f', '/made']).returncode: pass\n"
        "host = os.stat(f'/proc/{c.pid}').st_uid\n"
        "c.kill(); out = c.wait(); c.remove()\n"
        "print(json.dumps({'host_uid': host}))\n"
    )
    done = student.python_script(script)
    assert done.returncode == 0, done.stderr
    first, _ = subordinate_range(student.name)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"host_uid": first}
    done = student.labkit("run", "--userns", "--", "sh", "-c", "id -u; cat /proc/self/uid_map; touch /x && ls -ln /x")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "1", "65536"]   # ids 1.. of the user's namespace: the range
    assert lines[2].split()[2:4] == ["0", "0"]
    assert {path: stat.S_IMODE(os.stat(path).st_mode) for path in modes_before} == modes_before
    assert stat.S_IMODE(os.stat(student.home).st_mode) == 0o700
    for path in modes_before:
        assert "system.posix_acl_access" not in os.listxattr(path)


USERNS_VS_ORDINARY = (
    "import json, os, sys\n"
    "from labkit.runtime import Container, ContainerSpec, userns_fields\n"
    "hosts = {}\n"
    "for name, fields in (('ordinary', {'user': '1'}), ('userns', userns_fields(True))):\n"
    "    c = Container(ContainerSpec(command=['sleep', '60'], name=name, **fields))\n"
    "    c.start(detach=True)\n"
    "    hosts[name] = [os.stat(f'/proc/{c.pid}').st_uid, c.exec(['cat', '/proc/self/uid_map']).stdout.split()]\n"
    "    c.kill(); c.wait(); c.remove()\n"
    "print(json.dumps(hosts))\n"
)


def test_a_userns_containers_root_is_no_id_of_ordinary_containers_where_the_range_allows(wide_student):
    """With 131,072 ids the range is split: ordinary containers keep ids 0 to 65,535 of the
    user's namespace (an image's, nobody included), a --userns container's 65,536 come after
    them, so its root is not uid 1 (nor any uid) of an ordinary container."""
    student = wide_student
    first, count = subordinate_range(student.name)
    assert count == 2 * 65536
    done = student.python_script(USERNS_VS_ORDINARY)
    assert done.returncode == 0, done.stderr
    assert "--userns shares ids" not in done.stderr, done.stderr
    hosts = json.loads(done.stdout.strip().splitlines()[-1])
    assert hosts["ordinary"][0] == first                   # uid 1: the range's first id
    assert hosts["userns"][0] == first + 65535             # root of --userns: past every ordinary id
    assert hosts["userns"][1] == ["0", "65536", "65536"]   # ids 65536.. of the user's namespace
    # An ordinary container may not take an id kept for --userns containers...
    refused = student.labkit("run", "--user", "65536", "--", "true")
    assert refused.returncode == 125 and "kept for --userns containers" in refused.stderr, refused.stderr
    # ...which the user's namespace has (the refusal is labkit's, not a missing id): as --userns root.
    assert student.ok("run", "--userns", "--", "id", "-u").strip() == "0"


def test_a_range_too_small_to_keep_userns_ids_apart_says_so_once(nothing_left):
    """Debian's default 65,536 ids cannot keep them apart: the --userns container's root is
    then uid 1 of ordinary containers (the same host id), and one line says so and how to fix it."""
    student = nothing_left
    first, count = subordinate_range(student.name)
    assert count == 65536
    # (a second --userns container's spec in the same process: said once, not per container)
    done = student.python_script(USERNS_VS_ORDINARY + "ContainerSpec(command=['true'], **userns_fields(True)).validated()\n")
    assert done.returncode == 0, done.stderr
    hosts = json.loads(done.stdout.strip().splitlines()[-1])
    assert hosts["ordinary"][0] == hosts["userns"][0] == first   # the overlap the line names
    said = [line for line in done.stderr.splitlines() if "--userns shares ids" in line]
    assert len(said) == 1 and "has 65536 ids" in said[0] and "usermod --add-subuids" in said[0], done.stderr


def test_top_and_ps_see_a_rootless_container_without_a_cgroup(nothing_left):
    """No cgroup lists a rootless container's processes on cgroup v1: top() finds them in
    its PID namespace (an exec's too, and one of another id of the range), and labkit ps
    reads "running" from the runtime."""
    student = nothing_left
    script = (
        "import json, subprocess, sys, time\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "c = Container(ContainerSpec(command=['sh', '-c', 'sleep 61 & sleep 63'], name='toplisted'))\n"
        "c.start(detach=True)\n"
        "c.exec(['sh', '-c', 'sleep 62 >/dev/null 2>&1 &'], user='1000')\n"
        "for _ in range(500):\n"
        "    rows = c.top()\n"
        "    if len(rows) >= 4: break\n"
        "    time.sleep(0.02)\n"
        "ps = subprocess.run([sys.executable, '-m', 'labkit', 'ps'], capture_output=True, text=True).stdout\n"
        "c.kill(); c.wait(); c.remove()\n"
        "print(json.dumps({'top': rows, 'ps': ps, 'after': c.top()}))\n"
    )
    done = student.python_script(script)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    commands = sorted(command for _, command in answer["top"])
    assert [c for c in commands if c.startswith("sleep")] == ["sleep 61", "sleep 62", "sleep 63"], commands
    line = next(line for line in answer["ps"].splitlines() if "toplisted" in line)
    assert "running" in line
    assert answer["after"] == []
