"""labkit.grading's pure logic: scoring expectations, the check cell's display, nbgrader's
format (release, restore), scoring by nbgrader's rules, the gradebook. No root needed."""

import csv
import json
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit.grading import MIME, Observation, ProbeFailed, check, expect, progress
from labkit.grading.checks import run_checks
from labkit.grading.gradebook import write_all
from labkit.grading.grader import Submission, read_notebook, student_name
from labkit.grading.notebook import (PYTHON_STUB, RECIPE_STUB, SHELL_STUB, FormatError, checksum, grade_id,
                                     release, restore, source_text)
from labkit.grading.scoring import CellScore, score_cell
from labkit.grading.session import forget


def test_score_is_the_sum_of_points_of_passing_checks():
    report = run_checks("ex", [expect("a", 2, lambda: True), expect("b", 1, lambda: False),
                               expect("c", 0.5, lambda: Observation(True, "seen"))])
    assert report.score == 2.5 and report.max_score == 3.5 and report.passed == 2
    assert repr(report) == "2.5"


def test_a_probe_that_raises_fails_its_check_without_raising():
    def broken():
        raise RuntimeError("the cgroup vanished")

    report = run_checks("ex", [expect("a", 1, broken), expect("b", 1, lambda: True)])
    assert [o.passed for o in report.outcomes] == [False, True]
    assert "RuntimeError: the cgroup vanished" in report.outcomes[0].observed


def test_an_unset_answer_variable_says_to_run_the_answer_cell():
    report = run_checks("ex", [expect("a", 1, lambda: undefined_name)])  # noqa: F821
    assert report.outcomes[0].observed == "undefined_name is not defined: run your answer cell above first"
    probe_failed = run_checks("ex", [expect("b", 1, lambda: (_ for _ in ()).throw(ProbeFailed("no box")))])
    assert probe_failed.outcomes[0].observed == "no box"


def test_a_check_writes_nothing_to_stderr_or_stdout(capfd):
    import warnings

    def noisy():
        print("chatter", file=sys.stderr)
        print("more chatter")
        warnings.warn("deprecated thing")
        return True

    report = check("noisy", expect("a", 1, noisy))
    captured = capfd.readouterr()
    assert report.score == 1 and captured.err == "" and captured.out == ""


def test_the_display_carries_score_table_and_every_check():
    report = run_checks("ex", [expect("fine", 1, lambda: True, hint="never shown"),
                               expect("broken", 2, lambda: Observation(False, "limit 32 MiB"), hint="look at --memory")])
    bundle = report._repr_mimebundle_()
    assert bundle["text/plain"] == "1"
    assert "look at --memory" in bundle["text/html"] and "never shown" not in bundle["text/html"]
    checks = bundle[MIME]["checks"]
    assert [c["id"] for c in checks] == ["ex.fine", "ex.broken"]
    assert checks[1] == {"id": "ex.broken", "name": "broken", "passed": False, "points": 0.0, "max_points": 2.0,
                         "hint": "look at --memory", "observed": "limit 32 MiB", "retry": False}
    assert checks[0]["hint"] == ""   # a hint is for failures only
    json.dumps(bundle[MIME])


def test_the_table_and_the_text_print_the_value_each_check_judged():
    report = run_checks("ex", [expect("limit", 1, lambda: Observation(True, "memory limit 48.0 MiB")),
                               expect("pids", 1, lambda: Observation(False, "pids limit <none>"), hint="read pids.max"),
                               expect("bare", 1, lambda: True)])
    table = report._repr_html_()
    assert "<th style='text-align:left'>observed</th>" in table
    assert "<td class='labkit-observed' style='text-align:left'>memory limit 48.0 MiB</td>" in table
    assert "pids limit &lt;none&gt;" in table and "<none>" not in table     # escaped, not markup
    text = str(report)
    assert "✔ limit (1/1): memory limit 48.0 MiB" in text
    assert "✘ pids (0/1): pids limit <none>\n    hint: read pids.max" in text
    assert "✔ bare (1/1): nothing observed" in text
    assert repr(report) == "2"      # text/plain stays the score nbgrader reads


