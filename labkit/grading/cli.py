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
    run.add_argument("--budget", type=float, default=600.0, metavar="SECONDS",
                     help="wall-clock time one submission may take in its sandbox, kernel start to last cell "
                          "(default 600); then the sandbox is killed and later cells do not run")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="grade N submissions at once, each in its own sandbox (default 1)")
    run.add_argument("--sandbox", default="namespaces", metavar="KIND",
                     help="where each submission runs: namespaces (default), vm, or none (on the host, "
                          "no isolation: for trusted notebooks only)")
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


def _judgeable(notebook, path) -> None:
    """Every grade cell is a check(...) call the grader can judge itself, and the source
    can be released (what a submission's kernel may read of it is its released form)."""
    from labkit.grading.grader import parsed_checks
    from labkit.grading.notebook import FormatError, release

    try:
        parsed_checks(notebook)
        release(notebook)
    except FormatError as error:
        raise ConfigError(f"source {path}: {error}") from None


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
    from labkit.grading.gradebook import write_gradebook, write_submission
    from labkit.grading.grader import BUSY_HOST, student_name
    from labkit.grading.sandbox import KINDS, SandboxLimits

    if options.timeout <= 0:
        raise ConfigError(f"--timeout {options.timeout:g}: a cell needs more than zero seconds")
    if not (0 < options.budget < float("inf")):
        raise ConfigError(f"--budget {options.budget:g}: give a submission a finite number of seconds above zero")
    if options.jobs < 1:
        raise ConfigError(f"--jobs {options.jobs}: grade at least one submission at a time")
    if options.sandbox not in KINDS:
        raise ConfigError(f"--sandbox {options.sandbox}: not one of {', '.join(KINDS)}")
    if options.sandbox == "none" and options.jobs > 1:
        raise ConfigError(f"--jobs {options.jobs} with --sandbox none: without a sandbox, submissions share the "
                          "host's container names, ports and bridge; grade one at a time, or use a sandbox")
    source, grade_ids = _read_source(options.source)
    _judgeable(source, options.source)
    names = []
    for path in options.submissions:
        names.append(_unique(student_name(path, options.source), set(names)))
    settings = {"cell_timeout": options.timeout, "kernel_name": options.kernel, "sandbox": options.sandbox,
                "limits": SandboxLimits(wall_seconds=options.budget)}
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(options.submissions))
    done = {}
    try:
        for index, submission in graded(source, options.source, options.submissions, options.jobs, settings, progress):
            submission.student = names[index]
            # written now and let go of: a class's executed notebooks at once would not fit in memory
            write_submission(out, submission)
            submission.executed = None
            done[index] = submission
            progress.done(submission)
    finally:
        progress.close()
    submissions = [done[index] for index in sorted(done)]
    write_gradebook(out, options.source, grade_ids, submissions)
    print(f"graded {len(submissions)} submission(s): {out / 'gradebook.csv'}, {out / 'gradebook.json'}, {out / 'feedback'}/")
    again = [s.student for s in submissions if any(note.startswith(BUSY_HOST) for note in s.notes)]
    if again:
        print(f"busy host: some timing checks could not be measured (no points, not wrong); grade again: {', '.join(again)}")
    return 0


def graded(source, source_path, paths, jobs, settings, progress):
    """(index, Submission) as each is graded: in turn, or `jobs` at once in worker processes
    (each submission in its own sandbox either way). A submission the grader fails on is
    an error row of its own, never the end of everyone's grades."""
    from labkit.grading.grader import failed

    if jobs == 1:
        for index, path in enumerate(paths):
            progress.start(path)
            yield index, grade_alone(source, source_path, path, **settings)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the grader may hold threads (a fork copies none of them, and their locks)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(grade_alone, source, source_path, path, **settings): index
                   for index, path in enumerate(paths)}
        progress.start(f"{min(jobs, len(paths))} at a time")
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    submission = future.result()
                except ConfigError:
                    raise
                except Exception as error:  # the worker died, or its answer could not come back
                    submission = failed(source, source_path, paths[index], error)
                yield index, submission
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def grade_alone(source, source_path, path, **settings):
    """grade(), with whatever it raises (but a ConfigError: the options are wrong for every
    submission) made this submission's error row."""
    from labkit.grading.grader import failed, grade

    try:
        return grade(source, source_path, path, **settings)
    except ConfigError:
        raise
    except Exception as error:
        return failed(source, source_path, path, error)


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
