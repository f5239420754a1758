"""The four graded labs, graded for real: `labkit grade run` on the source (full marks), the
released version (zero, no crash), one exercise wrong (exactly its points lost, its hint in
the feedback), another correct way (full marks), a way by hand (full marks); on the
namespaces lab also an edited check cell (graded with the original), a hanging cell (cut,
the rest graded), a flood of output (capped in the executed notebook), a file that is not a
notebook and students whose names make the same file name. Then nbgrader's own
generate_assignment + autograde give the same totals on every honest submission.

Each kernel start costs seconds: every lab is graded in one `labkit grade run` with all its
submissions, once per module, and the tests read the gradebook it wrote."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture
from leak_checks import own_temp_root, remove_temp_root, sandbox_cgroups, sandbox_leftovers
from labkit.cli import main
from labkit.grading.notebook import grade_id

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
LABS_DIR = REPO / "instructor" / "labs"     # the sources: solutions, executed outputs
RELEASED_DIR = REPO / "notebooks" / "labs"  # the committed released copies, what a student opens
LABS = ["01-namespaces-lab", "02-cgroups-lab", "03-images-lab", "04-network-lab", "05-capstone-runtime-lab"]


def capstone_runtime(*replacements) -> str:
    """The capstone's reference runtime with each (old, new) replaced (old must be there)."""
    notebook = nbformat.read(str(LABS_DIR / "05-capstone-runtime-lab.ipynb"), as_version=4)
    source = next(cell.source for cell in notebook.cells if grade_id(cell) == "cap-runtime-answer")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    return source

# Lab 4's pair by hand, varied: `right` makes the second process (a namespace of its own,
# or left's), `wire` makes the pair, `right_side` is whose namespace hand1 gets its address in
# ("": the notebook's own), `up` whether hand1 is brought up, `subnet` the addresses'
def hand_net(right="unshare()", wire="nsenter -t {left_pid} -n ip link add hand0 type veth peer name hand1 netns {right_pid}",
             right_side="nsenter -t {right_pid} -n ", up=True, subnet="192.168.44") -> str:
    return ("import subprocess\n"
            "def unshare(join=None):\n"
            "    command = ['unshare', '--net'] if join is None else ['nsenter', '-t', str(join), '-n']\n"
            "    process = subprocess.Popen([*command, 'sh', '-c', 'echo ready && exec sleep 600'], stdout=subprocess.PIPE)\n"
            "    process.stdout.readline()\n"
            "    return process\n"
            f"left_pid = unshare().pid\nright_pid = {right}.pid\n!{wire}\n"
            f"!nsenter -t {{left_pid}} -n sh -c 'ip addr add {subnet}.1/24 dev hand0 && ip link set hand0 up'\n"
            f"!{right_side}sh -c 'ip addr add {subnet}.2/24 dev hand1{' && ip link set hand1 up' if up else ''}'")


# One exercise wrong: (answer cell, wrong answer, its check cell, the points lost, words of its hint)
WRONG = {
    "01-namespaces-lab": ("ns-pid-answer", "box_host_pid = 1", "ns-pid-check", 2, "NSpid"),
    "02-cgroups-lab": ("cg-limits-answer", "capped = %container run -d --name cg-capped -- sleep 600",
                       "cg-limits-check", 3, "67108864"),
    "03-images-lab": ("img-whiteout-answer", 'whiteout = get_image("lab-notes").layer_dirs[0] / "bin" / "vi"',
                      "img-whiteout-check", 2, "character device 0:0"),
    "04-network-lab": ("net-port-answer", "site = %container run -d --name net-site --net bridge -p 18481:80 -- "
                       "sh -c 'mkdir -p /srv && echo hello from net-site > /srv/index.html && exec httpd -f -p 80 -h /srv'",
                       "net-port-check", 3, "published to 18480"),
    # a runtime that makes the cgroup and joins it but never writes the limit: everything else holds
    "05-capstone-runtime-lab": ("cap-runtime-answer",
                                capstone_runtime(("    write(os.path.join(cgroup, limit_file), memory)\n", "")),
                                "cap-cg-check", 2, "the limit file in that directory"),
}

