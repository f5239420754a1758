"""What `labkit grade run` writes: gradebook.csv (a row per student, a column per grade
cell, the total), gradebook.json (every check with what it observed), a feedback page
per student (each check, passed or not, with the hint for what failed) and the notebook
as it ran (executed/STUDENT.ipynb: what the instructor opens to see why).

Only the grader writes here, in a folder no sandbox can see, each file whole (a temporary
beside it, then a rename): a submission's feedback and executed notebook as soon as it is
graded (the grader then lets go of the notebook), the gradebook once all are. A student's
name never becomes a formula in a spreadsheet, and two names never share a file."""

import csv
import hashlib
import html
import io
import json
import re
from pathlib import Path

from labkit.files import write_atomically
from labkit.grading.checks import CHECKS_HEAD_HTML, check_row_html, format_points


def write_all(out: Path, source_path, grade_ids, submissions) -> None:
    for submission in submissions:
        write_submission(out, submission)
    write_gradebook(out, source_path, grade_ids, submissions)


def write_submission(out: Path, submission) -> None:
    """The student's feedback page and, if it ran, the notebook as it ran."""
    feedback = out / "feedback"
    feedback.mkdir(parents=True, exist_ok=True)
    write_atomically(feedback / f"{safe_file_name(submission.student)}.html", feedback_html(submission))
    if submission.executed is not None:
        import nbformat

        executed = out / "executed"
        executed.mkdir(exist_ok=True)
        write_atomically(executed / f"{safe_file_name(submission.student)}.ipynb",
                         nbformat.writes(submission.executed))


def write_gradebook(out: Path, source_path, grade_ids, submissions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "gradebook.csv", grade_ids, submissions)
    write_json(out / "gradebook.json", source_path, grade_ids, submissions)


_SUFFIXED = re.compile(r"-[0-9a-f]{8}$")


def safe_file_name(name: str) -> str:
    """A file name for a student: their name if it is one already, else the name made safe
    plus 8 hex digits of its hash, so `x y` and `x_y` (or `../x`) never share a file and a
    name always gets the same one."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")[:100] or "student"
    if safe == name and not _SUFFIXED.search(name):
        return safe
    return f"{safe}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def spreadsheet_safe(text: str) -> str:
    """A cell a spreadsheet reads as text: one starting with = + - @ (a formula) or a tab
    or carriage return gets a leading apostrophe."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(path, grade_ids, submissions) -> None:
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["student", "file", *[spreadsheet_safe(cid) for cid, _ in grade_ids], "total", "max_total", "error"])
    for s in submissions:
        writer.writerow([spreadsheet_safe(s.student), spreadsheet_safe(s.path),
                         *[format_points(s.score_of(cid)) for cid, _ in grade_ids],
                         format_points(s.total), format_points(s.max_total), spreadsheet_safe(s.error or "")])
    write_atomically(path, handle.getvalue())


def write_json(path, source_path, grade_ids, submissions) -> None:
    data = {"source": str(source_path), "grade_cells": [{"grade_id": cid, "points": p} for cid, p in grade_ids],
            "submissions": [s.to_dict() for s in submissions]}
    write_atomically(path, json.dumps(data, indent=1) + "\n")


def feedback_html(submission) -> str:
    title = f"{html.escape(submission.student)}: {format_points(submission.total)} of {format_points(submission.max_total)} points"
    parts = [f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"]
    if submission.error:
        parts.append(f"<p><b>Not graded:</b> {html.escape(submission.error)}</p>")
    for note in submission.notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    if submission.cut:
        parts.append(f"<p>Cut at the time limit: {html.escape(', '.join(submission.cut))}</p>")
    for cell in submission.cells:
        parts.append(f"<h2>{html.escape(cell.grade_id)}: {format_points(cell.score)} of {format_points(cell.max_score)}</h2>")
        if cell.status != "scored":
            parts.append(f"<p>{_status_words(cell.status)}</p>")
        if cell.checks:
            rows = "".join(check_row_html(c) for c in cell.checks)
            parts.append(f"<table>{CHECKS_HEAD_HTML}{rows}</table>")
    return "\n".join(parts) + "\n"


def _status_words(status: str) -> str:
    return {"error": "The check cell raised an error.", "stderr": "The check cell wrote to stderr.",
            "not run": "The check cell did not run.", "not graded": "Not graded."}.get(status, status)
