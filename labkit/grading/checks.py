"""Expectations and the check cell's one displayed result.

A check cell reads like a list of expectations: a name, points, a probe of real state
and a hint for when it fails. `check()` runs every probe and returns a `Report` whose
text/plain is the score (nbgrader reads a grade cell's numeric last value as partial
credit), whose text/html is a pass/fail table, and whose
application/vnd.labkit.checks+json carries every check.

nbgrader scores a grade cell 0 if it raises or writes to stderr, so nothing a probe
does may escape as an exception, a warning or a stray line on stderr.
"""

import contextlib
import html
import io
import re
import warnings
from dataclasses import dataclass, field

MIME = "application/vnd.labkit.checks+json"


@dataclass
class Observation:
    """What a probe saw: did the expectation hold, and what was there (in words).
    `retry`: the probe could not measure honestly (a busy host took the CPU a timing check
    needs); it did not pass, and it is not a wrong answer either: run it again."""
    passed: bool
    observed: str = ""
    retry: bool = False

    def __bool__(self):
        return self.passed


class ProbeFailed(Exception):
    """A probe could not look (no such container, a variable not set): the check fails
    with this message as what was observed, never with a traceback."""


@dataclass
class Expectation:
    name: str
    points: float
    probe: object            # zero-argument callable -> Observation or bool
    hint: str = ""
    id: str = ""


@dataclass
class Outcome:
    id: str
    name: str
    passed: bool
    points: float            # earned
    max_points: float
    hint: str
    observed: str
    retry: bool = False      # not measured (busy host): no points, and not a wrong answer

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "passed": self.passed, "points": self.points,
                "max_points": self.max_points, "hint": "" if self.passed else self.shown_hint(),
                "observed": self.observed, "retry": self.retry}

    def shown_hint(self) -> str:
        return RETRY_HINT if self.retry else self.hint


RETRY_HINT = "Busy host, run again: the host was too busy to measure this, so it is neither right nor wrong yet."


