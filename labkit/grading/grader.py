"""Autograding without a database: each submission in its own sandbox, judged from outside.

For each submission: read it (a file that is not a notebook becomes a gradebook line,
never a crash), restore every locked and grade cell from the source by grade_id, make a
sandbox (labkit.grading.sandbox) and start the kernel inside it, run the cells headless
with a per-cell timeout (a cell that hangs is interrupted and the rest still run). A
grade cell is not run in the kernel: once the cells before it ran, the grader reads its
source as data and judges its expectations itself (labkit.grading.judge) against the
sandbox's real state, so nothing the student's code does to `check`, the probes or the
display counts. Leaving the sandbox ends everything the submission started.

What the sandbox may read of the lab is its released form (for `progress()`): the hidden
checks are in the grader's memory and the executed notebook only, never in the kernel or
on a disk the kernel sees. A submission is the student's to write and to run: nothing in
it (its metadata, the messages its kernel sends, the size of its outputs or the number of
its cells) may cost more than its own grade.
"""

import errno
import json
import os
import stat
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from labkit.grading.notebook import grade_cells, grade_id, is_grade, points, release, restore, source_text
from labkit.grading.scoring import CellScore

DEFAULT_CELL_TIMEOUT = 30.0
OUTPUT_CAP = 1 << 20          # characters of output kept per cell in the executed notebook
SUBMISSION_OUTPUT_CAP = 16 << 20     # characters of output kept in all of one executed notebook
NOTEBOOK_NAME = "submission.ipynb"   # the released form of the restored notebook, in the kernel's working directory


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


SUBMISSION_MOST = 64 << 20    # bytes of a submitted notebook (the labs' are well under 1 MiB)


def most_cells(source) -> int:
    """The cells a submission of `source` may have: room for many cells of the student's
    own, where reading, restoring and running a notebook of 400,000 empty cells cost the
    grader over 30 s of CPU before the submission's time started."""
    return 4 * len(source.cells) + 50


def read_notebook(path, source_path=None, cells_most=None):
    """The notebook at `path` (ValueError saying why it is not one), a regular file of at
    most SUBMISSION_MOST bytes and, if `cells_most` is given, of at most that many cells
    (counted before nbformat reads it: its validation is the slow part).
    A submission (`source_path` given) is reached by no symlink
    of its own or of its folder, and is not the source itself: students often hand in through a folder they
    can write, and `alice/lab.ipynb -> the source` (or `alice -> the instructor's folder`)
    would be read by the grader, as root, as alice's work."""
    import nbformat

    from labkit.files import read_regular

    folder, name = os.path.split(os.path.abspath(path))
    try:
        # the folder and then the file, each opened without following a link (no check-then-open:
        # a student may swap a folder for a link between the two)
        if source_path is None:
            folder_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            folder_fd = _open_by_trusted_links(folder)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as error:
        if os.path.islink(folder):
            raise ValueError(f"its folder is a symlink (to {os.readlink(folder)}): grade the file itself") from None
        raise ValueError(f"cannot open its folder: {error.strerror}") from None
    try:
        data = read_regular(name, SUBMISSION_MOST + 1, follow=source_path is None, dir_fd=folder_fd)
        if source_path is not None and _same_file(os.stat(name, dir_fd=folder_fd, follow_symlinks=False), source_path):
            raise ValueError("it is the source notebook itself (a hard link?)")
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as error:
        if os.path.islink(path):
            raise ValueError(f"the file is a symlink (to {os.readlink(path)}): grade the file itself") from None
        raise ValueError(f"not a notebook: {error.strerror}") from None
    finally:
        os.close(folder_fd)
    if len(data) > SUBMISSION_MOST:
        raise ValueError(f"not graded: over {SUBMISSION_MOST >> 20} MiB (a notebook with its outputs cleared is far less)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a notebook: the file is not UTF-8 text") from None
    if cells_most is not None:
        _refuse_too_many_cells(text, cells_most)
    try:
        notebook = nbformat.reads(text, as_version=4)
    except Exception as error:  # nbformat raises several kinds for JSON that is not a notebook
        raise ValueError(f"not a notebook: {_first_line(error)}") from None
    if not isinstance(notebook.get("cells"), list):
        raise ValueError("not a notebook: it has no list of cells")
    return notebook


