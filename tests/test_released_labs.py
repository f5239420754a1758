"""The labs' solutions stay out of a student's way (issue 23).

instructor/labs/ holds each lab's source: solutions, hidden checks, the executed outputs
nbval compares. notebooks/labs/ holds the released copies (what `make lab` and Binder open
for a student), written by `make release-labs` (`labkit grade release`) and committed.
Here: each released copy is exactly what release makes of its source today (an edited
source not released again, or a released copy edited by hand, fails), and nothing under
notebooks/ (sources, outputs, metadata, any file) holds a solution marker or a line of a
solution's code, found in the sources independently of `release`. No kernel, no root."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from notebook_solutions import SOLUTIONS

from labkit.cli import main

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "instructor" / "labs"
RELEASED = REPO / "notebooks" / "labs"
NOTEBOOKS = REPO / "notebooks"
LABS = sorted(path.name for path in SOURCES.glob("*.ipynb"))
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SHORTEST = 16   # a solution line shorter than this ("pass", "import os") says nothing of the answer
IMPORT = re.compile(r"(import|from) [\w.]+( import |$)")
AGAIN = "run `make release-labs` (labkit grade release instructor/labs/*.ipynb --out notebooks/labs) and commit both"


def test_every_lab_source_has_its_released_copy_and_no_other():
    assert len(LABS) >= 5, f"the labs' sources are missing from {SOURCES}: {LABS}"
    assert sorted(path.name for path in RELEASED.glob("*.ipynb")) == LABS, AGAIN


def first_difference(ours, committed) -> str:
    if len(ours.cells) != len(committed.cells):
        return f"{len(committed.cells)} cells, release makes {len(ours.cells)}"
    for index, (mine, theirs) in enumerate(zip(ours.cells, committed.cells)):
        if mine != theirs:
            keys = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
            return f"cell {index} differs in {', '.join(keys)}"
    return "the notebook's metadata or format differ"


def test_each_released_copy_is_what_release_makes_of_its_source(tmp_path):
    assert main(["grade", "release", *[str(SOURCES / lab) for lab in LABS], "--out", str(tmp_path)]) == 0
    for lab in LABS:
        ours, committed = (tmp_path / lab).read_text(), (RELEASED / lab).read_text()
        if ours != committed:
            why = first_difference(nbformat.reads(ours, as_version=4), nbformat.reads(committed, as_version=4))
            pytest.fail(f"notebooks/labs/{lab} is not the release of instructor/labs/{lab} ({why}): {AGAIN}")


# --- no solution under notebooks/ -----------------------------------------------------------

def _text(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def secret_and_public_lines(notebook) -> tuple:
    """(lines inside the source's solutions and hidden checks, every other line of its cells),
    read from the markers and the nbgrader metadata directly, not through `release`: a
    solution cell with no markers is a solution from its first line to its last."""
    secret, public = set(), set()
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        whole = meta.get("solution", False) and "BEGIN SOLUTION" not in _text(cell)
        inside = False
        for line in _text(cell).split("\n"):
            stripped = line.strip()
            if any(marker in line for marker in MARKERS):
                inside = "BEGIN" in line
                continue
            (secret if inside or whole else public).add(stripped)
    return secret, public


def distinctive_lines(path) -> set:
    """The solution lines of a lab's source that only a solution has: long enough to say
    something, not an import (every notebook has `import subprocess`) and not also printed
    elsewhere in the notebook (a task's statement, a check)."""
    secret, public = secret_and_public_lines(json.loads(Path(path).read_text()))
    return {line for line in secret - public if len(line) >= SHORTEST and not IMPORT.match(line)}


def tour_solution_lines() -> set:
    """tests/notebook_solutions.py: the answers to the tour notebooks' exercises."""
    return {line.strip() for answers in SOLUTIONS.values() for answer in answers.values()
            for line in answer.split("\n") if len(line.strip()) >= SHORTEST}


def strings(value):
    """Every text in a notebook's JSON, a list of strings joined as nbformat joins a source."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        yield "".join(value)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)


def texts_under(folder: Path):
    """(path, text) of every file under `folder`: a notebook's sources, outputs and metadata
    one string each, any other file whole."""
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            raw = path.read_text()
        except UnicodeDecodeError:
            continue
        if path.suffix == ".ipynb":
            for text in strings(json.loads(raw)):
                yield path, text
        else:
            yield path, raw


def solutions_found(folder: Path, lines: dict) -> list:
    """What under `folder` holds a solution marker or one of `lines` ({line: where it is from})."""
    found = []
    for path, text in texts_under(folder):
        where = path.relative_to(folder)
        found += [f"{where}: the marker {marker!r}" for marker in MARKERS if marker in text]
        found += [f"{where}: {line!r} (from {origin})" for line, origin in lines.items() if line in text]
    return sorted(set(found))


def all_solution_lines() -> dict:
    lines = {line: "tests/notebook_solutions.py" for line in tour_solution_lines()}
    for lab in LABS:
        lines.update({line: f"instructor/labs/{lab}" for line in distinctive_lines(SOURCES / lab)})
    return lines


def test_nothing_under_notebooks_holds_a_solution():
    found = solutions_found(NOTEBOOKS, all_solution_lines())
    assert found == [], "a solution is where a student sees it:\n" + "\n".join(found)


@pytest.mark.parametrize("lab", LABS)
def test_the_search_finds_each_labs_solutions_in_its_source(lab, tmp_path):
    """The search above is not blind: every lab has solution lines of its own, and the same
    search finds each of them (and the markers) in the source, which is not under notebooks/."""
    lines = distinctive_lines(SOURCES / lab)
    assert len(lines) >= 3, f"{lab}: {sorted(lines)}"
    (tmp_path / lab).write_text((SOURCES / lab).read_text())
    found = solutions_found(tmp_path, {line: lab for line in lines})
    assert len([f for f in found if "the marker 'BEGIN SOLUTION'" in f]) == 1
    assert len([f for f in found if "(from " in f]) == len(lines)


def test_a_solution_line_pasted_into_an_output_under_notebooks_is_found(tmp_path):
    """A solution that reaches a student another way (a tour notebook's committed output, a
    stored rootless output in a cell's metadata) is found too."""
    lab = LABS[0]
    line = sorted(distinctive_lines(SOURCES / lab))[0]
    notebook = nbformat.read(str(RELEASED / lab), as_version=4)
    cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    cell.metadata["labkit"] = {"rootless_outputs": [{"output_type": "stream", "name": "stdout", "text": [line, "\n"]}]}
    nbformat.write(notebook, str(tmp_path / lab))
    assert solutions_found(tmp_path, {line: lab}) == [f"{lab}: {line!r} (from {lab})"]