@dataclass
class Report:
    cell: str
    outcomes: list = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(o.points for o in self.outcomes)

    @property
    def max_score(self) -> float:
        return sum(o.max_points for o in self.outcomes)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def unmeasured(self) -> list:
        """The outcomes a busy host kept from being measured (run the cell again)."""
        return [o for o in self.outcomes if o.retry]

    def to_dict(self) -> dict:
        return {"cell": self.cell, "score": self.score, "max_score": self.max_score,
                "checks": [o.to_dict() for o in self.outcomes]}

    def __repr__(self):
        return format_points(self.score)      # text/plain: nbgrader reads it as partial credit

    def __str__(self):
        return report_text(self)

    def _repr_html_(self):
        return report_html(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": repr(self), "text/html": report_html(self), MIME: self.to_dict()}


def expect(name: str, points: float, probe, hint: str = "", id: str = "") -> Expectation:
    """One expectation of a check cell. `hint` is shown only when it fails: say what to
    look at, not the answer."""
    if not callable(probe):
        raise TypeError(f"expectation {name!r}: the probe must be callable, got {type(probe).__name__}")
    if points < 0:
        raise ValueError(f"expectation {name!r}: points must not be negative, got {points}")
    return Expectation(name, float(points), probe, hint, id)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "check"


def evaluate(expectation: Expectation, quiet: bool = True) -> Observation:
    """Run one probe; whatever goes wrong becomes a failed Observation saying what.
    `quiet`: swallow what it prints (in a kernel; the grader's threads must not swap
    sys.stderr under each other)."""
    sink = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(warnings.catch_warnings())
                stack.enter_context(contextlib.redirect_stderr(sink))
                stack.enter_context(contextlib.redirect_stdout(sink))
                warnings.simplefilter("ignore")
            seen = expectation.probe()
    except ProbeFailed as error:
        return Observation(False, str(error))
    except NameError as error:
        name = getattr(error, "name", None) or str(error)
        return Observation(False, f"{name} is not defined: run your answer cell above first")
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 — a check cell must never raise
        return Observation(False, f"could not check: {type(error).__name__}: {error}")
    if isinstance(seen, Observation):
        return seen
    return Observation(bool(seen), "" if isinstance(seen, bool) else repr(seen))


def run_checks(cell: str, expectations, quiet: bool = True) -> Report:
    report = Report(cell)
    used = set()
    for expectation in expectations:
        seen = evaluate(expectation, quiet)
        check_id = expectation.id or slug(expectation.name)
        while check_id in used:
            check_id += "-"
        used.add(check_id)
        report.outcomes.append(Outcome(
            id=f"{cell}.{check_id}", name=expectation.name, passed=seen.passed,
            points=expectation.points if seen.passed else 0.0, max_points=expectation.points,
            hint=expectation.hint, observed=seen.observed, retry=seen.retry and not seen.passed))
    return report


def format_points(value: float) -> str:
    return f"{value:g}"


OBSERVED_CELL = "labkit-observed"   # the class of the observed column's cells (nbval sanitises it)
# How a comparison of stored and executed lab outputs blanks that column (it holds this run's
# values): instructor/labs/conftest.py gives it to nbval, the tests' own comparisons use it too.
OBSERVED_SANITIZE = (rf"(<td class='{OBSERVED_CELL}'[^>]*>)[^<]*(</td>)", r"\1OBSERVED\2")


def report_html(report: Report) -> str:
    """The pass/fail table: each check with the value it judged, and the hint of a failed one."""
    rows = "".join(check_row_html(outcome.to_dict()) for outcome in report.outcomes)
    caption = html.escape(_caption(report))
    return f"<table class='labkit-checks'><caption>{caption}</caption>{CHECKS_HEAD_HTML}{rows}</table>"


CHECKS_HEAD_HTML = ("<tr><th></th><th style='text-align:left'>check</th><th>points</th>"
                    "<th style='text-align:left'>observed</th><th style='text-align:left'>hint</th></tr>")


def check_row_html(check: dict) -> str:
    """One row of a checks table from a check's dict (an Outcome's, or the gradebook's)."""
    passed = bool(check.get("passed"))
    mark, color = ("✔", "#1a7f37") if passed else ("⟳", "#9a6700") if check.get("retry") else ("✘", "#cf222e")
    hint = "" if passed else html.escape(str(check.get("hint", "")))
    return (f"<tr><td style='color:{color};text-align:center'>{mark}</td>"
            f"<td style='text-align:left'>{html.escape(str(check.get('name', '')))}</td>"
            f"<td style='text-align:right'>{format_points(check.get('points', 0))}/"
            f"{format_points(check.get('max_points', 0))}</td>"
            f"<td class='{OBSERVED_CELL}' style='text-align:left'>{html.escape(str(check.get('observed', '')))}</td>"
            f"<td style='text-align:left'>{hint}</td></tr>")


def report_text(report: Report) -> str:
    """The same table in plain text (`print(report)`): a line per check with what it saw."""
    lines = [_caption(report)]
    for outcome in report.outcomes:
        mark = "✔" if outcome.passed else "⟳" if outcome.retry else "✘"
        lines.append(f"{mark} {outcome.name} ({format_points(outcome.points)}/{format_points(outcome.max_points)}): "
                     f"{outcome.observed or 'nothing observed'}")
        if not outcome.passed and outcome.shown_hint():
            lines.append(f"    hint: {outcome.shown_hint()}")
    return "\n".join(lines)


def _caption(report: Report) -> str:
    words = (f"{report.cell}: {report.passed} of {len(report.outcomes)} checks passed, "
             f"{format_points(report.score)} of {format_points(report.max_score)} points")
    if report.unmeasured:
        words += f"; {len(report.unmeasured)} not measured (busy host, run again)"
    return words
