"""docs/review-map.md stays true: every cell it cites exists and holds the quoted text.

The map sends a re-reader of the notebooks review (issue 23) from each review item to the
cell that fixes it, as `` `NN/K` "quote" `` (notebook NN, cell K, 0-based as in the
review) or `` `README.md` "quote" ``. A cell that moves or loses its wording makes this
fail, so the map cannot quietly point at the wrong cell. Also checked here: no committed
output shows a build machine's paths (a worktree, a temporary LABKIT_HOME) or a widget's
text repr, which is what the test suite left in outputs before and the review caught.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "review-map.md"
REFERENCE = re.compile(r'`(\d\d/\d+|README\.md|Makefile|(?:docs|tests)/[\w./-]+)` "([^"]+)"')


def _normal(text: str) -> str:
    return " ".join(text.split())


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _cell_text(cell) -> str:
    parts = [_text(cell["source"])]
    for output in cell.get("outputs", []):
        parts.append(_text(output.get("text", "")))
        parts.append(_text(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _notebook(number: str) -> Path:
    found = sorted((ROOT / "notebooks").glob(f"{number}-*.ipynb"))
    assert len(found) == 1, f"notebooks/{number}-*.ipynb: {len(found)} found"
    return found[0]


def _references():
    return REFERENCE.findall(MAP.read_text())


def test_the_map_cites_cells_and_covers_every_numbered_review_item():
    text = MAP.read_text()
    assert len(_references()) > 50
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    missing = [str(item) for item in range(1, 39) if str(item) not in rows]
    assert not missing, f"review items without a row in docs/review-map.md: {missing}"


@pytest.mark.parametrize("where,quote", _references(), ids=lambda value: value[:40])
def test_each_cited_cell_holds_the_quoted_text(where, quote):
    if where[:2].isdigit():
        number, index = where.split("/")
        cells = json.loads(_notebook(number).read_text())["cells"]
        assert int(index) < len(cells), f"{where}: the notebook has {len(cells)} cells"
        text = _cell_text(cells[int(index)])
    else:
        text = (ROOT / where).read_text()
    assert _normal(quote) in _normal(text), f"{where} no longer says {quote!r}"


BUILD_LEFTOVERS = re.compile(r"/work/wt/|nbB-home|\.labkit-home|HBox\(children|VBox\(children|IntProgress\(")


def test_no_committed_output_shows_a_build_machines_paths_or_a_widget_repr():
    found = []
    for path in sorted([*(ROOT / "notebooks").glob("**/*.ipynb"), *(ROOT / "instructor").glob("**/*.ipynb")]):
        if "executed" in path.parts:
            continue
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            outputs = "\n".join(_cell_text({"source": "", "outputs": cell.get("outputs", [])}).splitlines())
            found += [f"{path.name}/{index}: {match}" for match in set(BUILD_LEFTOVERS.findall(outputs))]
    assert not found, found


def test_a_saved_notebook_keeps_one_output_per_run_of_a_stream():
    nbformat = pytest.importorskip("nbformat")
    from labkit.lab import coalesce_streams

    def stream(name, text):
        return nbformat.v4.new_output("stream", name=name, text=text)

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# a heading"),
        nbformat.v4.new_code_cell(outputs=[stream("stdout", "hostname:"), stream("stdout", " lab\n"),
                                           stream("stderr", "oops\n"), stream("stdout", "after\n")])])
    coalesce_streams(notebook)
    assert [(output.name, output.text) for output in notebook.cells[1].outputs] == [
        ("stdout", "hostname: lab\n"), ("stderr", "oops\n"), ("stdout", "after\n")]
