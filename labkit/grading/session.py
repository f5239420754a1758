"""What this kernel's check cells found so far, for the progress cell at the end.

A cell run twice replaces its earlier report (keyed by the check cell's id), so the
progress shows the latest attempt at each exercise.
"""

import html

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
    def __init__(self, reports):
        self.reports = list(reports)

    @property
    def checks(self) -> tuple:
        outcomes = [o for r in self.reports for o in r.outcomes]
        return sum(o.passed for o in outcomes), len(outcomes)

    @property
    def points(self) -> tuple:
        return sum(r.score for r in self.reports), sum(r.max_score for r in self.reports)

    def __repr__(self):
        passed, total = self.checks
        got, most = self.points
        return (f"{passed} of {total} checks passed, {format_points(got)} of {format_points(most)} points "
                f"in {len(self.reports)} exercise(s) run")

    def _repr_html_(self):
        passed, total = self.checks
        got, most = self.points
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r.cell)}</td><td>{r.passed}/{len(r.outcomes)}</td>"
            f"<td>{format_points(r.score)}/{format_points(r.max_score)}</td></tr>" for r in self.reports)
        width = 0 if not most else round(100 * got / most)
        bar = (f"<div style='width:20em;border:1px solid #888'><div style='width:{width}%;"
               f"background:#1a7f37;height:0.8em'></div></div>")
        return (f"<div>{bar}<p>{passed} of {total} checks passed, {format_points(got)} of "
                f"{format_points(most)} points</p><table><tr><th>exercise</th><th>checks</th>"
                f"<th>points</th></tr>{rows}</table></div>")


def progress() -> Progress:
    """Checks passed and points so far in this kernel (the last, locked cell of a lab)."""
    return Progress(reports())
