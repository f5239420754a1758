"""What `labkit grade run` writes: gradebook.csv (a row per student, a column per grade
cell, the total), gradebook.json (every check with what it observed), a feedback page
per student (each check, passed or not, with the hint for what failed) and the notebook
as it ran (executed/STUDENT.ipynb: what the instructor opens to see why)."""

import csv
import html
import json
from pathlib import Path

from labkit.grading.checks import format_points


def write_all(out: Path, source_path, grade_ids, submissions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "gradebook.csv", grade_ids, submissions)
    write_json(out / "gradebook.json", source_path, grade_ids, submissions)
    feedback = out / "feedback"
    feedback.mkdir(exist_ok=True)
    executed = out / "executed"
    for submission in submissions:
        (feedback / f"{safe_file_name(submission.student)}.html").write_text(feedback_html(submission))
        if submission.executed is not None:
            import nbformat

            executed.mkdir(exist_ok=True)
            nbformat.write(submission.executed, str(executed / f"{safe_file_name(submission.student)}.ipynb"))


def safe_file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "student"


def write_csv(path, grade_ids, submissions) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "file", *[cid for cid, _ in grade_ids], "total", "max_total", "error"])
        for s in submissions:
            writer.writerow([s.student, s.path, *[format_points(s.score_of(cid)) for cid, _ in grade_ids],
                             format_points(s.total), format_points(s.max_total), s.error or ""])


def write_json(path, source_path, grade_ids, submissions) -> None:
    data = {"source": str(source_path), "grade_cells": [{"grade_id": cid, "points": p} for cid, p in grade_ids],
            "submissions": [s.to_dict() for s in submissions]}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


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
            rows = "".join(
                f"<tr><td>{'✔' if c.get('passed') else '✘'}</td><td>{html.escape(str(c.get('name', '')))}</td>"
                f"<td>{format_points(c.get('points', 0))}/{format_points(c.get('max_points', 0))}</td>"
                f"<td>{'' if c.get('passed') else html.escape(str(c.get('hint', '')))}</td></tr>"
                for c in cell.checks)
            parts.append(f"<table><tr><th></th><th>check</th><th>points</th><th>hint</th></tr>{rows}</table>")
    return "\n".join(parts) + "\n"


def _status_words(status: str) -> str:
    return {"error": "The check cell raised an error.", "stderr": "The check cell wrote to stderr.",
            "not run": "The check cell did not run.", "not graded": "Not graded."}.get(status, status)