def _open_by_trusted_links(folder) -> int:
    """An O_PATH descriptor of the folder `folder` (absolute), walked from / one name at a
    time: a link on the way is followed only where root, or the grader's own user, made it,
    and the folder itself is no link. `/home/alice/course -> /root/solutions`, made by
    alice two levels above her submission, had the grader read a notebook only root may
    read as alice's work (an audit, as a student). OSError(ELOOP) names what was refused."""
    import collections

    trusted = {0, os.getuid()}
    names = collections.deque(part for part in folder.split("/") if part)
    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    followed = 0
    try:
        while names:
            name = names.popleft()
            if name == ".":
                continue
            step = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            info = os.fstat(step)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink("", dir_fd=step)   # of the very link opened: no second lookup
                os.close(step)
                followed += 1
                if not names:
                    raise OSError(errno.ELOOP, f"its folder is a symlink (to {target})")
                if info.st_uid not in trusted or followed > 40:
                    raise OSError(errno.ELOOP, f"a symlink on the way ({name} -> {target}) is uid {info.st_uid}'s, "
                                               "not root's: the grader follows no link a student may have made")
                if target.startswith("/"):
                    os.close(current)
                    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                names.extendleft(reversed([part for part in target.split("/") if part]))
                continue
            if not stat.S_ISDIR(info.st_mode):
                os.close(step)
                raise OSError(errno.ENOTDIR, f"{name} is not a directory")
            os.close(current)
            current = step
        return current
    except BaseException:
        os.close(current)
        raise


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _refuse_too_many_cells(text, most) -> None:
    try:
        count = _cell_count(json.loads(text))
    except ValueError:
        return      # not JSON: nbformat says so next
    if count > most:
        raise ValueError(f"not graded: {count} cells, over the {most} a submission of this lab may have "
                         "(4 times the lab's cells, plus 50): hand in the lab without the extra cells")


def _cell_count(raw) -> int:
    """The cells of a notebook's JSON, of version 4 (`cells`) or 3 (`worksheets[].cells`)."""
    if not isinstance(raw, dict):
        return 0
    worksheets = raw.get("worksheets") if isinstance(raw.get("worksheets"), list) else []
    return sum(len(part["cells"]) for part in [raw, *worksheets]
               if isinstance(part, dict) and isinstance(part.get("cells"), list))


def _same_file(seen, path) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (seen.st_dev, seen.st_ino) == (other.st_dev, other.st_ino)


def parsed_checks(source) -> dict:
    """{grade_id: the parsed check call} of the source's grade cells (FormatError if one
    is not a check(...) call the grader can judge)."""
    from labkit.grading.judge import parse

    return {grade_id(cell): parse(source_text(cell), f"grade cell {grade_id(cell)!r}")
            for cell in source.cells if is_grade(cell)}


def grade(source, source_path, path, cell_timeout=DEFAULT_CELL_TIMEOUT, kernel_name=None,
          sandbox="namespaces", limits=None, workdir=None) -> Submission:
    """Grade one submission file against the source notebook (already read)."""
    from labkit.grading.sandbox import Sandbox

    submission = Submission(student_name(path, source_path), str(path),
                            max_total=sum(points for _, points in grade_cells(source)))
    try:
        handed_in = read_notebook(path, source_path, cells_most=most_cells(source))
    except ValueError as error:
        submission.error = str(error)
        submission.cells = _zero_scores(source, "not graded")
        return submission
    notebook = restore(source, handed_in)
    readable = restore(release(source), handed_in)
    del handed_in
    checks = parsed_checks(source)
    if sandbox == "vm":
        # The whole of this function again, in a VM of its own (labkit/grading/vm.py).
        from labkit.grading.vm import grade_in_vm

        submission.cells = _zero_scores(source, "not run")
        return grade_in_vm(source_path, path, cell_timeout, kernel_name or _kernel_of(source), limits, submission)
    with Sandbox(kind=sandbox, limits=limits, workdir=workdir) as box:
        _write_for_the_kernel(readable, box)
        reports = _execute(notebook, cell_timeout, kernel_name or _kernel_of(source), submission, box, checks)
        if box.timed_out:
            submission.notes.append(f"the submission ran out of its {box.limits.wall_seconds:g} s; "
                                    "later cells did not run")
    submission.cells = [_score(cell, reports.get(grade_id(cell))) for cell in source.cells if is_grade(cell)]
    for cid, report in reports.items():
        if report.unmeasured:
            points = sum(o.max_points for o in report.unmeasured)
            submission.notes.append(f"{BUSY_HOST} {cid}: {', '.join(o.name for o in report.unmeasured)} "
                                    f"({points:g} point(s)) could not be measured, neither right nor wrong: "
                                    "grade this submission again when the host is quieter")
    submission.executed = notebook
    return submission


BUSY_HOST = "busy host:"    # the start of a note on checks a busy host kept from being measured


