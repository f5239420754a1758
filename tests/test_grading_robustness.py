"""A cheating or careless submission costs no one but its author (an audit's findings).

One submission could end the whole grading run, and with it every student's grades:
nbgrader metadata of the wrong type (a list for a grade_id), or a kernel message nbclient
cannot read. The hidden checks were in a file the student's code could read before they
were judged. And a submission's output, capped per cell, was not capped in all, nor was
its number of cells. Each test runs the real grader on a real kernel (the released lab 1
and the instructor's source, as a class would hand them in) and fails without its fix.
"""

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture

from labkit.grading.notebook import BEGIN_HIDDEN, END_HIDDEN, grade_id, is_locked, restore, source_text

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "instructor" / "labs" / "01-namespaces-lab.ipynb"
RELEASED = ROOT / "notebooks" / "labs" / "01-namespaces-lab.ipynb"

WRONG_NBGRADER = {
    "grade_id a list": {"nbgrader": {"grade_id": ["x"], "grade": False}},
    "grade_id a dict": {"nbgrader": {"grade_id": {"a": 1}}},
    "nbgrader a string": {"nbgrader": "oops"},
    "nbgrader a list": {"nbgrader": [1]},
    "metadata a list": [],
}

# What a student's cell can send on its own kernel's iopub channel: a stream without a name.
MALFORMED_MESSAGE = ("k = get_ipython().kernel\n"
                     "k.session.send(k.iopub_socket, 'stream', content={'text': 'x'}, parent=k.get_parent('shell'))")
# ... and other messages nbclient raises on, each with what it raised
FORGED = {
    "stream": ("'stream', content={'text': 'x'}", "KeyError: 'name'"),
    "status": ("'status', content={}", "KeyError: 'execution_state'"),
    "result": ("'execute_result', content={'data': {'text/plain': 'x'}, 'metadata': {}}",
               "KeyError: 'execution_count'"),
    "display": ("'display_data', content={'data': 'x', 'metadata': {}}", "NotebookValidationError"),
}


def read(path):
    return nbformat.read(str(path), as_version=4)


def with_cell(notebook, cell, at=2):
    notebook = copy.deepcopy(notebook)
    notebook.cells.insert(at, cell)
    return notebook


def hand_in(folder, name, notebook) -> str:
    path = folder / f"{name}.ipynb"
    # written as JSON, not nbformat.write: nbformat would refuse (or mend) what a student can write
    path.write_text(json.dumps(notebook))
    return str(path)


# --- nbgrader metadata of the wrong type (no root: restoring is pure) -------------------------

@pytest.mark.parametrize("shape", sorted(WRONG_NBGRADER))
def test_nbgrader_metadata_of_the_wrong_type_is_not_graded_and_the_locked_cells_come_back(shape):
    source, released = read(SOURCE), read(RELEASED)
    poison = new_code_cell("print('poison')")
    poison["metadata"] = copy.deepcopy(WRONG_NBGRADER[shape])
    tampered = with_cell(released, poison)
    locked = next(cell for cell in tampered.cells if is_locked(cell) and cell.cell_type == "code")
    locked["source"] = "print('an edited check cell')"

    graded = restore(source, tampered)        # raised TypeError / AttributeError: the whole run ended

    kept = next(cell for cell in graded.cells if source_text(cell) == "print('poison')")
    assert "nbgrader" not in kept["metadata"], "a cell with a malformed grade_id is not a graded cell"
    by_id = {grade_id(cell): cell for cell in graded.cells if grade_id(cell)}
    for cell in source.cells:
        if is_locked(cell):
            assert source_text(by_id[grade_id(cell)]) == source_text(cell)


def test_a_source_with_a_grade_id_that_is_not_a_string_is_refused_naming_the_cell():
    from labkit.grading.notebook import FormatError, validate

    source = read(SOURCE)
    index = next(i for i, cell in enumerate(source.cells) if grade_id(cell))
    source.cells[index]["metadata"]["nbgrader"]["grade_id"] = ["x"]
    with pytest.raises(FormatError, match=f"cell {index} has nbgrader metadata but no grade_id"):
        validate(source)


# --- the number of cells -----------------------------------------------------------------------

def test_a_notebook_of_too_many_cells_is_refused_before_nbformat_reads_it(tmp_path):
    from labkit.grading.grader import most_cells, read_notebook

    source = read(SOURCE)
    padded = json.loads(RELEASED.read_text())
    count = len(padded["cells"]) + 300_000
    padded["cells"] += [{"cell_type": "code", "metadata": {}, "source": "1", "outputs": [], "execution_count": None}
                        for _ in range(300_000)]
    path = hand_in(tmp_path, "padded", padded)
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"not graded: {count} cells, over the {most_cells(source)} a submission"):
        read_notebook(path, str(SOURCE), cells_most=most_cells(source))
    # nbformat's reading and validating of these cells took 12 s, and restoring them 8 more
    assert time.monotonic() - started < 5, "the cells were counted after the notebook was parsed"
    assert most_cells(source) >= 4 * len(source.cells), "room for the student's own cells"