# The same state made another way: {answer cell: new source}
OTHER_WAY = {
    "01-namespaces-lab": {
        "ns-box-answer": "box = %container run -d --hostname=lab --name=ns-box -- sh -c 'exec sleep 600'",
        "ns-pid-answer": "box_host_pid = min(pid for pid, command in box.top())",
        "ns-hostnet-answer": "hostnet = %container run -d --network=host --name ns-hostnet -- sleep 600",
    },
    "02-cgroups-lab": {
        "cg-limits-answer": "capped = %container run -d --name cg-capped -m 67108864 --cpus=.5 --pids-limit=32 -- sleep 600",
        "cg-oom-answer": "%container run --memory 41943040 --out small -- sh -c 'dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null'\n"
                         "%container run -m 40m --no-raise --out big -- sh -c 'dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null'",
        "cg-pids-answer": "%container run --pids-limit 8 --no-raise --out bomb -- sh -c 'for i in $(seq 200); do sleep 1 & done 2>/dev/null; wait'",
    },
    "03-images-lab": {
        "img-build-answer": "%%image build lab-notes\nFROM busybox\nRUN rm -f /bin/vi; mkdir -p /root; printf 'notes\\n' > /root/notes",
        "img-whiteout-answer": "import os, stat\ntop = get_image('lab-notes').layer_dirs[-1]\n"
                               "whiteout = next(os.path.join(d, f) for d, _, files in os.walk(top) for f in files\n"
                               "                if stat.S_ISCHR(os.lstat(os.path.join(d, f)).st_mode))",
        "img-todo-answer": "%%container exec img-editor\nprintf 'buy milk\\n' > /root/todo\nprintf '10.0.0.9\\tdb\\n' >> /etc/hosts",
        "img-commit-answer": "from labkit.runtime import get\ncommitted = get('img-editor').commit('lab-commit')",
    },
    "04-network-lab": {
        "net-bridge-answer": "web = %container run -d --name net-web --network=bridge -- sh -c 'exec sleep 600'\n"
                             "client = %container run -d --network bridge --name net-client -- sleep 600",
        "net-sidecar-answer": "sidecar = %container run -d --name net-sidecar --network=container:net-web -- sleep 600",
        # the pair made in the notebook's own namespace, then each end sent away; other addresses
        "net-hand-answer": hand_net(wire="ip link add hand0 type veth peer name hand1 && ip link set hand0 netns "
                                         "{left_pid} && ip link set hand1 netns {right_pid}").replace(
            "192.168.44.1/24", "192.168.44.77/25").replace("192.168.44.2/24", "192.168.44.100/25"),
    },
    # the runtime stays out of the cgroup: it moves only its child in, which waits on a pipe
    # until it is there; the hostname is set before the mounts
    "05-capstone-runtime-lab": {
        "cap-runtime-answer": capstone_runtime(
            ('    write(os.path.join(cgroup, "cgroup.procs"), str(os.getpid()))\n', ""),
            ("    pid = os.fork()\n    if pid:\n",
             "    ready, go = os.pipe()\n    pid = os.fork()\n    if pid:\n"
             '        write(os.path.join(cgroup, "cgroup.procs"), str(pid))\n        os.write(go, b"x")\n'),
            ("    mount(None, \"/\", None, MS_REC | MS_PRIVATE)\n",
             "    os.read(ready, 1)\n    socket.sethostname(hostname)\n    mount(None, \"/\", None, MS_REC | MS_PRIVATE)\n"),
            ("    socket.sethostname(hostname)\n    os.execvp", "    os.execvp")),
    },
}


