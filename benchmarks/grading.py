"""Seconds per submission, graded in a sandbox against without one, in one run.

    python benchmarks/grading.py [--runs 5] [--warmup 1] [--notebook PATH] [--quick] [--json FILE]

One submission = make the sandbox, start the "labkit" kernel in it, run every code cell
of a lab notebook (the instructor's source, solutions in: a full-marks submission whose
cells start containers, set limits, build images), shut the kernel down, remove the
sandbox. Rows, called in turn (none, namespaces, none, ...) so that a busy machine slows
both alike:

- none:        Sandbox(kind="none"): the kernel on the host, as before sandboxes
- namespaces:  Sandbox(kind="namespaces"): user, mount, PID, net, UTS, IPC and cgroup
               namespaces, a delegated cgroup with limits, the kernel over ipc sockets
- namespaces (sandbox only): make and remove the sandbox, no kernel: its own cost

Goal (issue 19): namespaces ≤ 1.25× none. Printed, never asserted.

Then two rows of whole `labkit grade run`s (with their own runs, `--jobs-runs`, default 1:
each is `--jobs-rows` submissions long): N copies of the notebook (`--jobs-rows`, default 20,
the issue's number; 0 leaves them out) graded with `--jobs 1` and with `--jobs 2`, in turn,
as seconds per submission, and their ratio (on 2 free cores, at best 0.5x). `--jobs-only`
prints just these.

`ROWS` maps a row name to a function taking the list of submission notebooks and returning
seconds per submission.
"""

import argparse
import json
import os
import statistics
import sys
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_NOTEBOOK = os.path.join(ROOT, "instructor", "labs", "02-cgroups-lab.ipynb")


def grade_one(kind: str, notebook_path: str) -> float:
    """Seconds to run one submission's cells in a fresh sandbox of `kind`."""
    import nbformat
    from nbclient import NotebookClient

    from labkit.grading.sandbox import Sandbox, SandboxLimits

    notebook = nbformat.read(notebook_path, as_version=4)
    started = time.perf_counter()
    with Sandbox(kind=kind, limits=SandboxLimits(memory="2g", pids=512, cpus=1.0, wall_seconds=600)) as box:
        NotebookClient(notebook, km=box.kernel_manager(kernel_name="labkit"), timeout=120, allow_errors=True,
                       resources={"metadata": {"path": str(box.scratch)}}).execute()
    return time.perf_counter() - started


def sandbox_only() -> float:
    from labkit.grading.sandbox import Sandbox

    started = time.perf_counter()
    with Sandbox(kind="namespaces"):
        pass
    return time.perf_counter() - started


ROWS = {
    "none": lambda notebooks: [grade_one("none", n) for n in notebooks],
    "namespaces": lambda notebooks: [grade_one("namespaces", n) for n in notebooks],
}


def grade_run(jobs: int, notebook_path: str, copies: int) -> float:
    """Seconds per submission for `labkit grade run --jobs JOBS` on `copies` submissions."""
    import shutil
    import tempfile

    from labkit.cli import main as labkit

    with tempfile.TemporaryDirectory(prefix="labkit-bench-grade-") as folder:
        paths = []
        for number in range(copies):
            path = os.path.join(folder, f"student{number:02d}.ipynb")
            shutil.copy(notebook_path, path)
            paths.append(path)
        started = time.perf_counter()
        code = labkit(["grade", "run", notebook_path, *paths, "--out", os.path.join(folder, "grades"),
                       "--jobs", str(jobs)])
        taken = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"labkit grade run --jobs {jobs} failed ({code})")
    return taken / copies


def measured(functions, runs, warmup, heading, numerator, denominator, goal) -> tuple:
    """Call `functions` in turn; print their rows under `heading` and numerator/denominator."""
    taken = timing.in_turn(functions, runs, warmup)
    rows = {name: timing.summary(seconds) for name, seconds in taken.items()}
    ratio = rows[numerator]["median_ms"] / rows[denominator]["median_ms"]
    print(f"{heading} ({runs} run(s) in turn, load {timing.load_average()[0]:.2f}):")
    for name, row in rows.items():
        print(f"  {name:28} median {row['median_ms'] / 1000:7.3f} s   p90 {row['p90_ms'] / 1000:7.3f} s")
    print(f"  {numerator} / {denominator}: {ratio:.2f}x ({goal})")
    return rows, ratio


def jobs_rows(options) -> dict:
    notebook = (options.notebook or [DEFAULT_NOTEBOOK])[0]
    functions = {f"jobs {jobs}": (lambda jobs=jobs: grade_run(jobs, notebook, options.jobs_rows)) for jobs in (1, 2)}
    rows, ratio = measured(functions, options.jobs_runs, 0, f"labkit grade run on {options.jobs_rows} submissions "
                           f"of {os.path.basename(notebook)}, seconds per submission", "jobs 2", "jobs 1",
                           "at best 0.5x on 2 free cores")
    return {"rows": rows, "ratio": ratio, "submissions": options.jobs_rows, "notebook": notebook}


def sandbox_rows(options) -> dict:
    notebooks = options.notebook or [DEFAULT_NOTEBOOK]
    functions = {name: (lambda row=row: statistics.fmean(row(notebooks))) for name, row in ROWS.items()}
    functions["namespaces (sandbox only)"] = sandbox_only
    rows, ratio = measured(functions, options.runs, options.warmup,
                           f"seconds per submission ({len(notebooks)} notebook(s))", "namespaces", "none",
                           "goal <= 1.25x")
    return {"rows": rows, "ratio": ratio, "notebooks": notebooks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--notebook", action="append", help="a submission to run (repeatable); default: "
                        "the cgroups lab's source")
    parser.add_argument("--quick", action="store_true", help="2 runs, no warm-up (a smoke test)")
    parser.add_argument("--json", help="also write the rows and raw samples to this file")
    parser.add_argument("--jobs-rows", type=int, default=20, metavar="N", help="submissions in the --jobs 2 vs "
                        "--jobs 1 rows (default 20, the issue's; 0 leaves those rows out)")
    parser.add_argument("--jobs-runs", type=int, default=1, help="runs of each --jobs row (default 1)")
    parser.add_argument("--jobs-only", action="store_true", help="only the --jobs 2 vs --jobs 1 rows")
    options = parser.parse_args()
    if options.quick:
        options.runs, options.warmup = 2, 0
    if options.jobs_rows < 0 or (options.jobs_only and options.jobs_rows == 0):
        sys.exit("--jobs-rows: give a number of submissions (at least 1 with --jobs-only)")
    if os.geteuid() != 0:
        sys.exit("benchmarks/grading.py needs root (the sandbox makes namespaces and cgroups)")
    from labkit.kernelspec import install

    install(prefix=sys.prefix)   # the kernel the sandbox starts: this Python's
    report = {"load": timing.load_average()}
    if not options.jobs_only:
        report["sandbox"] = sandbox_rows(options)
    if options.jobs_rows:
        report["jobs"] = jobs_rows(options)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
