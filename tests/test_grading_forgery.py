"""Forged submissions, graded for real by `labkit grade run` in its sandbox: each scores what
an honest grader gives (0 for the forgery, exactly the points of the honest part), the next
submission is unaffected, and nothing is left on the host.

The forgeries are the ones a cheating student tried against the labs (issue 19): rebinding
`check`, the probes, `sum` or the report's display, an IPython hook, a replaced module,
labkit's own files edited from inside, hand-built Results, a container state pointing at
a cgroup made on the host, a `hostname` program replaced in the container, a server on the
port on the host, a plain build passed off as a commit, and detached processes that outlive
the kernel to rewrite the gradebook, another submission's file, or to answer the next
submission's port check. Where safe, the same trick is shown to work without the defence
(`--sandbox none`, or nbgrader, which trusts the kernel: see test_labs.py)."""

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture
from leak_checks import own_temp_root, remove_temp_root, sandbox_cgroups, sandbox_leftovers
from network_by_hand import PROBES, in_own_netns, judge, wiring

from labkit.cli import main
from labkit.grading.notebook import grade_id

pytestmark = [pytest.mark.root, pytest.mark.slow]

LABS_DIR = Path(__file__).resolve().parent.parent / "instructor" / "labs"   # the sources
RELEASED_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "labs"
MARKER = f"labkit-forgery-marker-{os.getpid()}-{secrets.token_hex(4)}"   # this run's: another run's forgeries are not ours
PORT = 18480

FORGERIES_ON_A_BLANK_CGROUPS_LAB = {
    "check-lambda": "check = lambda cell, *e: sum(x.points for x in e)",
    "probes-replaced": ("import labkit.grading.probes as P\n"
                        "for n in P.__all__:\n"
                        "    setattr(P, n, lambda *a, **k: (lambda: True))"),
    "builtins-sum": "import builtins\nbuiltins.sum = lambda *a, **k: 1000",
    "repr-patched": ("from labkit.grading.checks import Report\n"
                     "Report._repr_mimebundle_ = lambda self, include=None, exclude=None: {'text/plain': '10'}\n"
                     "Report.__repr__ = lambda self: '10'"),
    "pre-run-cell": "get_ipython().events.register('pre_run_cell', lambda *a: display(1000))",
    "sys-modules": ("import sys, types\n"
                    "fake = types.ModuleType('labkit.grading')\n"
                    "fake.check = lambda *a: 10\n"
                    "fake.expect = lambda *a, **k: None\n"
                    "fake.Answer = lambda name: name\n"
                    "fake.progress = lambda: None\n"
                    "fake.tidy = lambda **k: None\n"
                    "fake.probes = types.SimpleNamespace()\n"
                    "for n in ['memory_limit', 'cpu_limit', 'pids_limit', 'finished_ok', 'oom_killed', 'cpu_share',\n"
                    "          'throttled', 'fork_bomb_held']:\n"
                    "    setattr(fake.probes, n, lambda *a, **k: None)\n"
                    "sys.modules['labkit.grading'] = fake\n"
                    "from labkit.grading import Answer, check, expect, probes, progress, tidy"),
    "edit-installed": ("import labkit.grading.checks as c, labkit.grading.judge as j, pathlib\n"
                       "for module in (c, j):\n"
                       "    p = pathlib.Path(module.__file__)\n"
                       "    try:\n"
                       "        p.write_text(p.read_text().replace('return sum(o.points for o in self.outcomes)', "
                       "'return 1000'))\n"
                       "    except OSError as error:\n"
                       "        print('could not edit', p, error)"),
    "results-forged": ("from labkit.runtime import Result\n"
                       "small = Result(name='small', command=['true'], exit_code=0)\n"
                       "big = Result(name='big', command=['dd'], exit_code=None, signal=9, oom_killed=True)\n"
                       "bomb = Result(name='bomb', command=['sh'], exit_code=0, stats={'pids_limit_hits': 5})"),
}


def with_cells(notebook, changes: dict, after_setup: str | None = None):
    copy = nbformat.from_dict(json.loads(json.dumps(notebook)))
    for cell in copy.cells:
        if grade_id(cell) in changes:
            cell.source = changes[grade_id(cell)]
    if after_setup is not None:
        at = next(i for i, c in enumerate(copy.cells) if (grade_id(c) or "").endswith("-setup")) + 1
        copy.cells.insert(at, nbformat.v4.new_code_cell(after_setup))
    return copy