def failed(source, source_path, path, error) -> Submission:
    """The gradebook row of a submission the grader failed on (a fault of the grader's,
    whatever the submission did): no points, and the failure named for the instructor."""
    where = ""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    if frames:
        where = f", at {Path(frames[-1].filename).name} line {frames[-1].lineno}"
    submission = Submission(student_name(path, source_path), str(path),
                            max_total=sum(points for _, points in grade_cells(source)))
    submission.error = (f"not graded: the grader failed on this submission ({type(error).__name__}: "
                        f"{_first_line(error)}{where}); the others were graded. Grade it again alone, "
                        "and report the failure with the file if it comes back")
    submission.cells = _zero_scores(source, "not graded")
    return submission


def _write_for_the_kernel(readable, box) -> None:
    """The notebook as the student has it (released: no hidden checks, no solutions), in
    the kernel's working directory, for progress()'s list of every exercise."""
    import nbformat

    _clear_outputs(readable)
    nbformat.write(readable, str(Path(box.scratch) / NOTEBOOK_NAME))


def _clear_outputs(notebook) -> None:
    """What the handed-in notebook said its code cells printed, gone: only what they print
    when the grader runs them counts."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


def _score(cell, report) -> CellScore:
    most = points(cell)
    if report is None:
        return CellScore(grade_id(cell), 0.0, most, "not run")
    checks = report.to_dict()["checks"]
    return CellScore(grade_id(cell), max(0.0, min(report.score, most)), most, "scored", checks)


def _kernel_of(source) -> str:
    return source.metadata.get("kernelspec", {}).get("name") or "labkit"


def _zero_scores(source, status):
    from labkit.grading.scoring import CellScore

    return [CellScore(cid, 0.0, points, status) for cid, points in grade_cells(source)]


CUT = "LabkitCellTimeout"   # the ename of the answer given for a cell cut at the timeout


def _execute(notebook, cell_timeout, kernel_name, submission, box, checks) -> dict:
    """Run every code cell in the sandbox's kernel, judging each grade cell from outside
    when its turn comes; return {grade_id: Report} of the grade cells judged."""
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_output

    from labkit.grading.evidence import Watch
    from labkit.grading.judge import GraderWorld, judge_cell, read_answer
    from labkit.grading.session import Progress, exercises_in, is_progress_cell

    _clear_outputs(notebook)
    reports, cut = {}, []

    def note_cut(cell, cell_index, execute_reply):
        if execute_reply and execute_reply.get("content", {}).get("ename") == CUT:
            cut.append(cell_index)

    # On a timeout: interrupt the kernel and answer for the cell at once (error_on_timeout)
    # instead of waiting on a cell that may ignore the interrupt.
    client = CappedClient(notebook, km=box.kernel_manager(kernel_name=kernel_name), timeout=cell_timeout,
                          allow_errors=True, interrupt_on_timeout=True, record_timing=False,
                          # The kernel may take as long to start as the submission may run (in an
                          # emulated VM that is minutes); a kernel that dies is noticed at once.
                          startup_timeout=box.limits.wall_seconds,
                          on_cell_executed=note_cut,
                          error_on_timeout={"ename": CUT, "evalue": f"cut after {cell_timeout:g} s", "traceback": []},
                          resources={"metadata": {"path": str(box.scratch)}})
    with Watch(box) as watch, client.setup_kernel(env={**os.environ, "LABKIT_NOTEBOOK": NOTEBOOK_NAME}):
        world = GraderWorld(box, lambda name: read_answer(client, name, cell_timeout), watch)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            if grade_id(cell) in checks:
                report = judge_cell(checks[grade_id(cell)], world)
                reports[grade_id(cell)] = report
                cell.outputs = [new_output("execute_result", data=_bundle(report), execution_count=None)]
                continue
            if is_progress_cell(source_text(cell)):
                # The kernel never ran a check (the grader judged them): its progress() would
                # show none. The grader's own is shown instead; only display, never a grade.
                shown = Progress(reports.values(), exercises_in(notebook.cells))
                cell.outputs = [new_output("execute_result", data=_bundle(shown), execution_count=None)]
                continue
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                submission.notes.append(f"the kernel died in cell {index}; later cells did not run")
                break
            except Exception as error:  # the kernel's messages are the student's to forge
                submission.notes.append(f"cell {index} could not be run: its kernel sent what the grader cannot "
                                        f"read ({type(error).__name__}: {_first_line(error)}); later cells did not run")
                break
            client.note_what_was_cut(cell, index)
            if cut and cut[-1] == index:
                submission.cut.append(grade_id(cell) or f"cell {index}")
                cell.outputs.append(new_output("error", ename=CUT, evalue=f"cut after {cell_timeout:g} s",
                                               traceback=[]))
                if not _recovered(client):
                    submission.notes.append(f"the kernel did not recover after cell {index} was cut "
                                            "(it ignores interrupts); later cells did not run")
                    break
    if getattr(client, "full_from", None) is not None:
        submission.notes.append(f"the output of this submission reached {SUBMISSION_OUTPUT_CAP >> 20} MiB in all "
                                f"at cell {client.full_from}: later output was not kept (the cells still ran)")
    return reports


def _bundle(shown) -> dict:
    """What a notebook shows of a Report or a Progress, as an output's data."""
    if hasattr(shown, "_repr_mimebundle_"):
        return dict(shown._repr_mimebundle_())
    return {"text/plain": repr(shown), "text/html": shown._repr_html_()}


