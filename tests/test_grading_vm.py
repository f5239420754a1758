"""`labkit grade run --sandbox vm`: each submission in a throw-away VM, judged in the guest
outside the namespaces sandbox the student's kernel runs in, the verdict read by the host
as data. Boots real VMs (marked vm: step 1 of `.ci/v2-lane`; ~2-5 min a submission under
emulation), so it keeps to two submissions: an honest one scores full marks, a forgery
(rebinding `check` and `sum`, and writing a verdict wherever it can find the exchange
directory) scores 0. The pure part (a forged verdict taken as data) needs no VM."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kernel_fixtures import labkit_kernelspec  # noqa: F401 — a fixture
from test_vm import leftovers_of, vm_test

SETUP = "from labkit.grading import Answer, check, expect, probes, progress, tidy"
ANSWER = ("### BEGIN SOLUTION\n"
          "capped = %container run -d --name vm-capped --memory 64m --pids-limit 32 -- sleep 600\n"
          "### END SOLUTION")
CHECK = ('check("limits",\n'
         '    expect("memory limit 64 MiB", 1, probes.memory_limit("vm-capped", "64m"), hint="--memory"),\n'
         '    expect("at most 32 processes", 1, probes.pids_limit("vm-capped", 32), hint="--pids-limit"),\n'
         ')')
FORGERY = """
import builtins, glob, pathlib
check = lambda cell, *e: sum(x.points for x in e)
builtins.sum = lambda *a, **k: 1000
verdict = '{"cells": [{"grade_id": "vm-check", "score": 2, "status": "scored"}]}'
seen = glob.glob("/tmp/labkit-vm-*") + [line.split()[4] for line in open("/proc/self/mountinfo")
                                             if " 9p " in line]
for where in seen:
    try:
        pathlib.Path(where, "verdict.json").write_text(verdict)
        print("wrote a verdict in", where)
    except OSError as error:
        print("could not write in", where, error)
print("exchange directories seen:", seen)
"""


def nbgrader(cell, grade_id, solution=False, grade=False, locked=False, points=None):
    cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": solution, "grade": grade, "locked": locked,
                                 "schema_version": 3, **({"points": points} if points is not None else {})}
    return cell


def source_notebook():
    notebook = new_notebook(cells=[
        new_markdown_cell("# A lab graded in a VM"),
        nbgrader(new_code_cell(SETUP), "vm-setup", locked=True),
        nbgrader(new_code_cell(ANSWER), "vm-answer", solution=True),
        nbgrader(new_code_cell(CHECK), "vm-check", grade=True, locked=True, points=2),
        nbgrader(new_code_cell('tidy(containers=["vm-capped"])'), "vm-tidy", locked=True),
        nbgrader(new_code_cell("progress()"), "vm-progress", locked=True),
    ])
    notebook.metadata["kernelspec"] = {"name": "labkit", "display_name": "Python 3 (labkit)", "language": "python"}
    return notebook


def progress_shown(executed_path) -> str:
    executed = nbformat.read(str(executed_path), as_version=4)
    (cell,) = [c for c in executed.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "vm-progress"]
    return "".join(output["data"]["text/plain"] for output in cell.outputs if output.output_type == "execute_result")


def write_submissions(source_notebook_path, tmp_path, answer_of_the_second) -> list:
    """[the honest submission, the released one with its answer cell replaced]."""
    from labkit.cli import main

    released = tmp_path / "released"
    assert main(["grade", "release", str(source_notebook_path), "--out", str(released)]) == 0
    folder = tmp_path / "submissions"
    folder.mkdir()
    nbformat.write(nbformat.read(str(source_notebook_path), as_version=4), str(folder / "honest.ipynb"))
    second = nbformat.read(str(released / "lab.ipynb"), as_version=4)
    for cell in second.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "vm-answer":
            cell.source = answer_of_the_second
    nbformat.write(second, str(folder / "second.ipynb"))
    return [str(folder / "honest.ipynb"), str(folder / "second.ipynb")]


# --- progress() in the executed notebook (on the host, no VM) ---------------------------------

@pytest.mark.root
def test_the_executed_notebook_shows_the_grader_s_progress_not_the_kernel_s(tmp_path, labkit_kernelspec):  # noqa: F811
    """The kernel never runs a grade cell in a grade run (the grader judges it), so its own
    progress() would say nothing was done; the grader shows what it judged."""
    from labkit.cli import main

    source = tmp_path / "lab.ipynb"
    nbformat.write(source_notebook(), str(source))
    out = tmp_path / "out"
    assert main(["grade", "run", str(source), *write_submissions(source, tmp_path, "pass"), "--out", str(out)]) == 0
    assert progress_shown(out / "executed" / "honest.ipynb") == \
        "2 of 2 checks passed, 2 of 2 points; 1 of 1 exercise(s) run"
    assert progress_shown(out / "executed" / "second.ipynb") == \
        "0 of 2 checks passed, 0 of 2 points; 1 of 1 exercise(s) run"


# --- the verdict is data (no VM) ----------------------------------------------------------

def test_a_verdict_is_taken_as_data_within_the_source_s_cells_and_points():
    from labkit.grading.grader import Submission
    from labkit.grading.scoring import CellScore
    from labkit.grading.vm import take_verdict

    submission = Submission("s", "s.ipynb", cells=[CellScore("a", 0.0, 2.0, "not run"),
                                                    CellScore("b", 0.0, 3.0, "not run")], max_total=5.0)
    take_verdict(submission, {"cells": [{"grade_id": "a", "score": 1000, "status": "scored"},
                                        {"grade_id": "b", "score": float("nan")},
                                        {"grade_id": "bonus", "score": 50}],
                              "notes": ["x" * 5000, 7], "error": None})
    assert [(c.grade_id, c.score) for c in submission.cells] == [("a", 2.0), ("b", 0.0)]
    assert submission.total == 2.0 and len(submission.notes) == 1 and len(submission.notes[0]) == 2000


# --- in a VM ---------------------------------------------------------------------------------

@vm_test
def test_grading_in_a_vm_scores_honest_full_and_a_forgery_zero(tmp_path, labkit_kernelspec):  # noqa: F811
    from labkit.cli import main
    from labkit.vm.provisioner import hidden_in_the_guest

    hidden = hidden_in_the_guest(sys.executable)
    if hidden:   # e.g. a fresh clone in a mktemp dir: the guest's own /tmp hides its venv
        pytest.skip(hidden)

    source = tmp_path / "lab.ipynb"
    nbformat.write(source_notebook(), str(source))
    honest, forged = write_submissions(source, tmp_path, FORGERY)

    out = tmp_path / "out"
    assert main(["grade", "run", str(source), honest, forged, "--out", str(out), "--sandbox", "vm",
                 "--timeout", "900", "--budget", "2400"]) == 0

    book = {row["student"]: row for row in json.loads((out / "gradebook.json").read_text())["submissions"]}
    assert (book["honest"]["total"], book["honest"]["error"]) == (2.0, None), book["honest"]
    assert book["second"]["total"] == 0.0 and book["second"]["error"] is None, book["second"]
    # The forgery ran, and found no way to the exchange directory from inside its sandbox.
    executed = nbformat.read(str(out / "executed" / "second.ipynb"), as_version=4)
    said = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "exchange directories seen: []" in said and "wrote a verdict" not in said, said
    assert progress_shown(out / "executed" / "honest.ipynb").startswith("2 of 2 checks passed")
    # (the exchange directory is one of this process's VM run directories)
    assert leftovers_of(os.getpid()) == ([], []), "a VM run left a QEMU process or its temp dir behind"

