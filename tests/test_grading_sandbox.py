"""The grading sandbox (labkit/grading/sandbox/), on the real kernel: a lab's nested
containers work inside it, and what a cheating submission tries from inside fails.
Each refusal is shown, where that is safe, to succeed with kind="none" (the kernel on
the host, as before sandboxes), so that the test can fail.

Every test ends with a leak check: no sandbox cgroup, mount, process, veth, temp dir or
registry entry is left on the host.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from kernel_fixtures import labkit_kernelspec, wait_until  # noqa: F401 — used by name

from labkit.linux import processes

pytestmark = pytest.mark.root

CELL_TIMEOUT = 120


# --- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def _kernelspec(labkit_kernelspec):
    """The "labkit" kernelspec the sandbox starts (kernel_fixtures installs it)."""


@pytest.fixture(autouse=True)
def sandbox_leak_check(monkeypatch):
    """After the test, nothing of the sandboxes it made is left: processes (by their uid
    range), cgroups, network namespaces (no process holds them), mounts, directories,
    registry entries. Other graders on this host (other tests, other engineers) may run
    sandboxes of their own at the same time: only this test's are looked at."""
    from labkit.grading.sandbox.base import BaseSandbox

    made = []
    original = BaseSandbox.open

    def recording_open(self):
        made.append(self)
        original(self)
        self.recorded = {"directory": str(self.directory), "cgroups": list(getattr(self, "cgroup", None)
                                                                             and self.cgroup.dirs.values() or []),
                         "netns": os.stat(self.netns_path).st_ino if self.pid else None,
                         "uids": (self.uid, self.uid + (1 << 18)) if getattr(self, "uid", None) else None}

    monkeypatch.setattr(BaseSandbox, "open", recording_open)
    yield made
    deadline = time.monotonic() + 10
    while (left := _left_by(made)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"left on the host: {left}"


def _left_by(sandboxes) -> list:
    left = []
    for box in sandboxes:
        recorded = getattr(box, "recorded", None)
        if recorded is None:
            continue
        if os.path.exists(recorded["directory"]):
            left.append(f"directory {recorded['directory']}")
        entry = getattr(box, "slot", None) is not None and os.path.join("/run/labkit/sandboxes", f"{box.slot}.json")
        try:
            holder = entry and open(entry).read()
        except FileNotFoundError:
            holder = None
        if holder and f'"owner_pid": {os.getpid()},' in holder:
            left.append(f"registry entry {entry}")
        elif holder:
            continue   # the slot (its cgroup names, its uid range) is another grader's now
        # The mount check below also covers the network namespace: one outlives its last
        # process only while something mounts it.
        left += [f"cgroup {path}" for path in recorded["cgroups"] if os.path.exists(path)]
        with open("/proc/self/mountinfo") as table:
            left += [f"mount {line.split()[4]}" for line in table if recorded["directory"] in line]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
                if recorded["uids"] and recorded["uids"][0] <= uid < recorded["uids"][1] \
                        and processes.is_running(int(entry), processes.start_time(int(entry))):
                    left.append(f"process {entry} ({open(f'/proc/{entry}/comm').read().strip()})")
                if recorded["netns"] and os.stat(f"/proc/{entry}/ns/net").st_ino == recorded["netns"]:
                    left.append(f"network namespace held by process {entry}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return left


def run_cells(box, *cells, timeout=CELL_TIMEOUT) -> list:
    """Run `cells` in a fresh kernel of `box`; each cell's stdout, or `ERROR Name: value`."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell(textwrap.dedent(cell)) for cell in cells])
    NotebookClient(notebook, km=box.kernel_manager(kernel_name="labkit"), timeout=timeout, allow_errors=True,
                   startup_timeout=max(60, timeout), resources={"metadata": {"path": str(box.scratch)}}).execute()
    texts = []
    for cell in notebook.cells:
        text = ""
        for output in cell.outputs:
            if output.output_type == "stream":
                text += output.text
            elif output.output_type == "error":
                text += f"ERROR {output.ename}: {output.evalue}\n"
        texts.append(text)
    return texts


def sandbox(kind="namespaces", **limits):
    from labkit.grading.sandbox import Sandbox, SandboxLimits

    return Sandbox(kind=kind, limits=SandboxLimits(**{"wall_seconds": 600, **limits}))


SHELL = """
import subprocess
def sh(command):
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    print(done.stdout + done.stderr, end="")
"""


def shell(body: str) -> str:
    """A cell with `sh(command)` defined, then `body`."""
    return SHELL + textwrap.dedent(body)


# --- a lab works inside -----------------------------------------------------------------

def test_a_lab_runs_nested_containers_images_and_a_bridge_inside():
    with sandbox(memory="1g") as box:
        built, oom, ping, committed, bomb, userns = run_cells(
            box,
            """\
            %%image build lab-notes
            FROM busybox
            RUN echo my notes > /root/notes""",
            """\
            %container run --memory 48m --no-raise --out big -- sh -c 'dd if=/dev/zero of=/dev/null bs=96M count=1'
            print("oom", big.oom_killed)""",
            """\
            web = %container run -d --name net-web --net bridge -- sleep 600
            client = %container run -d --name net-client --net bridge -- sleep 600
            %container exec net-client -- ping -c1 -W5 net-web""",
            """\
            editor = %container run -d --name img-editor -- sh -c 'echo buy milk > /root/todo; sleep 600'
            import time; time.sleep(0.5)
            committed = %container commit img-editor lab-commit
            print(len(committed.layers), "layers")""",
            """\
            %container run --pids-limit 16 --no-raise --out bomb -- sh -c 'for i in $(seq 100); do sleep 1 & done 2>/dev/null; wait'
            print("refused forks", bomb.stats["pids_limit_hits"] > 0)""",
            """\
            from labkit.runtime import run, DEFAULT_NAMESPACES
            print(run("cat /proc/self/uid_map", namespaces=DEFAULT_NAMESPACES + ("user",)).stdout)""",
        )
        assert "built lab-notes" in built
        assert "oom True" in oom
        assert "1 packets received" in ping
        assert "2 layers" in committed
        assert "refused forks True" in bomb
        assert userns.split() == ["0", "100000", "65536"]   # the sandbox's own uid range, nested
        # The grader's evidence comes from the kernel, naming cgroups below the sandbox's.
        log = " ".join(record[1] for record in box.kernel_log())
        assert "oom_memcg=/labkit-sandbox/" in log
        assert "fork rejected by pids controller in /labkit-sandbox/" in log
        images = set(os.listdir(box.home / "images")) if (box.home / "images").is_dir() else set()
        assert images or any(box.home.iterdir())   # the nested store lives in the sandbox's LABKIT_HOME


def test_the_kernel_is_root_of_a_user_namespace_mapped_to_an_unprivileged_range():
    from labkit.grading.sandbox.namespaces import FIRST_UID

    with sandbox() as box:
        (inside,) = run_cells(box, "import os; print(os.getuid(), open('/proc/self/uid_map').read().split())")
        assert inside.split(maxsplit=1)[0] == "0"
        kernel = [pid for pid in box.pids() if pid != box.pid and box.owns_pid(pid)]
        assert kernel, "the kernel is not in the sandbox's cgroup and PID namespace"
        assert all(os.stat(f"/proc/{pid}").st_uid >= FIRST_UID for pid in kernel)
        assert not box.owns_pid(os.getpid())
        assert box.owns_cgroup(box.cgroup_paths["pids"] + "/labkit/x") if "pids" in box.cgroup_paths else True
        assert not box.owns_cgroup("/sys/fs/cgroup/pids/labkit")


# --- what a cheating submission tries --------------------------------------------------------

@pytest.mark.parametrize("kind", ["none", "namespaces"])
def test_the_gradebook_and_source_are_not_reachable(tmp_path, kind):
    gradebook = tmp_path / "gradebook"
    gradebook.mkdir()
    (gradebook / "gradebook.json").write_text("{}")
    source = os.path.join(os.path.dirname(__file__), "..", "instructor", "labs")
    # Without a sandbox these writes would land on the host (they left /work/x, /usr/x
    # and /etc/x there): only the sandboxed case tries them.
    outside = "" if kind == "none" else """
            sh("touch /work/x /usr/x /etc/x 2>/dev/null || echo refused-outside")
            sh("touch $LABKIT_HOME/ok ./ok && echo scratch-and-home-writable")"""
    with sandbox(kind) as box:
        (out,) = run_cells(box, shell(f"""
            sh("echo forged > {gradebook}/gradebook.json && echo wrote-gradebook")
            sh("ls {os.path.abspath(source)} >/dev/null && echo sees-source"){outside}"""))
    if kind == "none":
        assert "wrote-gradebook" in out and "sees-source" in out
        return
    assert "wrote-gradebook" not in out and "sees-source" not in out
    assert "refused-outside" in out and "scratch-and-home-writable" in out
    assert (gradebook / "gradebook.json").read_text() == "{}"


@pytest.mark.parametrize("kind", ["none", "namespaces"])
def test_a_host_process_is_out_of_reach(kind):
    host = subprocess.Popen(["sleep", "600"])
    try:
        with sandbox(kind) as box:
            (out,) = run_cells(box, f"""
                import os, signal
                try:
                    os.kill({host.pid}, signal.SIGTERM); print("signalled")
                except OSError as error:
                    print("refused", error.errno)
                print("sees it" if os.path.exists("/proc/{host.pid}/cmdline")
                      and b"600" in open("/proc/{host.pid}/cmdline", "rb").read() else "does not see it")""")
        if kind == "none":
            assert "signalled" in out
            assert host.wait(10) == -signal.SIGTERM
        else:
            assert "refused" in out and "does not see it" in out
            assert host.poll() is None
    finally:
        host.kill()
        host.wait()


@pytest.mark.parametrize("kind", ["none", "namespaces"])
def test_proc_mounted_from_inside_cannot_set_the_core_pattern(kind, tmp_path):
    """The classic escape: a fresh /proc, then /proc/sys/kernel/core_pattern runs a host
    program as root. Writing back the value it already has is harmless on the host.
    Without a sandbox the cell's /proc mount is the host's own, so the test takes it away
    again (it was left at /tmp/p, one more on every run of the suite)."""
    before = open("/proc/sys/kernel/core_pattern").read()
    target = tmp_path / "p"
    try:
        with sandbox(kind) as box:
            (out,) = run_cells(box, shell(f"""
                sh("mkdir -p {target} && mount -t proc proc {target} && echo mounted-proc")
                sh("unshare --pid --fork --mount --mount-proc sh -c "
                   "'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern && echo wrote-core-pattern'")
                """))
    finally:
        while os.path.ismount(target):
            subprocess.run(["umount", str(target)], check=True)
    assert open("/proc/sys/kernel/core_pattern").read() == before
    if kind == "none":
        assert "mounted-proc" in out and "wrote-core-pattern" in out
    else:
        assert "wrote-core-pattern" not in out and "Permission denied" in out


@pytest.mark.parametrize("kind", ["none", "namespaces"])
def test_nothing_from_the_host_can_be_remounted_writable(kind):
    with sandbox(kind) as box:
        (out,) = run_cells(box, shell("""
            sh("unshare --mount sh -c 'mount --bind -o ro /usr /usr; mount -o remount,bind,rw /usr && echo remounted'")
            sh("mount -o remount,bind,rw /etc && echo remounted-etc")
            import labkit
            try:
                open(labkit.__file__, "a").close(); print("labkit-editable")
            except OSError as error:
                print("labkit-read-only", error.errno)"""))
    if kind == "none":
        assert "remounted" in out.split()
        return
    assert "remounted" not in out.split() and "remounted-etc" not in out
    assert "labkit-read-only" in out


@pytest.mark.parametrize("kind", ["none", "namespaces"])
def test_a_file_only_host_root_can_read_stays_closed(kind):
    if os.stat("/etc/shadow").st_mode & 0o004:
        pytest.skip("/etc/shadow is world-readable on this host")
    with sandbox(kind) as box:
        (out,) = run_cells(box, shell("""
            sh("head -c 4 /etc/shadow >/dev/null && echo read-shadow")"""))
    assert ("read-shadow" in out) == (kind == "none")


def test_the_sandbox_cannot_raise_its_own_limits():
    with sandbox(memory="512m") as box:
        (out,) = run_cells(box, shell("""
            sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max")
            sh("echo max > /sys/fs/cgroup/pids/pids.max && echo raised-pids")
            sh("echo 9999999999 > /sys/fs/cgroup/memory/memory.limit_in_bytes && echo raised-memory")"""))
        limit = int(open(os.path.join(box.cgroup_paths["memory"], "memory.limit_in_bytes")).read())
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("cgroup v1 paths: the v2 lane checks the same through box.cgroup_paths")
    assert limit == 512 << 20
    assert "raised-pids" not in out and "raised-memory" not in out
    assert str(512 << 20) in out


def _all_gone(started: dict, timeout=10.0) -> bool:
    """Have these processes (PID: start time) ended? A zombie counts as ended; its parent
    outside the sandbox (jupyter_client's launcher, reaped by the host's init) may take a
    moment to be reaped."""
    deadline = time.monotonic() + timeout
    while any(processes.is_running(pid, start) for pid, start in started.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _listening(port) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


LEAVE_BEHIND = SHELL + textwrap.dedent("""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    sh(f"setsid sh -c 'exec python3 -m http.server {port} --bind 127.0.0.1' >/dev/null 2>&1 &")
    sh("setsid sleep 1000 >/dev/null 2>&1 &")
    import time
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            time.sleep(0.1)
    print("port", port)""")


def test_a_setsid_process_and_a_server_end_with_the_sandbox():
    with sandbox() as box:
        (out,) = run_cells(box, LEAVE_BEHIND)
        port = int(out.split("port")[1].split()[0])
        assert box.in_netns(_listening, port), "the server did not start inside the sandbox"
        assert not _listening(port) or True  # the host's loopback is another namespace (it may hold its own)
        left = [pid for pid in box.pids() if box.owns_pid(pid)]
        names = {open(f"/proc/{pid}/comm").read().strip() for pid in left}
        assert {"sleep", "python3"} <= names
        started = {pid: processes.start_time(pid) for pid in left}
    assert _all_gone(started), "a process outlived its sandbox"
    with sandbox() as after:
        (out,) = run_cells(after, shell(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close(); print("reached")
            except OSError:
                print("nothing there")
            sh("ps -eo comm | sort | uniq")"""))
    assert "nothing there" in out and "sleep" not in out


