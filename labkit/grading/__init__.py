"""Graded labs: checks against real kernel state, in nbgrader's format.

For lab authors, a check cell reads like a list of expectations:

    from labkit.grading import check, expect, probes
    check("hostname",
        expect("box is in its own PID, net and IPC namespaces", 2, probes.own_namespaces("box"),
               hint="Which namespaces does %container run make by default?"),
        expect("its hostname is lab", 1, probes.hostname("box", "lab"),
               hint="Look at the options of %container run."),
    )

`check` never raises and never writes to stderr; its value displays the score (nbgrader's
partial credit), a pass/fail table with hints, and every check as JSON. `progress()`
ends a lab. Instructors use `labkit grade release` and `labkit grade run`.
"""

from labkit.grading import probes
from labkit.grading.checks import MIME, Expectation, Observation, ProbeFailed, Report, expect
from labkit.grading.session import check, progress
from labkit.grading.targets import Answer
from labkit.grading.tidy import tidy

__all__ = ["MIME", "Answer", "Expectation", "Observation", "ProbeFailed", "Report", "check", "expect",
           "probes", "progress", "tidy"]
