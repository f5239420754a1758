"""`labkit grade release SOURCE… --out DIR` and `labkit grade run SOURCE SUBMISSION… --out DIR`:
nbgrader's release and autograde steps for labkit labs, with no database and no exchange."""

import sys
from pathlib import Path

from labkit.errors import ConfigError


def add_subcommand(subparsers) -> None:
    grade = subparsers.add_parser("grade", help="release graded labs and grade submissions (no database)")
    verbs = grade.add_subparsers(dest="grade_verb", metavar="VERB")
    verbs.required = True

    release = verbs.add_parser("release", help="write the student version of source notebooks "
                               "(solutions stubbed, hidden checks removed, outputs cleared)")
    release.add_argument("sources", nargs="+", metavar="SOURCE")
    release.add_argument("--out", required=True, metavar="DIR", help="folder for the student notebooks")
    release.set_defaults(func=cmd_release)

    run = verbs.add_parser("run", help="grade submissions against a source notebook, each in a fresh kernel")
    run.add_argument("source", metavar="SOURCE")
    run.add_argument("submissions", nargs="+", metavar="SUBMISSION")
    run.add_argument("--out", required=True, metavar="DIR", help="folder for gradebook.csv/.json and feedback/")
    run.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                     help="cut a cell that runs longer than this (default 30)")
    run.add_argument("--kernel", help="kernel to run submissions in (default: the source's, usually labkit)")
    run.set_defaults(func=cmd_run)


def _read_source(path):
    from labkit.grading.grader import read_notebook
    from labkit.grading.notebook import FormatError, grade_cells, grading, validate

    try:
        notebook = read_notebook(path)
    except ValueError as error:
        raise ConfigError(f"source {path}: {error}") from None
    try:
        validate(notebook, where=f"source {path}")
    except FormatError as error:
        raise ConfigError(str(error)) from None
    if not any(grading(cell) for cell in notebook.cells):
        raise ConfigError(f"source {path} has no nbgrader cells (cell.metadata.nbgrader); is it a lab's source?")
    return notebook, grade_cells(notebook)


def cmd_release(options) -> int:
    import nbformat

    from labkit.grading.notebook import FormatError, release

    out = Path(options.out)
    for source in options.sources:
        if Path(source).resolve().parent == out.resolve():
            raise ConfigError(f"--out {options.out} is the folder of the source {source}: releasing there "
                              "would overwrite the solutions; pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    for source in options.sources:
        notebook, _ = _read_source(source)
        try:
            student = release(notebook)
        except FormatError as error:
            raise ConfigError(f"source {source}: {error}") from None
        target = out / Path(source).name
        nbformat.write(student, str(target))
        print(f"released {source} -> {target}")
    return 0


def cmd_run(options) -> int:
    from labkit.grading.gradebook import write_all
    from labkit.grading.grader import grade

    if options.timeout <= 0:
        raise ConfigError(f"--timeout {options.timeout:g}: a cell needs more than zero seconds")
    source, grade_ids = _read_source(options.source)
    submissions = []
    progress = Progress(len(options.submissions))
    for path in options.submissions:
        progress.start(path)
        try:
            submission = grade(source, options.source, path, cell_timeout=options.timeout, kernel_name=options.kernel)
        except KeyboardInterrupt:
            progress.close()
            raise
        submission.student = _unique(submission.student, {s.student for s in submissions})
        submissions.append(submission)
        progress.done(submission)
    progress.close()
    out = Path(options.out)
    write_all(out, options.source, grade_ids, submissions)
    print(f"graded {len(submissions)} submission(s): {out / 'gradebook.csv'}, {out / 'gradebook.json'}, {out / 'feedback'}/")
    return 0


def _unique(name, taken) -> str:
    """Two files that name the same student (alice.ipynb in two folders) keep two rows."""
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


class Progress:
    """A bar over submissions on stderr: rewritten in place on a terminal, a line each otherwise."""

    def __init__(self, total, stream=None):
        self.total, self.finished, self.stream = total, 0, stream or sys.stderr
        self.tty = self.stream.isatty()

    def _bar(self) -> str:
        width = 20
        filled = round(width * self.finished / self.total) if self.total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.finished}/{self.total}"

    def start(self, path):
        if self.tty:
            self.stream.write(f"\r\033[K{self._bar()} grading {path}")
            self.stream.flush()

    def done(self, submission):
        from labkit.grading.checks import format_points

        self.finished += 1
        verdict = submission.error or f"{format_points(submission.total)}/{format_points(submission.max_total)}"
        line = f"{self._bar()} {submission.student}: {verdict}"
        self.stream.write(f"\r\033[K{line}" if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