# --- graded for real ---------------------------------------------------------------------------

@pytest.mark.root
def test_one_submission_breaking_the_grader_costs_only_its_own_grade(labkit_kernelspec, tmp_path):  # noqa: F811
    """`labkit grade run` with an honest submission beside ones whose metadata is malformed
    and one whose kernel sends a message nbclient cannot read: a gradebook for everyone."""
    released = read(RELEASED)
    poisoned = {}
    for shape in ("grade_id a list", "nbgrader a string"):
        cell = new_code_cell("print('poison')")
        cell["metadata"] = copy.deepcopy(WRONG_NBGRADER[shape])
        poisoned[shape] = with_cell(released, cell)
    paths = [hand_in(tmp_path, "honest", json.loads(SOURCE.read_text())),
             hand_in(tmp_path, "poison", poisoned["grade_id a list"]),
             hand_in(tmp_path, "oops", poisoned["nbgrader a string"]),
             hand_in(tmp_path, "badmsg", with_cell(released, new_code_cell(MALFORMED_MESSAGE)))]
    out = tmp_path / "grades"
    run = subprocess.run([sys.executable, "-m", "labkit", "grade", "run", str(SOURCE), *paths, "--out", str(out),
                          "--jobs", "2", "--timeout", "60"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    book = {row["student"]: row for row in json.loads((out / "gradebook.json").read_text())["submissions"]}
    assert sorted(book) == ["badmsg", "honest", "oops", "poison"]
    assert book["honest"]["total"] == book["honest"]["max_total"] == 12
    assert book["poison"]["error"] is None and book["oops"]["error"] is None
    assert any("could not be run: its kernel sent what the grader cannot read (KeyError: 'name')" in note
               for note in book["badmsg"]["notes"]), book["badmsg"]["notes"]
    assert {path.name for path in (out / "feedback").iterdir()} == {f"{n}.html" for n in book}


@pytest.mark.root
def test_an_error_the_grader_did_not_foresee_is_that_students_row(labkit_kernelspec, tmp_path, monkeypatch):  # noqa: F811
    """Whatever grade() raises for one submission (a bug of the grader's not found yet) is
    that submission's error row, and the next submission is graded."""
    import labkit.grading.grader as grader
    from labkit.grading.cli import Progress, graded

    source = read(SOURCE)
    honest = hand_in(tmp_path, "honest", json.loads(SOURCE.read_text()))
    unforeseen = hand_in(tmp_path, "unforeseen", json.loads(RELEASED.read_text()))
    real_grade = grader.grade

    def grade_with_a_bug(source, source_path, path, **settings):
        if path == unforeseen:
            {}[["a list"]] = 1        # the kind of error the audit found: TypeError, unhashable type
        return real_grade(source, source_path, path, **settings)

    monkeypatch.setattr(grader, "grade", grade_with_a_bug)
    settings = {"cell_timeout": 60.0, "kernel_name": None, "sandbox": "namespaces", "limits": None}
    rows = dict(graded(source, str(SOURCE), [unforeseen, honest], 1, settings, Progress(2, stream=sys.stderr)))
    assert rows[1].total == 12 and rows[1].error is None
    assert rows[0].total == 0 and re.fullmatch(
        r"not graded: the grader failed on this submission \(TypeError: .*unhashable type: 'list', "
        r"at test_grading_robustness.py line \d+\); the others were graded\. .*", rows[0].error), rows[0].error


def secret_lines(source) -> list:
    """The hidden checks' lines of a source, as the student must not read them."""
    lines, inside = [], False
    for cell in source.cells:
        for line in source_text(cell).split("\n"):
            if BEGIN_HIDDEN in line or END_HIDDEN in line:
                inside = BEGIN_HIDDEN in line
            elif inside:
                lines.append(line.strip())
    return lines


def snoop(secrets) -> str:
    """A student's cell that looks for the hidden checks in every file it can read where the
    grader puts things: the notebook it names, the working directory, LABKIT_HOME, /tmp. The
    secrets are hex in the cell, so that the cell's own copy in the notebook is no match; each
    is looked for as it is and as a JSON string (a notebook file escapes its quotes)."""
    wanted = [secret.encode().hex() for secret in secrets]
    return f"""
import json, os
wanted = [bytes.fromhex(h) for h in {wanted!r}]
places = [os.environ.get("LABKIT_NOTEBOOK", ""), os.getcwd(), os.environ.get("LABKIT_HOME", ""), "/tmp"]
found = set()
for place in filter(None, places):
    files = [place] if os.path.isfile(place) else [os.path.join(d, f) for d, _, fs in os.walk(place) for f in fs]
    for name in files:
        try:
            with open(name, "rb") as handle:
                data = handle.read(64 << 20)
        except OSError:
            continue
        found |= {{w for w in wanted if w in data or json.dumps(w.decode())[1:-1].encode() in data}}
print(f"hidden lines readable: {{len(found)}} of {{len(wanted)}}")
"""


@pytest.mark.root
def test_no_hidden_check_is_readable_by_the_students_code_and_each_is_still_judged(labkit_kernelspec, tmp_path):  # noqa: F811
    from labkit.grading.grader import grade

    source = read(SOURCE)
    secrets = secret_lines(source)
    assert len(secrets) >= 4, "lab 1 has hidden checks"
    student = json.loads(SOURCE.read_text())      # the right answers: every check passes
    student["cells"].insert(2, dict(new_code_cell(snoop(secrets))))
    graded = grade(source, str(SOURCE), hand_in(tmp_path, "snoop", student), cell_timeout=60)

    said = "".join(output.get("text", "") for output in graded.executed.cells[2].outputs)
    assert f"hidden lines readable: 0 of {len(secrets)}" in said, said     # all of them were: the restored notebook
    judged = {check["name"] for cell in graded.cells for check in cell.checks}
    assert "ns-box sees itself as PID 1" in judged and "it still shares the notebook's network namespace" in judged
    assert graded.total == graded.max_total == 12
    hidden_in_feedback = [source_text(cell) for cell in graded.executed.cells if BEGIN_HIDDEN in source_text(cell)]
    assert hidden_in_feedback, "the instructor's executed notebook keeps the grade cells whole"


@pytest.mark.root
@pytest.mark.parametrize("kind", sorted(FORGED))
def test_a_kernel_message_the_grader_cannot_read_ends_that_submission_with_a_note(labkit_kernelspec, tmp_path, kind):  # noqa: F811
    from labkit.grading.gradebook import write_submission
    from labkit.grading.grader import grade

    message, raised = FORGED[kind]
    source = nbformat.v4.new_notebook(cells=[new_code_cell("x = 1")])
    source.metadata["kernelspec"] = {"name": "labkit", "display_name": "labkit", "language": "python"}
    student = json.loads(json.dumps(source))
    student["cells"] += [dict(new_code_cell(f"k = get_ipython().kernel\nk.session.send(k.iopub_socket, {message}, "
                                            "parent=k.get_parent('shell'))")),
                         dict(new_code_cell("print('after')"))]
    graded = grade(source, str(tmp_path / "source.ipynb"), hand_in(tmp_path, "forger", student),
                   cell_timeout=60, sandbox="none")          # raised: the run ended, no gradebook
    assert any(note.startswith("cell 1 could not be run: its kernel sent what the grader cannot read (" + raised)
               and note.endswith("later cells did not run") for note in graded.notes), graded.notes
    assert graded.executed.cells[2].outputs == [], "the submission stopped there"
    write_submission(tmp_path / "grades", graded)
    assert (tmp_path / "grades" / "executed" / "forger.ipynb").exists()


# --- output in all -----------------------------------------------------------------------------

@pytest.mark.root
def test_a_submissions_output_is_capped_in_all_not_only_per_cell(labkit_kernelspec, tmp_path):  # noqa: F811
    from labkit.grading.grader import OUTPUT_CAP, SUBMISSION_OUTPUT_CAP, grade

    source = nbformat.v4.new_notebook(cells=[new_code_cell("x = 1")])
    source.metadata["kernelspec"] = {"name": "labkit", "display_name": "labkit", "language": "python"}
    student = json.loads(json.dumps(source))
    cells = 2 * SUBMISSION_OUTPUT_CAP // OUTPUT_CAP            # each just under the cell's cap
    student["cells"] += [dict(new_code_cell(f"print('A' * ({OUTPUT_CAP} - 100))")) for _ in range(cells)]
    graded = grade(source, str(tmp_path / "source.ipynb"), hand_in(tmp_path, "loud", student),
                   cell_timeout=60, sandbox="none")

    kept = len(json.dumps([cell.get("outputs", []) for cell in graded.executed.cells]))
    assert kept < SUBMISSION_OUTPUT_CAP + (1 << 20), f"{kept >> 20} MiB of output kept"   # was 2 times the cap
    assert any(note.startswith(f"the output of this submission reached {SUBMISSION_OUTPUT_CAP >> 20} MiB in all")
               for note in graded.notes), graded.notes
    last = "".join(output.get("text", "") for output in graded.executed.cells[-1].outputs)
    assert "the submission's output reached" in last and "more characters were not kept" in last