def test_without_a_sandbox_a_setsid_process_outlives_the_kernel():
    with sandbox("none") as box:
        (out,) = run_cells(box, """
            import subprocess
            print("pid", subprocess.Popen(["setsid", "sleep", "1000"]).pid)""")
        pid = int(out.split()[1])
    try:
        # Its exec of sleep may come after the kernel is gone (setsid runs first, in the
        # same process): a loaded machine read "setsid" here. Alive either way, and it
        # becomes sleep.
        wait_until(lambda: open(f"/proc/{pid}/comm").read().strip() != "setsid", timeout=10)
        assert open(f"/proc/{pid}/comm").read().strip() == "sleep"
    finally:
        os.kill(pid, signal.SIGKILL)


# --- the sandbox's own guarantees ---------------------------------------------------------------

def test_the_wall_clock_budget_ends_the_sandbox():
    from nbclient.exceptions import DeadKernelError

    with sandbox(wall_seconds=20) as box:
        with pytest.raises(DeadKernelError):
            run_cells(box, "import time; time.sleep(3600)", timeout=600)
        assert box.timed_out
        assert [pid for pid in box.pids() if box.owns_pid(pid)] == []


def test_a_killed_grader_leaves_nothing_after_the_next_sweep(tmp_path):
    script = tmp_path / "grader.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from labkit.grading.sandbox import Sandbox
        box = Sandbox().__enter__()
        print(box.pid, box.directory, flush=True)
        time.sleep(600)
        """))
    grader = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pid1, directory = grader.stdout.readline().split()
    grader.kill()
    grader.wait()
    from labkit.grading.sandbox.namespaces import sweep

    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid1}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid1}"), "the sandbox's PID 1 outlived its grader"
    sweep()   # (another grader on this host may have swept it first: what counts is that it is gone)
    assert not os.path.exists(directory)


def test_limits_the_host_cannot_honour_are_a_clear_error(monkeypatch):
    from labkit.errors import ConfigError, HostError
    from labkit.grading.sandbox import Sandbox, SandboxLimits
    from labkit.grading.sandbox import cgroup

    with pytest.raises(ConfigError, match="sandbox memory limit"):
        Sandbox(limits=SandboxLimits(memory="lots"))
    with pytest.raises(ConfigError, match="not one of"):
        Sandbox(kind="docker")
    if cgroup.detect_mode() == "v2":
        pytest.skip("the v1 mount table is what this host lacks")
    mounts = cgroup.controller_mounts()
    monkeypatch.setattr(cgroup, "controller_mounts", lambda: {k: v for k, v in mounts.items() if k != "pids"})
    with pytest.raises(HostError, match="needs the pids cgroup controller"):
        with Sandbox():
            pass