def test_a_check_a_busy_host_kept_from_measuring_says_run_again_and_earns_nothing():
    busy = Observation(False, "busy host, run again: achieved 0.12 cores", retry=True)
    report = run_checks("cpu", [expect("share", 1, lambda: busy, hint="quota / period"),
                                expect("wrong", 1, lambda: Observation(False, "no quota"), hint="quota / period"),
                                expect("lucky", 1, lambda: Observation(True, "achieved 0.25 cores", retry=True))])
    assert report.score == 1 and [o.name for o in report.unmeasured] == ["share"]   # a pass is never "retry"
    share, wrong, _ = report.to_dict()["checks"]
    assert share["retry"] and share["points"] == 0 and share["hint"].startswith("Busy host, run again")
    assert not wrong["retry"] and wrong["hint"] == "quota / period"
    assert "1 not measured (busy host, run again)" in report._repr_html_() and "⟳" in report._repr_html_()
    assert "⟳ share (0/1): busy host, run again: achieved 0.12 cores" in str(report)


def test_check_ids_stay_unique_when_names_repeat():
    report = run_checks("ex", [expect("same", 1, lambda: True), expect("same", 1, lambda: True)])
    assert len({o.id for o in report.outcomes}) == 2


def test_bad_expectations_are_refused_when_the_lab_is_written():
    with pytest.raises(TypeError, match="must be callable"):
        expect("a", 1, True)
    with pytest.raises(ValueError, match="negative"):
        expect("a", -1, lambda: True)


def test_progress_counts_the_latest_run_of_each_check_cell():
    forget()
    check("one", expect("a", 1, lambda: False))
    check("one", expect("a", 1, lambda: True))      # the exercise, done again
    check("two", expect("b", 2, lambda: False), expect("c", 1, lambda: True))
    assert repr(progress()) == "2 of 3 checks passed, 2 of 4 points in 2 exercise(s) run"
    forget()


# --- nbgrader's format -----------------------------------------------------------------

def nbgrader(cell, grade_id, solution=False, grade=False, locked=False, points=None):
    cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": solution, "grade": grade, "locked": locked,
                                 "schema_version": 3, **({} if points is None else {"points": points})}
    return cell


def source_notebook():
    return new_notebook(cells=[
        new_markdown_cell("# Lab"),
        nbgrader(new_code_cell("from labkit.grading import check"), "setup", locked=True),
        nbgrader(new_code_cell("x = 1\n### BEGIN SOLUTION\nbox = start('lab')\n### END SOLUTION"), "py-answer", solution=True),
        nbgrader(new_code_cell("%%container exec box\n### BEGIN SOLUTION\necho hi > /root/todo\n### END SOLUTION"),
                 "sh-answer", solution=True),
        nbgrader(new_code_cell("%%image build notes\nFROM busybox\n    ### BEGIN SOLUTION\nRUN touch /a\n    ### END SOLUTION"),
                 "recipe-answer", solution=True),
        nbgrader(new_code_cell("check('a',\n    visible,\n    ### BEGIN HIDDEN TESTS\n    hidden,\n    ### END HIDDEN TESTS\n)"),
                 "a-check", grade=True, locked=True, points=3),
        nbgrader(new_code_cell("progress()"), "progress", locked=True),
    ])


def test_release_stubs_solutions_by_the_cells_language():
    student = release(source_notebook())
    sources = {grade_id(c): source_text(c) for c in student.cells if grade_id(c)}
    assert sources["py-answer"] == "x = 1\n" + PYTHON_STUB
    assert sources["sh-answer"] == "%%container exec box\n" + SHELL_STUB
    assert sources["recipe-answer"] == "%%image build notes\nFROM busybox\n    " + RECIPE_STUB


def test_release_removes_hidden_checks_and_outputs_and_locks_cells():
    source = source_notebook()
    source.cells[5].outputs = [{"output_type": "stream", "name": "stdout", "text": "3"}]
    source.cells[5].execution_count = 4
    student = release(source)
    check_cell = student.cells[5]
    assert source_text(check_cell) == "check('a',\n    visible,\n)"
    assert check_cell.outputs == [] and check_cell.execution_count is None
    assert check_cell.metadata["editable"] is False and check_cell.metadata["deletable"] is False
    assert check_cell.metadata["nbgrader"]["checksum"] == checksum(check_cell)
    assert "hidden" in source_text(source.cells[5]), "the source is left as it was"