# The same state made by hand, outside labkit's options: {answer cell: new source}
BY_HAND = {
    "02-cgroups-lab": {
        # the CPU quota written into the container's cgroup by hand (v1: cfs files, v2: cpu.max)
        "cg-limits-answer": (
            "capped = %container run -d --name cg-capped --memory 64m --pids-limit 32 -- sleep 600\n"
            "import os\n"
            "if hasattr(capped.cgroup, 'dirs'):\n"
            "    for name, value in (('cpu.cfs_period_us', '100000'), ('cpu.cfs_quota_us', '50000')):\n"
            "        with open(os.path.join(capped.cgroup.dirs['cpu'], name), 'w') as f:\n"
            "            f.write(value)\n"
            "else:\n"
            "    with open(os.path.join(capped.cgroup.path, 'cpu.max'), 'w') as f:\n"
            "        f.write('50000 100000')"),
    },
    "03-images-lab": {
        # the file written into the container's read-write layer from outside, then committed
        # and the name added to the container's own hosts file, bound over its /etc/hosts
        "img-todo-answer": "import os\nos.makedirs(editor.upper_dir / 'root', exist_ok=True)\n"
                           "(editor.upper_dir / 'root' / 'todo').write_text('buy milk\\n')\n"
                           "with open(editor.init_dir.parent / 'hosts', 'a') as hosts:\n"
                           "    hosts.write('10.0.0.9 db\\n')",
    },
}
HONEST = ("full", "empty", "wrong", "other", "byhand")

# Tasks done by hand and judged by PID and cgroup path, answered plausibly but wrongly:
# {lab: [(student, answer cell, wrong answer, its check cell, the points lost, words of a hint)]}
HAND_CG = "os.mkdir(CGROUP)\nwith open(os.path.join(CGROUP, LIMIT_FILE), 'w') as limit:\n    limit.write(str({limit}))\n" \
          "hog = subprocess.Popen(['sh', '-c', 'echo $$ > \"$0/cgroup.procs\" && exec \"$@\"', CGROUP, *PROGRAM])\n" \
          "hog_pid = hog.pid"
WRONG_BY_HAND = {
    # the mount namespace forgotten: the hostname is right, one kind is still the notebook's
    "01-namespaces-lab": [("hand-one-kind", "ns-hand-answer",
                           "import subprocess\nhand = subprocess.Popen(['unshare', '--uts', 'sh', '-c', "
                           "'hostname by-hand && exec sleep 600'])\nhand_pid = hand.pid",
                           "ns-hand-check", 1, "which kinds are still the notebook")],
    "02-cgroups-lab": [
        # "it keeps 32 MiB, so 32 MiB": the interpreter does not fit, the program is OOM-killed
        ("hand-too-tight", "cg-hand-answer", HAND_CG.format(limit="32 << 20"), "cg-hand-check", 3,
         "how much does the program need beyond its 32 MiB"),
        # a limit it lives under, but one that would hold 64 MiB as well: nothing derived, nothing scores
        ("hand-too-loose", "cg-hand-answer", HAND_CG.format(limit="256 << 20"), "cg-hand-check", 3,
         "would 64 MiB of data fit under it"),
    ],
    "04-network-lab": [
        # both processes in one namespace, the pair inside it: addresses and links are right,
        # but nothing joins two namespaces and every address is local (two, pair and ping lost)
        ("net-one-namespace", "net-hand-answer",
         hand_net(right="unshare(join=left_pid)", wire="nsenter -t {left_pid} -n ip link add hand0 type veth peer name hand1"),
         "net-hand-check", 4, "how many different ones are there"),
        # one end left in the notebook's own namespace: the right side has no end at all
        ("net-end-left-behind", "net-hand-answer",
         hand_net(wire="ip link add hand0 type veth peer name hand1 && ip link set hand0 netns {left_pid}", right_side=""),
         "net-hand-check", 5, "does each side have an end"),
        # the right end never brought up: no carrier on either side, no answer
        ("net-link-down", "net-hand-answer", hand_net(up=False), "net-hand-check", 3,
         "a veth end has a carrier only while its peer is up"),
        # addresses of another subnet: everything works, but not what was asked
        ("net-other-subnet", "net-hand-answer", hand_net(subnet="192.168.45"), "net-hand-check", 1,
         "which subnet was asked for"),
    ],
}


def with_cells(notebook, changes: dict):
    copy = nbformat.from_dict(json.loads(json.dumps(notebook)))
    for cell in copy.cells:
        if grade_id(cell) in changes:
            cell.source = changes[grade_id(cell)]
    return copy


