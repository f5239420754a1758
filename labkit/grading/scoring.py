"""A grade cell's score from its outputs, by nbgrader's rule, plus what our checks saw.

nbgrader: an error or anything on stderr scores 0; the first displayed value that reads
as a number is partial credit (capped at the cell's points); any other output, or none,
is full credit. One difference on purpose: a grade cell that never ran (the kernel died
or the submission was cut before it) scores 0 here, where nbgrader would see "no output".
"""

from dataclasses import dataclass, field

from labkit.grading.checks import MIME
from labkit.grading.notebook import grade_id, is_grade, points


@dataclass
class CellScore:
    grade_id: str
    score: float
    max_score: float
    status: str                 # "scored", "error", "stderr", "not run"
    checks: list = field(default_factory=list)   # our checks+json "checks", when present

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "score": self.score, "max_score": self.max_score,
                "status": self.status, "checks": self.checks}


def score_cell(cell, ran: bool = True) -> CellScore:
    cid, most = grade_id(cell), points(cell)
    outputs = cell.get("outputs", [])
    checks = _checks_of(outputs)
    if not ran:
        return CellScore(cid, 0.0, most, "not run", checks)
    for output in outputs:
        kind = output.get("output_type")
        if kind == "error":
            return CellScore(cid, 0.0, most, "error", checks)
        if kind == "stream" and output.get("name") == "stderr":
            return CellScore(cid, 0.0, most, "stderr", checks)
        if kind in ("execute_result", "display_data"):
            return CellScore(cid, partial_credit(output, most), most, "scored", checks)
    return CellScore(cid, most, most, "scored", checks)


def partial_credit(output, most: float) -> float:
    text = output.get("data", {}).get("text/plain")
    if text is None:
        return most
    if isinstance(text, list):
        text = "".join(text)
    try:
        value = float(text)
    except ValueError:
        return most
    return max(0.0, min(value, most))


def _checks_of(outputs) -> list:
    for output in outputs:
        data = output.get("data", {})
        if MIME in data and isinstance(data[MIME], dict):
            return list(data[MIME].get("checks", []))
    return []


def score_notebook(notebook, ran_ids=None) -> list:
    """[CellScore] for every grade cell; `ran_ids` (grade_ids executed), None meaning all."""
    return [score_cell(cell, ran_ids is None or grade_id(cell) in ran_ids)
            for cell in notebook.cells if is_grade(cell)]