@pytest.mark.parametrize("text, message", [
    ("### BEGIN SOLUTION\nx", "never closed"),
    ("### END SOLUTION", "without BEGIN SOLUTION"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
])
def test_broken_markers_name_the_cell(text, message):
    notebook = new_notebook(cells=[nbgrader(new_code_cell(text), "bad", solution=True)])
    with pytest.raises(FormatError, match=message):
        release(notebook)


def test_a_grade_id_used_twice_is_refused():
    notebook = new_notebook(cells=[nbgrader(new_code_cell("1"), "same", locked=True),
                                   nbgrader(new_code_cell("2"), "same", locked=True)])
    with pytest.raises(FormatError, match="'same' is used twice"):
        release(notebook)


def test_restore_undoes_an_edited_check_cell_and_keeps_the_answers():
    source = source_notebook()
    submission = release(source)
    submission.cells[2].source = "box = start('lab')"                    # the student's answer
    submission.cells[5].source = "3"                                    # a check cell, "fixed"
    submission.cells.append(new_code_cell("scratch = 42"))             # the student's own cell
    graded = restore(source, submission)
    texts = [source_text(c) for c in graded.cells]
    assert source_text(source.cells[5]) in texts and "3" not in texts, "the original check, hidden part too"
    assert "box = start('lab')" in texts and "scratch = 42" in texts


def test_restore_puts_back_a_deleted_check_cell_and_drops_a_copy():
    source = source_notebook()
    submission = release(source)
    check_cell = submission.cells.pop(5)
    submission.cells.insert(1, check_cell)           # moved up
    submission.cells.insert(2, nbformat.from_dict(json.loads(json.dumps(check_cell))))   # and copied
    fake = nbgrader(new_code_cell("10"), "bonus", grade=True, locked=True, points=10)   # made up
    submission.cells.append(fake)
    graded = restore(source, submission)
    ids = [grade_id(c) for c in graded.cells]
    assert ids.count("a-check") == 1
    assert "bonus" not in ids, "a grade cell the source does not have is not graded"
    deleted = release(source)
    del deleted.cells[5]
    ids = [grade_id(c) for c in restore(source, deleted).cells]
    assert ids.index("a-check") == ids.index("recipe-answer") + 1


# --- scoring (nbgrader's rules) -------------------------------------------------------

def graded_cell(outputs, points=3):
    cell = nbgrader(new_code_cell("check()"), "c", grade=True, locked=True, points=points)
    cell.outputs = outputs
    return cell


def result(text):
    return {"output_type": "execute_result", "data": {"text/plain": text}, "metadata": {}, "execution_count": 1}


@pytest.mark.parametrize("outputs, score, status", [
    ([result("2")], 2.0, "scored"),
    ([result("7")], 3.0, "scored"),                    # capped at the cell's points
    ([result("'done'")], 3.0, "scored"),               # not a number: full credit, as nbgrader
    ([], 3.0, "scored"),                               # no output: full credit, as nbgrader
    ([{"output_type": "stream", "name": "stdout", "text": "x"}, result("1")], 1.0, "scored"),
    ([{"output_type": "stream", "name": "stderr", "text": "warning"}, result("3")], 0.0, "stderr"),
    ([{"output_type": "error", "ename": "E", "evalue": "", "traceback": []}], 0.0, "error"),
])
def test_grade_cells_score_by_nbgraders_rules(outputs, score, status):
    scored = score_cell(graded_cell(outputs))
    assert (scored.score, scored.status) == (score, status)


def test_a_grade_cell_that_never_ran_scores_zero():
    assert score_cell(graded_cell([]), ran=False).score == 0.0


# --- submissions and the gradebook ---------------------------------------------------------

def test_student_names_come_from_the_file_or_its_folder():
    assert student_name("subs/alice.ipynb", "labs/lab.ipynb") == "alice"
    assert student_name("subs/bob/lab.ipynb", "labs/lab.ipynb") == "bob"


@pytest.mark.parametrize("content, words", [
    (b"garbage", "not a notebook"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (b'{"just": "json"}', "not a notebook"),
])
def test_what_is_not_a_notebook_is_said_plainly(tmp_path, content, words):
    path = tmp_path / "x.ipynb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=words):
        read_notebook(path)


def test_gradebook_has_a_column_per_grade_cell_and_feedback_per_student(tmp_path):
    checks = [{"id": "a.x", "name": "limit", "passed": False, "points": 0, "max_points": 2, "hint": "look at it",
               "observed": "none"}]
    alice = Submission("alice", "alice.ipynb", [CellScore("a", 1, 3, "scored", checks), CellScore("b", 2, 2, "scored")], 5)
    carol = Submission("carol", "carol.ipynb", [CellScore("a", 0, 3, "not graded"), CellScore("b", 0, 2, "not graded")],
                       5, error="not a notebook: garbage")
    write_all(tmp_path, "lab.ipynb", [("a", 3), ("b", 2)], [alice, carol])
    rows = list(csv.DictReader(open(tmp_path / "gradebook.csv")))
    assert [(r["student"], r["a"], r["b"], r["total"], r["error"]) for r in rows] == [
        ("alice", "1", "2", "3", ""), ("carol", "0", "0", "0", "not a notebook: garbage")]
    data = json.loads((tmp_path / "gradebook.json").read_text())
    assert data["submissions"][0]["cells"][0]["checks"][0]["observed"] == "none"
    feedback = (tmp_path / "feedback" / "alice.html").read_text()
    assert "look at it" in feedback and "<td class='labkit-observed' style='text-align:left'>none</td>" in feedback
    assert "not a notebook" in (tmp_path / "feedback" / "carol.html").read_text()


def test_two_files_of_one_student_name_keep_two_rows():
    from labkit.grading.cli import _unique

    assert _unique("alice", set()) == "alice"
    assert _unique("alice", {"alice", "alice-2"}) == "alice-3"


def test_grade_refuses_bad_options_naming_them(tmp_path, capsys):
    from labkit.cli import main

    source = tmp_path / "lab.ipynb"
    nbformat.write(source_notebook(), str(source))
    assert main(["grade", "run", str(source), str(source), "--out", str(tmp_path / "g"), "--timeout", "0"]) == 125
    assert "--timeout 0" in capsys.readouterr().err
    assert main(["grade", "run", str(source), str(source), "--out", str(tmp_path / "g"), "--jobs", "0"]) == 125
    assert "--jobs 0" in capsys.readouterr().err
    for budget in ("0", "nan", "inf"):
        assert main(["grade", "run", str(source), str(source), "--out", str(tmp_path / "g"), "--budget", budget]) == 125
        assert f"--budget {budget}" in capsys.readouterr().err
    assert main(["grade", "run", str(source), str(source), "--out", str(tmp_path / "g"), "--jobs", "2",
                 "--sandbox", "none"]) == 125
    assert "share the host's container names" in capsys.readouterr().err
    assert main(["grade", "run", str(source), str(source), "--out", str(tmp_path / "g"), "--sandbox", "box"]) == 125
    assert "--sandbox box" in capsys.readouterr().err
    plain = tmp_path / "plain.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), str(plain))
    assert main(["grade", "release", str(plain), "--out", str(tmp_path / "r")]) == 125
    assert "has no nbgrader cells" in capsys.readouterr().err
    assert main(["grade", "release", str(source), "--out", str(tmp_path)]) == 125
    assert "would overwrite the solutions" in capsys.readouterr().err
    assert main(["grade", "release", str(source), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "lab.ipynb").exists()


# --- the grader reads a grade cell as data ----------------------------------------------------

from labkit.grading.cell_source import AnswerRef, parse_answer, parse_check  # noqa: E402


def test_a_check_cell_is_read_as_data_hidden_tests_included():
    call = parse_check('check("limits",\n'
                       '    expect("memory", 1, probes.memory_limit("cg-capped", "64m"), hint="look"),\n'
                       '    ### BEGIN HIDDEN TESTS\n'
                       '    expect("pid", 2, probes.host_pid_of_pid1(Answer("box_pid"), "ns-box"), id="p"),\n'
                       '    ### END HIDDEN TESTS\n'
                       ')', probe_names={"memory_limit", "host_pid_of_pid1"})
    assert call.title == "limits" and [e.points for e in call.expectations] == [1.0, 2.0]
    assert call.expectations[0].probe.args == ("cg-capped", "64m") and call.expectations[0].hint == "look"
    assert call.expectations[1].probe.args == (AnswerRef("box_pid"), "ns-box") and call.expectations[1].id == "p"


@pytest.mark.parametrize("source, words", [
    ("3", "one check"),
    ("check('a', expect('x', 1, probes.hostname(box, 'lab')))", "must be literals"),
    ("check('a', expect('x', 1, probes.hostname('box', 'lab'.upper())))", "must be literals"),
    ("check('a', expect('x', 1, lambda: True))", "probes.NAME"),
    ("check('a', expect('x', 1, probes.nothing('box')))", "not a probe the grader knows"),
    ("check('a', expect('x', -1, probes.hostname('box', 'lab')))", "zero or more"),
    ("check('a', expect('x', 1, probes.hostname(Answer('a.b'), 'lab')))", "not a variable name"),
    ("import os\ncheck('a')", "nothing else"),
    ("check(title, expect('x', 1, probes.hostname('b', 'l')))", "string literal"),
])
def test_anything_but_literals_in_a_check_cell_is_refused_naming_the_line(source, words):
    with pytest.raises(FormatError, match=words):
        parse_check(source, probe_names={"hostname"})


def test_every_lab_check_cell_is_one_the_grader_can_judge():
    from pathlib import Path

    from labkit.grading.grader import parsed_checks

    for path in sorted((Path(__file__).resolve().parent.parent / "instructor" / "labs").glob("*.ipynb")):
        checks = parsed_checks(nbformat.read(str(path), as_version=4))
        assert checks and all(call.expectations for call in checks.values()), path


@pytest.mark.parametrize("text, value", [
    ("4242", 4242), ("'ns-box'", "ns-box"), ("PosixPath('/a/b')", "/a/b"), ("(1, 'x')", (1, "x")),
])
def test_an_answer_is_the_literal_the_kernel_sent(text, value):
    assert parse_answer(text) == value


@pytest.mark.parametrize("text", ["<Result big: OOM-killed>", "__import__('os').system('x')", "Path(x)", "f(1)"])
def test_an_answer_that_is_not_a_literal_is_refused(text):
    with pytest.raises((ValueError, SyntaxError)):
        parse_answer(text)


def test_the_grader_judges_with_its_own_probes_whatever_the_kernel_rebinds(monkeypatch):
    """judge_cell builds probes from the grader's module; a kernel's rebinding is not seen."""
    import labkit.grading.probes as probes_module
    from labkit.grading.judge import judge_cell, parse
    from labkit.grading.targets import Finished

    class World:
        reference = "self"

        def finished(self, target):
            return Finished(f"container {target}", target == "big", oom_kills=1 if target == "big" else 0)

    call = parse('check("oom", expect("big", 2, probes.oom_killed("big", deadline=0)),'
                 ' expect("fake", 1, probes.oom_killed("fake", deadline=0)))', "cell")
    report = judge_cell(call, World())
    assert [o.passed for o in report.outcomes] == [True, False] and report.score == 2
    assert "never ran" in report.outcomes[1].observed
    assert probes_module.oom_killed is not None


# --- the gradebook is the grader's ---------------------------------------------------------------

def test_names_that_sanitise_alike_get_distinct_stable_files():
    from labkit.grading.gradebook import safe_file_name

    names = ["x y", "x_y", "x/y", "../x_y", "x_y-" + safe_file_name("x y").rsplit("-", 1)[1], "élève", "=cmd"]
    files = [safe_file_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert safe_file_name("x_y") == "x_y" and safe_file_name("x y") == safe_file_name("x y")
    assert all("/" not in f and not f.startswith(".") for f in files)


@pytest.mark.parametrize("text, kept", [("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
                                        ("\tx", "'\tx"), ("\rx", "'\rx"), ("alice", "alice"), ("", "")])
def test_csv_cells_that_a_spreadsheet_would_run_are_text(text, kept):
    from labkit.grading.gradebook import spreadsheet_safe

    assert spreadsheet_safe(text) == kept


def test_a_formula_like_student_name_is_text_in_the_csv(tmp_path):
    evil = Submission("=HYPERLINK(\"x\")", "@evil.ipynb", [CellScore("a", 1, 3, "scored")], 3, error="-oops")
    write_all(tmp_path, "lab.ipynb", [("a", 3)], [evil])
    row = list(csv.DictReader(open(tmp_path / "gradebook.csv")))[0]
    assert row["student"].startswith("'=") and row["file"] == "'@evil.ipynb" and row["error"] == "'-oops"


# --- progress counts every exercise ---------------------------------------------------------------

def test_progress_counts_every_exercise_of_the_notebook_not_only_those_run(tmp_path):
    notebook = new_notebook(cells=[
        nbgrader(new_code_cell("check('one', expect('a', 1, probes.x()))"), "c1", grade=True, locked=True, points=1),
        nbgrader(new_code_cell("check('two', expect('b', 2, probes.x()), expect('c', 1, probes.x()))"), "c2",
                 grade=True, locked=True, points=3),
    ])
    path = tmp_path / "lab.ipynb"
    nbformat.write(notebook, str(path))
    forget()
    check("one", expect("a", 1, lambda: True))
    shown = progress(str(path))
    assert repr(shown) == "1 of 3 checks passed, 1 of 4 points; 1 of 2 exercise(s) run"
    assert "width:25%" in shown._repr_html_() and "not run yet" in shown._repr_html_()
    forget()


def test_output_is_measured_for_the_cap_without_holding_it_twice():
    from labkit.grading.grader import _output_size

    assert _output_size({"name": "stdout", "text": "x" * 10}) == 10
    assert _output_size({"data": {"text/plain": "12", "text/html": "<b>"}}) == 5
