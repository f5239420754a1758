"""Autograding without a database: each submission in a fresh kernel, one at a time.

For each submission: read it (a file that is not a notebook becomes a gradebook line,
never a crash), restore every locked and grade cell from the source by grade_id, run the
cells headless with a per-cell timeout (a cell that hangs is interrupted and the rest
still run), score the grade cells, shut the kernel down (its containers go with it: the
helper removes an owner's containers when the owner exits), then remove the images and
leftovers the submission made, before the next one starts.
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.grading.notebook import grade_cells, grade_id, restore
from labkit.grading.scoring import score_notebook

DEFAULT_CELL_TIMEOUT = 30.0


@dataclass
class Submission:
    student: str
    path: str
    cells: list = field(default_factory=list)     # CellScore
    max_total: float = 0.0
    error: str | None = None                       # why it could not be graded at all
    cut: list = field(default_factory=list)        # grade_ids/cell indexes cut at the timeout
    notes: list = field(default_factory=list)
    executed: object = None                        # the notebook as it ran, for the instructor

    @property
    def total(self) -> float:
        return sum(cell.score for cell in self.cells)

    def score_of(self, cid) -> float:
        return next((cell.score for cell in self.cells if cell.grade_id == cid), 0.0)

    def to_dict(self) -> dict:
        return {"student": self.student, "file": self.path, "total": self.total, "max_total": self.max_total,
                "error": self.error, "cut": self.cut, "notes": self.notes,
                "cells": [cell.to_dict() for cell in self.cells]}


def student_name(path, source_path) -> str:
    """`alice.ipynb` -> alice; `alice/lab.ipynb` (the source's file name) -> alice."""
    path = Path(path)
    if path.name == Path(source_path).name and path.parent.name:
        return path.parent.name
    return path.stem


def read_notebook(path):
    import nbformat

    try:
        with open(path, encoding="utf-8") as handle:
            notebook = nbformat.read(handle, as_version=4)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except UnicodeDecodeError:
        raise ValueError("not a notebook: the file is not UTF-8 text") from None
    except Exception as error:  # nbformat raises several kinds for JSON that is not a notebook
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"not a notebook: {first[:200]}") from None
    if not isinstance(notebook.get("cells"), list):
        raise ValueError("not a notebook: it has no list of cells")
    return notebook


def grade(source, source_path, path, cell_timeout=DEFAULT_CELL_TIMEOUT, kernel_name=None) -> Submission:
    """Grade one submission file against the source notebook (already read)."""
    submission = Submission(student_name(path, source_path), str(path),
                            max_total=sum(points for _, points in grade_cells(source)))
    try:
        notebook = restore(source, read_notebook(path))
    except ValueError as error:
        submission.error = str(error)
        submission.cells = _zero_scores(source, "not graded")
        return submission
    before = _image_names()
    try:
        ran = _execute(notebook, cell_timeout, kernel_name or _kernel_of(source), submission)
    finally:
        _tear_down(before)
    submission.cells = score_notebook(notebook, ran)
    submission.executed = notebook
    return submission


def _kernel_of(source) -> str:
    return source.metadata.get("kernelspec", {}).get("name") or "labkit"


def _zero_scores(source, status):
    from labkit.grading.scoring import CellScore

    return [CellScore(cid, 0.0, points, status) for cid, points in grade_cells(source)]


CUT = "LabkitCellTimeout"   # the ename of the answer given for a cell cut at the timeout


def _execute(notebook, cell_timeout, kernel_name, submission) -> set:
    """Run every code cell; return the grade_ids of the cells that ran."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_output

    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    ran, cut = set(), []

    def note_cut(cell, cell_index, execute_reply):
        if execute_reply and execute_reply.get("content", {}).get("ename") == CUT:
            cut.append(cell_index)

    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as workdir:
        # On a timeout: interrupt the kernel and answer for the cell at once (error_on_timeout)
        # instead of waiting on a cell that may ignore the interrupt.
        client = NotebookClient(notebook, kernel_name=kernel_name, timeout=cell_timeout, allow_errors=True,
                                interrupt_on_timeout=True, record_timing=False, on_cell_executed=note_cut,
                                error_on_timeout={"ename": CUT, "evalue": f"cut after {cell_timeout:g} s",
                                                  "traceback": []},
                                resources={"metadata": {"path": workdir}})
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    submission.notes.append(f"the kernel died in cell {index}; later cells did not run")
                    break
                if cut and cut[-1] == index:
                    submission.cut.append(grade_id(cell) or f"cell {index}")
                    cell.outputs.append(new_output("error", ename=CUT, evalue=f"cut after {cell_timeout:g} s",
                                                   traceback=[]))
                    if not _recovered(client):
                        submission.notes.append(f"the kernel did not recover after cell {index} was cut "
                                                "(it ignores interrupts); later cells did not run")
                        break
                    continue
                if grade_id(cell):
                    ran.add(grade_id(cell))
    return ran


def _recovered(client) -> bool:
    """After an interrupt: does the kernel answer again (within one cell timeout)?"""
    from nbclient.exceptions import DeadKernelError

    try:
        return client.wait_for_reply(client.kc.kernel_info()) is not None
    except DeadKernelError:
        return False


def _image_names() -> set:
    from labkit.images import Store

    try:
        return set(Store().names())
    except Exception:  # noqa: BLE001 — no store yet: nothing to keep
        return set()


def _tear_down(images_before: set) -> None:
    """Images the submission built go; so does what its dead kernel's containers left."""
    from labkit.grading.tidy import remove_images
    from labkit.runtime import gc

    remove_images(sorted(_image_names() - images_before))
    gc()
    _sweep_network()


def _sweep_network() -> None:
    try:
        from labkit.net import sweep

        sweep()
    except Exception:  # noqa: BLE001 — no network made, or no pyroute2: nothing to sweep
        pass
