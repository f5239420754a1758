"""nbgrader's notebook format, read and written without nbgrader or a database.

Cell metadata (schema v3) lives in `cell.metadata.nbgrader`: `grade_id`, `solution`,
`grade`, `locked`, `points`. Solutions sit between `### BEGIN SOLUTION` / `### END
SOLUTION`, hidden checks between `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS`.

Releasing (as nbgrader's generate_assignment): solutions become stubs, hidden checks go,
outputs are cleared, locked cells are checksummed and made read-only. Grading starts by
restoring every locked and grade cell from the source by `grade_id`, so whatever a
student did to a check cell is undone.
"""

import copy
import hashlib
import re

PYTHON_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
# Inside a %%container body the cell is shell: Python's stub would be a shell syntax error
# that hides the point. `exit 1` fails the cell the way an unanswered exercise should.
SHELL_STUB = "exit 1  # YOUR CODE HERE"
RECIPE_STUB = "# YOUR CODE HERE"
TEXT_STUB = "YOUR ANSWER HERE"
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


class FormatError(ValueError):
    """The source notebook breaks nbgrader's rules (the message names the cell)."""


def grading(cell) -> dict:
    """The cell's nbgrader metadata, or {}: also for metadata that is not a dict, which a
    submission (the student's to write) may have."""
    metadata = cell.get("metadata") if isinstance(cell, dict) else None
    meta = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def grade_id(cell) -> str | None:
    cid = grading(cell).get("grade_id")
    return cid if isinstance(cid, str) else None


def is_solution(cell) -> bool:
    return bool(grading(cell).get("solution"))


def is_grade(cell) -> bool:
    return bool(grading(cell).get("grade"))


def is_locked(cell) -> bool:
    meta = grading(cell)
    # nbgrader locks every grade cell that is not also a solution
    return bool(meta.get("locked")) or (bool(meta.get("grade")) and not meta.get("solution"))


def points(cell) -> float:
    return float(grading(cell).get("points", 0) or 0)


