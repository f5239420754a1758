"""What this kernel's check cells found so far, for the progress cell at the end.

A cell run twice replaces its earlier report (keyed by the check cell's id), so the
progress shows the latest attempt at each exercise. The exercises not run yet count
too: `progress()` reads the notebook's grade cells (the file JupyterLab names in
JPY_SESSION_NAME / `__session__`, or LABKIT_NOTEBOOK), so one exercise done of four is
a quarter of the bar, not all of it. This is feedback in the student's kernel; a grade is
computed by `labkit grade run`, outside it.
"""

import html
import json
import os

from labkit.grading.checks import Report, format_points, run_checks

_reports = {}   # check cell id -> Report, in first-run order


def check(cell: str, *expectations) -> Report:
    """Run a check cell's expectations and remember the report; display the return value."""
    report = run_checks(cell, expectations)
    _reports[cell] = report
    return report


def reports() -> list:
    return list(_reports.values())


def forget() -> None:
    _reports.clear()


class Progress:
    def __init__(self, reports, exercises=None):
        self.reports = list(reports)
        self.exercises = exercises     # [(title, points, number of checks)] of the notebook, or None

    def _rows(self) -> list:
        """(title, checks passed, checks, points got, points) for every exercise."""
        rows = [(r.cell, r.passed, len(r.outcomes), r.score, r.max_score) for r in self.reports]
        if self.exercises:
            done = {r.cell for r in self.reports}
            rows += [(title, 0, count, 0.0, points) for title, points, count in self.exercises if title not in done]
            order = {title: index for index, (title, _, _) in enumerate(self.exercises)}
            rows.sort(key=lambda row: order.get(row[0], len(order)))
        return rows

    @property
    def checks(self) -> tuple:
        rows = self._rows()
        return sum(r[1] for r in rows), sum(r[2] for r in rows)

    @property
    def points(self) -> tuple:
        rows = self._rows()
        return sum(r[3] for r in rows), sum(r[4] for r in rows)

    def __repr__(self):
        passed, total = self.checks
        got, most = self.points
        if self.exercises:
            return (f"{passed} of {total} checks passed, {format_points(got)} of {format_points(most)} points; "
                    f"{len(self.reports)} of {len(self._rows())} exercise(s) run")
        return (f"{passed} of {total} checks passed, {format_points(got)} of {format_points(most)} points "
                f"in {len(self.reports)} exercise(s) run")

    def _repr_html_(self):
        passed, total = self.checks
        got, most = self.points
        done = {r.cell for r in self.reports}
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(title)}</td><td>{ok}/{count}</td>"
            f"<td>{format_points(score)}/{format_points(maximum)}</td>"
            f"<td>{'' if title in done else 'not run yet'}</td></tr>"
            for title, ok, count, score, maximum in self._rows())
        width = 0 if not most else round(100 * got / most)
        bar = (f"<div style='width:20em;border:1px solid #888'><div style='width:{width}%;"
               f"background:#1a7f37;height:0.8em'></div></div>")
        return (f"<div>{bar}<p>{html.escape(repr(self))}</p><table><tr><th>exercise</th><th>checks</th>"
                f"<th>points</th><th></th></tr>{rows}</table></div>")


def progress(notebook=None) -> Progress:
    """Checks passed and points so far in this kernel, out of every exercise of the
    notebook (the last, locked cell of a lab)."""
    return Progress(reports(), exercises_of(notebook or _notebook_path()))


def _notebook_path():
    from labkit.grading.targets import _user_namespace

    return (os.environ.get("LABKIT_NOTEBOOK") or _user_namespace().get("__session__")
            or os.environ.get("JPY_SESSION_NAME"))


def exercises_of(path) -> list | None:
    """[(check title, points, number of checks)] of the notebook's grade cells, or None
    if there is no readable notebook at `path`."""
    if not path or not str(path).endswith(".ipynb") or not os.path.isfile(path):
        return None
    try:
        # plain JSON, not nbformat: its import and schema validation cost seconds on a busy host
        with open(path, encoding="utf-8") as handle:
            cells = json.load(handle).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    return exercises_in(cells)


def exercises_in(cells) -> list:
    """[(check title, points, number of checks)] of these notebook cells' grade cells."""
    from labkit.grading.cell_source import parse_check
    from labkit.grading.notebook import FormatError, grade_id, is_grade, points, source_text

    exercises = []
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") != "code" or not is_grade(cell):
            continue
        try:
            call = parse_check(source_text(cell))
            exercises.append((call.title, points(cell), len(call.expectations)))
        except FormatError:
            exercises.append((grade_id(cell) or "?", points(cell), 1))
    return exercises


def is_progress_cell(source: str) -> bool:
    """Is this cell just `progress()` (the lab's last, locked cell)?"""
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return (len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call)
            and isinstance(body[0].value.func, ast.Name) and body[0].value.func.id == "progress"
            and not body[0].value.args and not body[0].value.keywords)