def _output_size(content) -> int:
    total = 0
    for key in ("text", "data", "metadata", "traceback", "evalue"):
        value = content.get(key)
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            total += sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in value.values())
        elif isinstance(value, list):
            total += sum(len(str(v)) for v in value)
    return total


DISPLAYS = ("execute_result", "display_data", "update_display_data")


def _client_class():
    from nbclient import NotebookClient

    class Capped(NotebookClient):
        """Keeps at most OUTPUT_CAP characters of each cell's output and SUBMISSION_OUTPUT_CAP
        of all of them (the rest is counted, not held), and says in the cell what was cut."""

        def _room(self, cell_index) -> int:
            if not hasattr(self, "_labkit_kept"):
                self._labkit_kept, self._labkit_cut, self._labkit_total = {}, {}, 0
                self.full_from = None     # the first cell whose output met the submission's cap
            room_in_all = SUBMISSION_OUTPUT_CAP - self._labkit_total
            return min(OUTPUT_CAP - self._labkit_kept.get(cell_index, 0), room_in_all)

        def _keep(self, cell_index, size) -> None:
            self._labkit_kept[cell_index] = self._labkit_kept.get(cell_index, 0) + size
            self._labkit_total += size

        def _drop(self, cell_index, size) -> None:
            self._labkit_cut[cell_index] = self._labkit_cut.get(cell_index, 0) + size
            in_all = SUBMISSION_OUTPUT_CAP - self._labkit_total
            if self.full_from is None and in_all < OUTPUT_CAP - self._labkit_kept.get(cell_index, 0):
                self.full_from = cell_index     # the submission's cap, not the cell's, was met

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            size, room = _output_size(content), self._room(cell_index)
            if size > room:
                if room > 0 and isinstance(content.get("text"), str):    # a stream: keep its head
                    self._drop(cell_index, size - room)
                    msg = {**msg, "content": {**content, "text": content["text"][:room]}}
                    size = room
                else:
                    self._drop(cell_index, size)
                    return None
            self._keep(cell_index, size)
            return super().output(outs, msg, display_id, cell_index)

        def process_message(self, msg, cell, cell_index):
            # An output naming a display id also replaces the data of every earlier output
            # with that id (nbclient's _update_display_id, before and beside output(), and for
            # update_display_data instead of it): it counts against this cell's room once per
            # output it would replace, or it is cut whole.
            content = msg.get("content") or {}
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id and msg.get("msg_type") in DISPLAYS:
                replaced = sum(len(outputs) for outputs in self._display_id_map.get(display_id, {}).values())
                size = _output_size(content) * max(replaced, 1)
                if size > self._room(cell_index):
                    self._drop(cell_index, size)
                    return None
                if msg.get("msg_type") == "update_display_data":     # output() is not called for it
                    self._keep(cell_index, size)
            return super().process_message(msg, cell, cell_index)

        def note_what_was_cut(self, cell, index):
            from nbformat.v4 import new_output

            dropped = getattr(self, "_labkit_cut", {}).pop(index, 0)
            if not dropped:
                return
            if self.full_from is not None and index >= self.full_from:
                why = f"the submission's output reached {SUBMISSION_OUTPUT_CAP >> 20} MiB in all"
            else:
                why = f"this cell's output was cut at {OUTPUT_CAP >> 20} MiB"
            cell.outputs.append(new_output("stream", name="stdout", text=(
                f"\n[labkit grade run: {why}; {dropped} more characters were not kept]\n")))
    return Capped


def CappedClient(*args, **kwargs):  # noqa: N802 — a class, made on first use (nbclient is imported late)
    return _client_class()(*args, **kwargs)


def _recovered(client) -> bool:
    """After an interrupt: does the kernel answer again (within one cell timeout)?"""
    try:
        return client.wait_for_reply(client.kc.kernel_info()) is not None
    except Exception:  # a dead kernel, or a reply forged by the student's code: no answer either way
        return False