def source_text(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def stub_for(cell) -> str:
    if cell.get("cell_type") != "code":
        return TEXT_STUB
    first = source_text(cell).lstrip().split("\n", 1)[0]
    if first.startswith("%%container"):
        return SHELL_STUB
    if first.startswith("%%image"):
        return RECIPE_STUB
    return PYTHON_STUB


def replace_regions(text: str, begin: str, end: str, stub: str | None, where: str) -> tuple:
    """Lines between markers (the marker lines too) become `stub` (indented like the begin
    marker) or nothing. Returns (new text, whether a region was found)."""
    out, inside, found = [], False, False
    for number, line in enumerate(text.split("\n"), 1):
        if begin in line:
            if inside:
                raise FormatError(f"{where}: line {number}: {begin} inside another {begin}")
            inside = found = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out.extend(indent + stub_line for stub_line in stub.split("\n"))
        elif end in line:
            if not inside:
                raise FormatError(f"{where}: line {number}: {end} without {begin}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise FormatError(f"{where}: {begin} is never closed by {end}")
    return "\n".join(out), found


def checksum(cell) -> str:
    """What nbgrader records to notice a changed locked cell: source, type, flags, id, points."""
    digest = hashlib.md5()
    for part in (source_text(cell), cell.get("cell_type", ""), str(is_grade(cell)), str(is_solution(cell)),
                 str(is_locked(cell)), grade_id(cell) or ""):
        digest.update(part.encode())
    if is_grade(cell):
        digest.update(str(points(cell)).encode())
    return digest.hexdigest()


def validate(notebook, where="notebook") -> None:
    """Every nbgrader cell has a unique grade_id; grade cells have points."""
    seen = set()
    for index, cell in enumerate(notebook.cells):
        written = cell.get("metadata", {}).get("nbgrader")
        if written is not None and not isinstance(written, dict):
            raise FormatError(f"{where}: cell {index}'s nbgrader metadata is a {type(written).__name__}, "
                              "not a mapping of grade_id, points, ...")
        meta = grading(cell)
        if not meta:
            continue
        cell_id = meta.get("grade_id")
        if not cell_id or not isinstance(cell_id, str):
            raise FormatError(f"{where}: cell {index} has nbgrader metadata but no grade_id (a string)")
        if cell_id in seen:
            raise FormatError(f"{where}: grade_id {cell_id!r} is used twice")
        seen.add(cell_id)
        if meta.get("grade") and "points" not in meta:
            raise FormatError(f"{where}: grade cell {cell_id!r} has no points")


def release(source):
    """The student version of a source notebook (a new notebook; the source is untouched)."""
    validate(source)
    student = copy.deepcopy(source)
    for index, cell in enumerate(student.cells):
        where = f"cell {index} ({grade_id(cell) or cell.get('cell_type')})"
        text = source_text(cell)
        if is_solution(cell):
            text, found = replace_regions(text, BEGIN_SOLUTION, END_SOLUTION, stub_for(cell), where)
            if not found:
                text = stub_for(cell)
        text, _ = replace_regions(text, BEGIN_HIDDEN, END_HIDDEN, None, where)
        cell["source"] = text
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
        if is_locked(cell):
            cell.setdefault("metadata", {})["editable"] = False
            cell["metadata"]["deletable"] = False
        if grading(cell):
            cell["metadata"]["nbgrader"]["checksum"] = checksum(cell)
    return student


def restore(source, submission):
    """The submission with every locked and grade cell put back from the source (matched by
    grade_id, hidden checks included), missing ones re-inserted after their predecessor,
    duplicates dropped, and the student's answers and own cells kept."""
    validate(source)
    source_cells = {grade_id(c): c for c in source.cells if grade_id(c)}
    fixed = {cid for cid, c in source_cells.items() if is_locked(c) or is_grade(c)}
    graded = copy.copy(submission)
    cells, placed = [], set()
    for cell in submitted_cells(submission):
        cid = grade_id(cell)
        if cid in fixed:
            if cid not in placed:
                cells.append(_clean_copy(source_cells[cid]))
                placed.add(cid)
            continue
        if cid in source_cells and cid not in placed:
            cell["metadata"]["nbgrader"] = copy.deepcopy(grading(source_cells[cid]))
            placed.add(cid)
        elif grading(cell):
            del cell["metadata"]["nbgrader"]   # an id the source does not have, or a duplicate: not graded
        cells.append(cell)
    _insert_missing(source, cells, placed, source_cells)
    graded.cells = cells
    graded.metadata = copy.deepcopy(source.metadata)
    return graded


CELL_TYPES = ("code", "markdown", "raw")


def submitted_cells(notebook) -> list:
    """Copies of a submission's cells that are cells: a type nbformat knows, text for a
    source, metadata a mapping, and nbgrader metadata either a mapping with a string
    grade_id or none at all. A submission is the student's to write; nothing in it may stop
    the grader (and with it everyone's grades) or be graded for a shape it only imitates."""
    from nbformat import from_dict

    cells = []
    for cell in notebook.cells:
        if not isinstance(cell, dict) or cell.get("cell_type") not in CELL_TYPES:
            continue
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            continue
        cell = from_dict(copy.deepcopy(dict(cell)))
        cell["source"] = source
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = from_dict({})
        written = cell["metadata"].get("nbgrader")
        if written is not None and not isinstance(grading(cell).get("grade_id"), str):
            del cell["metadata"]["nbgrader"]
        cells.append(cell)
    return cells


def _clean_copy(cell):
    cell = copy.deepcopy(cell)
    if cell.get("cell_type") == "code":
        cell["outputs"], cell["execution_count"] = [], None
    return cell


def _insert_missing(source, cells, placed, source_cells):
    """A source cell the submission lost goes right after the cell that precedes it in the source."""
    previous = None
    for cell in source.cells:
        cid = grade_id(cell)
        if cid and cid not in placed:
            replacement = _clean_copy(cell)
            if is_solution(cell) and not is_locked(cell):
                replacement["source"] = release_cell_source(cell)
            position = 0
            if previous is not None:
                position = next((i + 1 for i, c in enumerate(cells) if grade_id(c) == previous), len(cells))
            cells.insert(position, replacement)
            placed.add(cid)
        if cid:
            previous = cid


def release_cell_source(cell) -> str:
    text, found = replace_regions(source_text(cell), BEGIN_SOLUTION, END_SOLUTION, stub_for(cell), "cell")
    return text if found else stub_for(cell)


def grade_cells(source) -> list:
    """[(grade_id, points)] of the source's grade cells, in order."""
    return [(grade_id(c), points(c)) for c in source.cells if is_grade(c)]