def write(notebook, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return str(path)


def grade(source: Path, files: dict, out: Path, *options) -> dict:
    assert main(["grade", "run", str(source), *files.values(), "--out", str(out), "--timeout", "30", *options]) == 0
    data = json.loads((out / "gradebook.json").read_text())
    return {s["student"]: s for s in data["submissions"]}


def read(path) -> dict:
    return nbformat.read(str(path), as_version=4)


@pytest.fixture(scope="module")
def released(labkit_kernelspec, host_state):  # noqa: F811 — host_state: every grading here makes its sandboxes in its root
    """The committed released copies (what a student starts from; tests/test_released_labs.py
    holds them to their sources)."""
    return RELEASED_DIR


def host_cgroup_like_a_container(limits: dict):
    """A cgroup on the host (outside any sandbox) with the lab's limits and a process in
    it: what a container state forged inside the sandbox could point at."""
    import subprocess

    from labkit.cgroups import Limits, host_hierarchy

    cgroup = host_hierarchy().create(f"forged-{os.getpid()}", Limits(**limits))
    sleeper = subprocess.Popen(["sleep", "600"])
    cgroup.add_process(sleeper.pid)
    return cgroup, sleeper


@pytest.fixture(scope="module")
def host_state(tmp_path_factory):
    """Where this module's grading sandboxes are made (a temp root of its own: the leak check
    looks there, not at other graders' sandboxes on this host), and the sandbox cgroups now."""
    tmp_path_factory.getbasetemp()   # pytest's own temp root stays where it is
    with own_temp_root() as root:
        yield {"root": root, "cgroups": sandbox_cgroups()}
    remove_temp_root(root)


def processes_with(marker: str) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def cgroups_lab(released, tmp_path_factory):
    source_path = LABS_DIR / "02-cgroups-lab.ipynb"
    source, blank = read(source_path), read(released / "02-cgroups-lab.ipynb")
    folder = tmp_path_factory.mktemp("forged-cgroups")
    files = {name: write(with_cells(blank, {}, cell), folder / f"{name}.ipynb")
             for name, cell in FORGERIES_ON_A_BLANK_CGROUPS_LAB.items()}
    limits_answer = next(c.source for c in source.cells if grade_id(c) == "cg-limits-answer")
    honest_limits = with_cells(blank, {"cg-limits-answer": limits_answer}, FORGERIES_ON_A_BLANK_CGROUPS_LAB["results-forged"])
    files["limits-honest-results-forged"] = write(honest_limits, folder / "limits-honest-results-forged.ipynb")
    cgroup, sleeper = host_cgroup_like_a_container({"memory": 64 << 20, "cpus": 0.5, "pids": 32})
    try:
        forged_state = ("import json, os\n"
                        "for n, cgroup in enumerate(['labkit/{leaf}', '../../../../labkit/{leaf}', '/labkit/{leaf}']):\n"
                        "    d = os.path.join(os.environ['LABKIT_HOME'], 'containers', f'forged{{n}}')\n"
                        "    os.makedirs(d, exist_ok=True)\n"
                        "    with open(os.path.join(d, 'state.json'), 'w') as f:\n"
                        "        json.dump({{'name': 'cg-capped', 'id': f'forged{{n}}', 'cgroup': cgroup}}, f)"
                        ).format(leaf=cgroup.name.rsplit("/", 1)[-1])
        files["state-forged"] = write(with_cells(blank, {"cg-limits-answer": forged_state}), folder / "state-forged.ipynb")
        checks_file = Path(__import__("labkit.grading.checks").grading.checks.__file__)
        before = hashlib.sha256(checks_file.read_bytes()).hexdigest()
        graded = grade(source_path, files, folder / "grades", "--jobs", "2")
        yield graded, before, checks_file
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroup.delete()


@pytest.mark.parametrize("student", sorted(FORGERIES_ON_A_BLANK_CGROUPS_LAB))
def test_a_forgery_in_the_students_kernel_scores_nothing(cgroups_lab, student):
    graded, _, _ = cgroups_lab
    assert graded[student]["error"] is None
    assert graded[student]["total"] == 0, [c for c in graded[student]["cells"] if c["score"]]
    assert all(c["status"] == "scored" for c in graded[student]["cells"]), "every check was judged"


def test_hand_built_results_earn_nothing_next_to_honest_limits(cgroups_lab):
    graded, _, _ = cgroups_lab
    cells = {c["grade_id"]: c for c in graded["limits-honest-results-forged"]["cells"]}
    assert cells["cg-limits-check"]["score"] == 3
    assert graded["limits-honest-results-forged"]["total"] == 3
    observed = [check["observed"] for check in cells["cg-oom-check"]["checks"]]
    assert any("never ran" in words for words in observed), observed


def test_a_container_state_pointing_at_a_host_cgroup_earns_nothing(cgroups_lab):
    graded, _, _ = cgroups_lab
    assert graded["state-forged"]["total"] == 0
    limits = next(c for c in graded["state-forged"]["cells"] if c["grade_id"] == "cg-limits-check")
    assert all("no running container named 'cg-capped'" in c["observed"] for c in limits["checks"])


def test_labkits_own_files_cannot_be_edited_from_a_submission(cgroups_lab):
    _, before, checks_file = cgroups_lab
    assert hashlib.sha256(checks_file.read_bytes()).hexdigest() == before


def test_a_replaced_hostname_program_is_not_the_hostname(released, tmp_path):
    source_path = LABS_DIR / "01-namespaces-lab.ipynb"
    fake = ("box = %container run -d --name ns-box -- sh -c "
            "'rm /bin/hostname; printf \"#!/bin/sh\\necho lab\\n\" > /bin/hostname; chmod +x /bin/hostname; exec sleep 600'")
    files = {"hostname": write(with_cells(read(source_path), {"ns-box-answer": fake}), tmp_path / "hostname.ipynb")}
    graded = grade(source_path, files, tmp_path / "grades")
    cells = {c["grade_id"]: c for c in graded["hostname"]["cells"]}
    assert cells["ns-box-check"]["score"] == 2, cells["ns-box-check"]["checks"]
    assert graded["hostname"]["total"] == graded["hostname"]["max_total"] - 1


def test_a_plain_build_is_not_a_commit(released, tmp_path):
    source_path = LABS_DIR / "03-images-lab.ipynb"
    build = "%%image build lab-commit\nFROM busybox\nRUN mkdir -p /root && echo buy milk > /root/todo"
    files = {"built": write(with_cells(read(source_path), {"img-commit-answer": build}), tmp_path / "built.ipynb")}
    graded = grade(source_path, files, tmp_path / "grades")
    cells = {c["grade_id"]: c for c in graded["built"]["cells"]}
    checks = {c["name"]: c["passed"] for c in cells["img-commit-check"]["checks"]}
    # The file is there and the (solved) /etc/hosts edit stands; the 2 points for a layer made
    # from a container's read-write layer are lost: a build is not a commit.
    assert checks == {"lab-commit has /root/todo": True, "img-editor's /etc/hosts names db": True,
                      "lab-commit is busybox plus one layer without the /etc files": False}, checks
    assert cells["img-commit-check"]["score"] == 2, cells["img-commit-check"]["checks"]
    assert graded["built"]["total"] == graded["built"]["max_total"] - 2


class PageServer:
    """A server on the host's 127.0.0.1:PORT giving the lab's page (a host-side fake)."""

    def __init__(self, port):
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", port))
        self.socket.listen()
        self.socket.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    connection.recv(1000)
                    connection.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from net-site\n")
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join()
        self.socket.close()


LISTENER = (
    "import subprocess, sys\n"
    "code = '''\n"
    "import socket  # " + MARKER + "\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', 18480)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.recv(1000); c.sendall(b'HTTP/1.0 200 OK\\\\r\\\\n\\\\r\\\\nhello from net-site\\\\n'); c.close()\n"
    "'''\n"
    "subprocess.Popen(['setsid', sys.executable, '-c', code], start_new_session=True,\n"
    "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)")


def writer(targets) -> str:
    script = "; ".join(f"echo student,=1+1 > {target}" for target in targets)
    return ("import subprocess\n"
            f"subprocess.Popen(['setsid', 'sh', '-c', 'sleep 3; {script}; sleep 600 # {MARKER}'],\n"
            "                 start_new_session=True)")


@pytest.fixture(scope="module")
def network_lab(released, tmp_path_factory, host_state):
    source_path = LABS_DIR / "04-network-lab.ipynb"
    blank = read(released / "04-network-lab.ipynb")
    folder = tmp_path_factory.mktemp("forged-network")
    out = folder / "grades"
    out.mkdir()
    (out / "gradebook.csv").write_text("before\n")
    bystander = folder / "bystander.ipynb"
    write(blank, bystander)
    bystander_bytes = bystander.read_bytes()
    files = {
        "host-fake": write(blank, folder / "host-fake.ipynb"),
        "listener": write(with_cells(blank, {}, LISTENER), folder / "listener.ipynb"),
        "after-listener": write(blank, folder / "after-listener.ipynb"),
        "writer": write(with_cells(blank, {}, writer([out / "gradebook.csv", out / "gradebook.json", bystander])),
                        folder / "writer.ipynb"),
    }
    server = PageServer(PORT)
    try:
        graded = grade(source_path, files, out)        # one at a time, in this order
        written = {name: (out / name).read_bytes() for name in ("gradebook.csv", "gradebook.json")}
        time.sleep(5)                                  # the writer would have written by now
        unchanged = all((out / name).read_bytes() == data for name, data in written.items())
        unsandboxed = grade(source_path, {"host-fake": files["host-fake"]}, folder / "unsandboxed", "--sandbox", "none")
    finally:
        server.close()
    yield graded, unchanged, bystander.read_bytes() == bystander_bytes, unsandboxed


def test_a_server_on_the_host_port_does_not_answer_for_the_submission(network_lab):
    graded, _, _, unsandboxed = network_lab
    assert graded["host-fake"]["total"] == 0
    # without the sandbox, the port check asks the host and the fake earns its points
    assert unsandboxed["host-fake"]["total"] == 3


def test_a_server_left_by_one_submission_does_not_answer_for_the_next(network_lab):
    graded, _, _, _ = network_lab
    # In its own sandbox the listener answers its own port check: the probe asks only that
    # the port answers in the submission's network namespace (docs/labs.md says so).
    assert graded["listener"]["total"] == 3
    assert graded["after-listener"]["total"] == 0


def test_a_detached_process_cannot_rewrite_the_gradebook_or_another_submission(network_lab):
    graded, unchanged, bystander_unchanged, _ = network_lab
    assert graded["writer"]["total"] == 0
    assert unchanged, "the gradebook changed after grading"
    assert bystander_unchanged, "another submission's file changed"


def test_nothing_a_forgery_started_is_left_on_the_host(network_lab, cgroups_lab, network_by_hand, host_state):
    assert processes_with(MARKER) == []
    assert sandbox_leftovers(host_state["root"], host_state["cgroups"]) == []



# --- lab 4's pair by hand: PIDs from outside the sandbox, a /proc made of plain files -------

def wired_pair_on_the_host():
    """Two processes of the test's, each in a network namespace of its own, joined by a veth
    pair with addresses in the lab's subnet, up: a correct answer, but not the submission's.
    Everything is made inside their namespaces (the host's own is never touched)."""
    import subprocess

    left, right = in_own_netns(), in_own_netns()
    try:
        for step in wiring("right", left.pid, right.pid):
            subprocess.run(step, shell=True, check=True)
    except BaseException:
        for process in (left, right):
            process.kill()
            process.wait()
        raise
    return left, right


FAKE_PROC = ("import os\n"
             "for pid, address in (('4242', '192.168.44.1'), ('4243', '192.168.44.2')):\n"
             "    os.makedirs(f'proc/{pid}/ns', exist_ok=True)\n"
             "    os.makedirs(f'proc/{pid}/net', exist_ok=True)\n"
             "    os.symlink(f'net:[40265{pid}]', f'proc/{pid}/ns/net')\n"
             "    with open(f'proc/{pid}/net/dev', 'w') as f:\n"
             "        f.write('hand0: 84 1 0 0 0 0 0 0 84 1 0 0 0 0 0 0\\n')\n"
             "    with open(f'proc/{pid}/net/fib_trie', 'w') as f:\n"
             "        f.write(f'  |-- {address}\\n     /32 host LOCAL\\n')\n"
             "left_pid, right_pid = os.path.abspath('proc/4242'), os.path.abspath('proc/4243')")


@pytest.fixture(scope="module")
def network_by_hand(released, tmp_path_factory):
    source_path = LABS_DIR / "04-network-lab.ipynb"
    blank = read(released / "04-network-lab.ipynb")
    folder = tmp_path_factory.mktemp("forged-network-by-hand")
    left, right = wired_pair_on_the_host()
    try:
        outside = f"left_pid, right_pid = {left.pid}, {right.pid}"
        files = {"outside-pids": write(with_cells(blank, {"net-hand-answer": outside}), folder / "outside-pids.ipynb"),
                 "fake-proc": write(with_cells(blank, {"net-hand-answer": FAKE_PROC}), folder / "fake-proc.ipynb")}
        graded = grade(source_path, files, folder / "grades")
        # the same probes, in the test's own process with nothing to own: what the grader's
        # ownership of PIDs is there to stop (the student's kernel would see this, for feedback)
        unowned = {name: passed for name, (passed, _) in judge(left.pid, right.pid).items()}
        yield graded, unowned
    finally:
        for process in (left, right):
            process.kill()
            process.wait()


def test_a_pair_wired_outside_the_sandbox_earns_nothing(network_by_hand):
    graded, unowned = network_by_hand
    assert unowned == dict.fromkeys(PROBES, True), "the host's pair is a correct answer, judged without ownership"
    assert graded["outside-pids"]["error"] is None and graded["outside-pids"]["total"] == 0
    cell = next(c for c in graded["outside-pids"]["cells"] if c["grade_id"] == "net-hand-check")
    assert all("is running in this submission" in check["observed"] for check in cell["checks"]), cell["checks"]


def test_a_proc_made_of_plain_files_earns_nothing(network_by_hand):
    graded, _ = network_by_hand
    assert graded["fake-proc"]["error"] is None and graded["fake-proc"]["total"] == 0
    cell = next(c for c in graded["fake-proc"]["cells"] if c["grade_id"] == "net-hand-check")
    assert all(c["status"] == "scored" for c in graded["fake-proc"]["cells"])
    assert all("in this submission" in check["observed"] for check in cell["checks"]), cell["checks"]


# --- the kernel's log: a record in the kernel's own words, of a cgroup the grader saw ---------
# Each forged record below is made by the kernel itself (overlayfs quoting a mount option it
# could not resolve, in a mount namespace of the test's own): nothing is written to /dev/kmsg.

class LogOnly:
    """A sandbox as kernel_events sees it: the kernel's records, and no cgroup of its own
    (so a name from a state.json is read below the hierarchies' roots)."""

    cgroup_paths = {}

    def __init__(self, records):
        self.records = records

    def kernel_log(self):
        return self.records


def run_in(cgroup, command) -> int:
    import subprocess

    process = subprocess.Popen(command, preexec_fn=lambda: cgroup.add_process(os.getpid()),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process.wait(timeout=60)


def overlayfs_quoting(text: str) -> None:
    """The kernel logs "overlayfs: failed to resolve '/x <text>': -2": the audit's forgery."""
    import subprocess
    import sys

    escaped = text.replace(":", "\\:").replace(",", "\\,")
    code = ("import ctypes; libc = ctypes.CDLL(None); "
            f"libc.mount(b'overlay', b'/tmp', b'overlay', 0, {('lowerdir=/x ' + escaped).encode()!r})")
    subprocess.run(["unshare", "--mount", sys.executable, "-c", code], check=True)


def records_until(log, *wanted, timeout=10.0) -> list:
    end = time.monotonic() + timeout
    while True:
        records = log.since_open()
        if all(any(w in text for _, text, _prefix in records) for w in wanted) or time.monotonic() > end:
            return records
        time.sleep(0.05)


def old_rule_counts_an_oom_kill(text, name) -> bool:
    """evidence.py's rule before this fix: a substring anywhere in any record."""
    return "oom-kill:" in text and (f"oom_memcg={name}," in text or text.endswith(f"oom_memcg={name}"))


@pytest.fixture
def own_cgroup():
    from labkit.cgroups import Limits, host_hierarchy

    made = []

    def make(**limits):
        cgroup = host_hierarchy().create(f"forged-log-{os.getpid()}-{len(made)}", Limits(**limits))
        made.append(cgroup)
        return cgroup

    yield make
    for cgroup in made:
        cgroup.delete()


def test_only_the_kernels_own_oom_record_counts_not_one_quoted_by_overlayfs(own_cgroup):
    from labkit.grading.evidence import Sighting, is_oom_kill_in, kernel_events, names_in_log
    from labkit.grading.sandbox.kmsg import KernelLog

    cgroup = own_cgroup(memory=16 << 20)
    names = names_in_log(cgroup)
    memory = names.get("memory") or names["unified"]
    log = KernelLog()
    try:
        assert run_in(cgroup, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]) == -9
        overlayfs_quoting(f"oom-kill:constraint=CONSTRAINT_MEMCG oom_memcg={memory},")
        records = records_until(log, f"oom_memcg={memory},task_memcg=", "overlayfs: failed to resolve")
    finally:
        log.close()
    real = [text for _, text, _prefix in records if text.startswith("oom-kill:")]
    quoted = [text for _, text, _prefix in records if text.startswith("overlayfs:") and f"oom_memcg={memory}," in text]
    assert real and quoted, records[-20:]
    assert old_rule_counts_an_oom_kill(quoted[0], memory), "the forgery the audit found, under the old rule"
    assert is_oom_kill_in(real[0], memory) and not is_oom_kill_in(quoted[0], memory)
    seen = Sighting("x", "big", "labkit/x", 0.0, logged_as=names)
    assert kernel_events(LogOnly(records), seen)[:2] == (1, 0)
    assert kernel_events(LogOnly([(0.0, quoted[0])]), seen)[:2] == (0, 0)
    # a cgroup the watch never saw (gone between two looks): by the name its state.json gives
    assert kernel_events(LogOnly(records), Sighting("x", "big", memory, 0.0))[:2] == (1, 0)
    assert kernel_events(LogOnly(records), Sighting("x", "big", "labkit/x", 0.0))[:2] == (0, 0)
    assert kernel_events(LogOnly([(0.0, quoted[0], 3)]), Sighting("x", "big", memory, 0.0))[:2] == (0, 0)


def test_only_the_kernels_own_fork_refusal_counts(own_cgroup):
    from labkit.grading.evidence import Sighting, is_fork_refused_in, kernel_events, names_in_log
    from labkit.grading.sandbox.kmsg import KernelLog

    cgroup = own_cgroup(pids=4)
    names = names_in_log(cgroup)
    pids = names.get("pids") or names["unified"]
    log = KernelLog()
    try:
        run_in(cgroup, ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 0.2 & done 2>/dev/null; wait"])
        overlayfs_quoting(f"cgroup: fork rejected by pids controller in {pids}")
        records = records_until(log, f"fork rejected by pids controller in {pids}", "overlayfs: failed to resolve")
    finally:
        log.close()
    real = [text for _, text, _prefix in records if text.startswith("cgroup: fork rejected")]
    quoted = [text for _, text, _prefix in records if text.startswith("overlayfs:") and "fork rejected" in text]
    assert real and quoted, records[-20:]
    assert is_fork_refused_in(real[0], pids) and not is_fork_refused_in(quoted[0], pids)
    assert not is_fork_refused_in(real[0], pids + "-other") and not is_fork_refused_in(real[0], pids.rsplit("/", 1)[0])
    seen = Sighting("x", "bomb", "labkit/x", 0.0, logged_as=names)
    assert kernel_events(LogOnly(records), seen)[:2] == (0, 1)


def test_a_record_written_to_kmsg_by_a_user_is_not_the_kernels():
    from labkit.grading.evidence import Sighting, kernel_events

    text = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),oom_memcg=/a,task_memcg=/a,task=dd,pid=5,uid=0"
    seen = Sighting("x", "big", "labkit/x", 0.0, logged_as={"memory": "/a", "unified": "/a"})
    kernel = (0 << 3) | 6       # kern.info, as mm/oom_kill.c prints it
    user = (1 << 3) | 6         # what the kernel makes of any write to /dev/kmsg
    assert kernel_events(LogOnly([(0.0, text, kernel)]), seen)[:2] == (1, 0)
    assert kernel_events(LogOnly([(0.0, text, user)]), seen)[:2] == (0, 0)


FORGED_OOM = (
    "%container run --memory 48m --out small -- sh -c 'dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null'\n"
    "# big never runs: a state.json names it, and the kernel is made to log a line that reads as its OOM kill\n"
    "import json, os, subprocess, sys\n"
    "home = os.environ['LABKIT_HOME']\n"
    "os.makedirs(f'{home}/containers/fakebig', exist_ok=True)\n"
    "with open(f'{home}/containers/fakebig/state.json', 'w') as f:\n"
    "    json.dump({'name': 'big', 'id': 'fakebig', 'cgroup': 'labkit/fakebig'}, f)\n"
    "slot = (int(open('/proc/self/uid_map').read().split()[1]) - 1_000_000_000) >> 18\n"
    "opts = f'lowerdir=/x oom-kill\\\\:constraint=CONSTRAINT_MEMCG oom_memcg=/labkit-sandbox/{slot}/labkit/fakebig\\\\,'\n"
    "code = ('import ctypes; libc = ctypes.CDLL(None); '\n"
    "        f\"libc.mount(b'overlay', b'/tmp', b'overlay', 0, {opts.encode()!r})\")\n"
    "subprocess.run(['unshare', '--mount', sys.executable, '-c', code])\n"
    "big = 'big'\n")


def test_an_oom_kill_quoted_into_the_kernel_log_earns_nothing(released, tmp_path):
    """The audit's forgery (lab 2): `big` never runs; its state.json names a cgroup that never
    existed, and overlayfs is made to log "oom-kill:... oom_memcg=<that cgroup>,". It scores
    what the honest part alone scores: `small` finished (1 of 3)."""
    source_path = LABS_DIR / "02-cgroups-lab.ipynb"
    blank = read(released / "02-cgroups-lab.ipynb")
    files = {"forged-oom": write(with_cells(blank, {"cg-oom-answer": FORGED_OOM}), tmp_path / "forged-oom.ipynb")}
    graded = grade(source_path, files, tmp_path / "grades")
    cell = next(c for c in graded["forged-oom"]["cells"] if c["grade_id"] == "cg-oom-check")
    observed = {check["name"]: check["observed"] for check in cell["checks"]}
    assert cell["score"] == 1, cell["checks"]
    assert observed["big was OOM-killed"] == "container big never ran", observed


def before(notebook, grade_id_wanted: str, source: str):
    """A copy with a student's cell inserted just before the cell `grade_id_wanted`."""
    copy = nbformat.from_dict(json.loads(json.dumps(notebook)))
    at = next(i for i, c in enumerate(copy.cells) if grade_id(c) == grade_id_wanted)
    copy.cells.insert(at, nbformat.v4.new_code_cell(source))
    return copy


BORROWED = ("borrowed = %container run -d --name not-mine --hostname capstone --memory 48m -- sleep 600\n"
            "box_pid = borrowed.pid\n")
# ...and moved into a memory cgroup of the student's own, where the lab's runtime puts its container
BORROWED_AND_MOVED = BORROWED + (
    "v1 = os.path.isdir('/sys/fs/cgroup/memory')\n"
    "mine = os.path.join('/sys/fs/cgroup/memory' if v1 else '/sys/fs/cgroup', os.path.basename(WORK))\n"
    "os.makedirs(mine, exist_ok=True)\n"
    "with open(os.path.join(mine, 'memory.limit_in_bytes' if v1 else 'memory.max'), 'w') as f:\n"
    "    f.write(str(48 << 20))\n"
    "with open(os.path.join(mine, 'cgroup.procs'), 'w') as f:\n"
    "    f.write(str(box_pid))\n")


def test_a_labkit_container_is_not_the_capstones_runtime(released, tmp_path):
    """The audit's capstone forgery: the blank lab 5 (runtime.py left as the stub) with a
    labkit container named as `box_pid` had every point; it has none, and each check says
    whose process it judged. Moving its memory cgroup to one of the student's changes nothing."""
    source_path = LABS_DIR / "05-capstone-runtime-lab.ipynb"
    blank = read(released / "05-capstone-runtime-lab.ipynb")
    files = {name: write(before(blank, "cap-ns-check", cell), tmp_path / f"{name}.ipynb")
             for name, cell in (("borrowed", BORROWED), ("borrowed-and-moved", BORROWED_AND_MOVED))}
    graded = grade(source_path, files, tmp_path / "grades")
    for student in files:
        assert graded[student]["error"] is None
        checks = [check for cell in graded[student]["cells"] for check in cell["checks"]]
        assert graded[student]["total"] == 0, checks
        assert len(checks) == 6 and all("belongs to labkit container 'not-mine'" in c["observed"] for c in checks), checks