def write(notebook, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return str(path)


@pytest.fixture(scope="module")
def lab_home(labkit_kernelspec):  # noqa: F811
    # Not below /tmp/pytest-of-root: every pytest session on the host (other people's too)
    # sets that back to 0700, and a --userns container's root must pass through the parents.
    home = Path(tempfile.mkdtemp(prefix="labkit-labs-home-", dir="/tmp"))
    saved = os.environ.get("LABKIT_HOME")
    os.environ["LABKIT_HOME"] = str(home)   # the graded kernels inherit it
    yield home
    if saved is None:
        os.environ.pop("LABKIT_HOME", None)
    else:
        os.environ["LABKIT_HOME"] = saved
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def released(lab_home):
    """The released copies as committed (tests/test_released_labs.py holds them to their sources):
    the blank submission is what a student who changed nothing hands in."""
    return RELEASED_DIR


# --- what a student opens: the committed released copy, run as it is -----------------------

def student_run(lab, home: Path):
    """The released copy executed top to bottom in the labkit kernel, as a student who has
    written nothing would (errors kept: each stub raises), in a folder of its own."""
    from nbclient import NotebookClient

    work = home / "work"
    work.mkdir(exist_ok=True)
    notebook = nbformat.read(str(RELEASED_DIR / f"{lab}.ipynb"), as_version=4)
    NotebookClient(notebook, kernel_name="labkit", timeout=300, startup_timeout=300, allow_errors=True,
                   resources={"metadata": {"path": str(work)}}).execute()
    return notebook


def containers_left(home: Path) -> list:
    done = subprocess.run([sys.executable, "-m", "labkit", "ps", "-a"], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1:]


@pytest.mark.parametrize("lab", LABS)
def test_a_student_opens_the_released_copy_and_every_check_says_not_yet(lab, labkit_kernelspec, monkeypatch):  # noqa: F811
    """The released copy works as a student gets it: every cell runs in the labkit kernel, only
    the answer stubs raise, and each check cell shows its table with every check not yet
    passed (✘, with its hint). Its kernel's containers are gone when it has run."""
    from labkit.grading.checks import MIME
    from labkit.grading.notebook import is_grade, is_solution

    # Not below /tmp/pytest-of-root (0700): a --userns container's root must pass through the parents.
    home = Path(tempfile.mkdtemp(prefix="labkit-student-home-", dir="/tmp"))
    monkeypatch.setenv("LABKIT_HOME", str(home))   # the kernel inherits it
    try:
        ran = student_run(lab, home)
        left = containers_left(home)
    finally:
        subprocess.run([sys.executable, "-m", "labkit", "gc"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    graded = [cell for cell in ran.cells if is_grade(cell) and cell.cell_type == "code"]
    assert graded, f"{lab}: no check cell"
    for cell in graded:
        reports = [output["data"][MIME] for output in cell.outputs if MIME in output.get("data", {})]
        assert len(reports) == 1, f"{lab}: {grade_id(cell)} showed no table: {cell.outputs}"
        html = next(output["data"]["text/html"] for output in cell.outputs if MIME in output.get("data", {}))
        assert reports[0]["score"] == 0 and not any(check["passed"] for check in reports[0]["checks"]), reports[0]
        assert "✘" in html and "✔" not in html, f"{lab}: {grade_id(cell)}'s table: {html}"
    # What raised is a stub the student has to replace, or a cell that uses what a stub left unset.
    raised = {grade_id(cell) or index: output["ename"] for index, cell in enumerate(ran.cells)
              if cell.cell_type == "code" for output in cell.outputs if output["output_type"] == "error"}
    stubs = {grade_id(cell) for cell in ran.cells if is_solution(cell) and cell.cell_type == "code"}
    assert set(raised) <= stubs, f"{lab}: cells other than the answers raised: {raised}"
    assert left == [], f"{lab}: containers left after the notebook ran: {left}"


def submissions_for(lab, source, released_dir, folder: Path) -> dict:
    name = f"{lab}.ipynb"
    answer, wrong, *_ = WRONG[lab]
    files = {
        "full": write(source, folder / "full" / name),
        "empty": str(shutil.copy(released_dir / name, folder / "empty.ipynb")),
        "wrong": write(with_cells(source, {answer: wrong}), folder / "wrong" / name),
        "other": write(with_cells(source, OTHER_WAY[lab]), folder / "other" / name),
    }
    if lab in BY_HAND:
        files["byhand"] = write(with_cells(source, BY_HAND[lab]), folder / "byhand" / name)
    for student, answer, wrong, *_ in WRONG_BY_HAND.get(lab, []):
        files[student] = write(with_cells(source, {answer: wrong}), folder / student / name)
    if lab == "01-namespaces-lab":
        tampered = with_cells(source, {"ns-box-answer": "pass", "ns-box-check": "3"})
        files["tampered"] = write(tampered, folder / "tampered" / name)
        hanging = with_cells(source, {})
        at = [grade_id(c) for c in hanging.cells].index("ns-pid-check") + 1
        hanging.cells.insert(at, nbformat.v4.new_code_cell("%%container\nsleep 3600"))
        files["hanging"] = write(hanging, folder / "hanging" / name)
        corrupt = folder / "corrupt.ipynb"
        corrupt.write_bytes(b"\x00\x01 this was never a notebook")
        files["corrupt"] = str(corrupt)
        flood = with_cells(source, {})
        flood.cells.insert(at, nbformat.v4.new_code_cell("print('x' * (24 << 20))"))
        files["flood"] = write(flood, folder / "flood" / name)
        files["x y"] = write(source, folder / "x y" / name)
        files["x_y"] = write(with_cells(source, {WRONG[lab][0]: WRONG[lab][1]}), folder / "x_y" / name)
        files["=cmd"] = write(source, folder / "=cmd" / name)
    return files


@pytest.fixture(scope="module")
def state_before(labkit_kernelspec, tmp_path_factory):  # noqa: F811
    """Where this module's grading sandboxes are made (a temp root of its own: the leak check
    looks there, not at other graders' sandboxes on this host), and the sandbox cgroups now."""
    tmp_path_factory.getbasetemp()   # pytest's own temp root stays where it is
    with own_temp_root() as root:
        yield {"root": root, "cgroups": sandbox_cgroups()}
    remove_temp_root(root)


@pytest.fixture(scope="module")
def gradebooks(released, tmp_path_factory, state_before):
    """{lab: (gradebook.json as data, {student: row of gradebook.csv}, out dir)}"""
    books = {}
    for lab in LABS:
        source_path = LABS_DIR / f"{lab}.ipynb"
        source = nbformat.read(str(source_path), as_version=4)
        folder = tmp_path_factory.mktemp(lab)
        files = submissions_for(lab, source, released, folder / "submitted")
        out = folder / "grades"
        assert main(["grade", "run", str(source_path), *files.values(), "--out", str(out), "--timeout", "20",
                     "--jobs", "2"]) == 0
        data = json.loads((out / "gradebook.json").read_text())
        rows = {row["student"]: row for row in csv.DictReader(open(out / "gradebook.csv"))}
        books[lab] = (data, rows, out)
    return books


def by_student(data) -> dict:
    return {s["student"]: s for s in data["submissions"]}


def unmeasured(student) -> float:
    """Points a busy host kept the grader from measuring ("busy host, run again"): no
    points, not a wrong answer; the grade run says to grade that student again."""
    lost = sum(c["max_points"] for cell in student["cells"] for c in cell["checks"] if c.get("retry"))
    assert bool(lost) == any(note.startswith("busy host:") for note in student["notes"]), student["notes"]
    return lost


def full_marks(student) -> bool:
    return student["total"] + unmeasured(student) == student["max_total"]


@pytest.mark.parametrize("lab", LABS)
def test_the_source_scores_full_marks_and_the_release_zero(gradebooks, lab):
    data, rows, _ = gradebooks[lab]
    full, empty = by_student(data)["full"], by_student(data)["empty"]
    assert full["max_total"] > 0 and full_marks(full), full
    assert empty["total"] == 0 and empty["error"] is None
    assert all(c["status"] == "scored" for c in full["cells"])
    assert float(rows["full"]["total"]) == full["total"] and rows["empty"]["total"] == "0"


@pytest.mark.parametrize("lab", LABS)
def test_one_exercise_wrong_loses_exactly_its_points_and_shows_its_hint(gradebooks, lab):
    data, _, out = gradebooks[lab]
    _, _, check_cell, points, hint_words = WRONG[lab]
    wrong = by_student(data)["wrong"]
    assert wrong["total"] + unmeasured(wrong) == wrong["max_total"] - points
    lost = [c for c in wrong["cells"] if c["score"] < c["max_score"] and not any(x.get("retry") for x in c["checks"])]
    assert [c["grade_id"] for c in lost] == [check_cell] and lost[0]["score"] == 0
    assert hint_words in (out / "feedback" / "wrong.html").read_text()
    assert hint_words not in (out / "feedback" / "full.html").read_text()


@pytest.mark.parametrize("lab", LABS)
def test_another_correct_way_scores_full_marks(gradebooks, lab):
    data, _, _ = gradebooks[lab]
    other = by_student(data)["other"]
    assert full_marks(other), [c for c in other["cells"] if c["score"] < c["max_score"]]


@pytest.mark.parametrize("lab", sorted(BY_HAND))
def test_a_way_by_hand_scores_full_marks(gradebooks, lab):
    data, _, _ = gradebooks[lab]
    byhand = by_student(data)["byhand"]
    assert full_marks(byhand), [c for c in byhand["cells"] if c["score"] < c["max_score"]]


@pytest.mark.parametrize("lab, student", [(lab, wrong[0]) for lab in sorted(WRONG_BY_HAND)
                                          for wrong in WRONG_BY_HAND[lab]])
def test_a_task_by_hand_done_wrong_loses_its_points_judged_by_pid_and_cgroup(gradebooks, lab, student):
    """The source's answer by hand scores full marks (test above), the released placeholder
    0; a plausible wrong answer loses exactly what the kernel state shows is wrong."""
    data, _, out = gradebooks[lab]
    _, _, _, check_cell, points, hint_words = next(w for w in WRONG_BY_HAND[lab] if w[0] == student)
    seen = by_student(data)[student]
    lost = [c for c in seen["cells"] if c["score"] < c["max_score"] and not any(x.get("retry") for x in c["checks"])]
    assert [c["grade_id"] for c in lost] == [check_cell], lost
    assert lost[0]["max_score"] - lost[0]["score"] == points, lost[0]["checks"]
    assert seen["total"] + unmeasured(seen) == seen["max_total"] - points
    assert hint_words in (out / "feedback" / f"{student}.html").read_text()
    empty = {c["grade_id"]: c for c in by_student(data)["empty"]["cells"]}
    assert empty[check_cell]["score"] == 0 and "is not set" in empty[check_cell]["checks"][0]["observed"]


def test_a_flood_of_output_is_capped_in_the_executed_notebook(gradebooks):
    data, _, out = gradebooks["01-namespaces-lab"]
    flood = by_student(data)["flood"]
    assert flood["total"] == flood["max_total"]
    executed = next((out / "executed").glob("flood*.ipynb"))
    assert executed.stat().st_size < 4 << 20
    assert "output was cut at 1 MiB" in executed.read_text()


def test_names_that_sanitise_alike_keep_their_own_files_and_no_name_is_a_formula(gradebooks):
    data, rows, out = gradebooks["01-namespaces-lab"]
    students = by_student(data)
    assert students["x y"]["total"] == students["x y"]["max_total"]
    assert students["x_y"]["total"] == students["x_y"]["max_total"] - WRONG["01-namespaces-lab"][3]
    feedback = sorted(p.name for p in (out / "feedback").iterdir())
    assert "x_y.html" in feedback and len([f for f in feedback if f.startswith("x_y")]) == 2
    assert WRONG["01-namespaces-lab"][4] in (out / "feedback" / "x_y.html").read_text()
    assert "'=cmd" in rows and "=cmd" not in rows


def test_an_edited_check_cell_is_graded_with_the_original(gradebooks):
    data, _, _ = gradebooks["01-namespaces-lab"]
    tampered = {c["grade_id"]: c for c in by_student(data)["tampered"]["cells"]}
    assert tampered["ns-box-check"]["score"] == 0, "its answer was removed; '3' in the check cell must not count"
    assert tampered["ns-box-check"]["checks"], "the original check ran (hidden checks included)"
    assert len(tampered["ns-box-check"]["checks"]) == 3
    assert tampered["ns-pid-check"]["score"] == 0   # it needs ns-box too
    assert tampered["ns-userns-check"]["score"] == 2


def test_a_hanging_cell_is_cut_and_the_rest_is_graded(gradebooks):
    data, _, _ = gradebooks["01-namespaces-lab"]
    hanging = by_student(data)["hanging"]
    assert len(hanging["cut"]) == 1 and hanging["cut"][0].startswith("cell ")
    assert hanging["total"] == hanging["max_total"]


def test_a_file_that_is_not_a_notebook_is_a_line_in_the_gradebook(gradebooks):
    data, rows, _ = gradebooks["01-namespaces-lab"]
    corrupt = by_student(data)["corrupt"]
    assert corrupt["total"] == 0 and corrupt["error"].startswith("not a notebook")
    assert rows["corrupt"]["error"].startswith("not a notebook")


def test_grading_left_nothing_behind_on_the_host(gradebooks, state_before):
    """Each submission ran in its own sandbox: its cgroups, mounts and directories are gone
    (other graders' sandboxes on this host are not looked at: leak_checks.sandbox_leftovers)."""
    assert sandbox_leftovers(state_before["root"], state_before["cgroups"]) == []


# --- the same notebooks through real nbgrader -----------------------------------------------

NBGRADER_CONFIG = """c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "labkit"
c.Execute.timeout = 60
"""


def nbgrader(course: Path, *arguments):
    # nbgrader runs `alembic` (its database migrations) from PATH: the venv's bin must be on it
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *arguments], cwd=course, capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.skipif(sys.version_info < (3, 11), reason="nbgrader 0.9.6 needs Python >= 3.11")
def test_nbgrader_autograde_gives_the_same_totals(gradebooks, tmp_path):
    pytest.importorskip("nbgrader", reason="nbgrader is in the test extra: pip install -e '.[test]'")
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(root=str(course)))
    for lab in LABS:
        shutil.copytree(LABS_DIR, course / "source" / lab, ignore=lambda d, names: [
            n for n in names if n != f"{lab}.ipynb"])
        nbgrader(course, "generate_assignment", lab, "--force")
        for student, notebook in honest_files(lab, gradebooks).items():
            target = course / "submitted" / student / lab
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(notebook, target / f"{lab}.ipynb")
        nbgrader(course, "autograde", lab, "--create", "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as book:
        for lab in LABS:
            ours = by_student(gradebooks[lab][0])
            for student in honest_files(lab, gradebooks):
                busy = busy_cells(ours[student]) | busy_cells_autograded(course / "autograded" / student / lab / f"{lab}.ipynb")
                if not busy:
                    theirs = book.find_submission(lab, student).score
                    assert theirs == ours[student]["total"], (lab, student, theirs, ours[student]["total"])
                for cell in ours[student]["cells"]:     # a cell a busy host kept from being measured: skipped
                    if cell["grade_id"] not in busy:
                        theirs = book.find_grade(cell["grade_id"], lab, lab, student).score
                        assert theirs == cell["score"], (lab, student, cell["grade_id"], theirs, cell["score"])


def busy_cells(student) -> set:
    return {cell["grade_id"] for cell in student["cells"] if any(c.get("retry") for c in cell["checks"])}


def busy_cells_autograded(path) -> set:
    from labkit.grading.checks import MIME

    notebook = nbformat.read(str(path), as_version=4)
    return {grade_id(cell) for cell in notebook.cells for output in cell.get("outputs", [])
            if any(c.get("retry") for c in output.get("data", {}).get(MIME, {}).get("checks", []))}


def honest_files(lab, gradebooks) -> dict:
    students = by_student(gradebooks[lab][0])
    return {student: students[student]["file"] for student in HONEST if student in students}
