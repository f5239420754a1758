"""What every experiment shares: its result record, its check, progress, parameters."""

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field


USER_HZ = os.sysconf("SC_CLK_TCK")


def idle_cpu_seconds() -> float:
    """CPU seconds all CPUs have spent idle since boot (idle + iowait in /proc/stat): read
    before and after a measurement, it tells a busy host from a miss."""
    with open("/proc/stat") as handle:
        fields = handle.readline().split()   # "cpu user nice system idle iowait …"
    return (int(fields[4]) + int(fields[5])) / USER_HZ


@dataclass
class Check:
    """The expected conclusion of an experiment and whether this run bore it out.

    Three verdicts: held (True), did not hold (False: a miss, never hidden), and no
    verdict (None) when the host could not run it (`skipped`) or when other work on the
    host left too little to judge by (`inconclusive`): a busy host is not a miss, and a
    miss is not excused by a busy host elsewhere in the same run.
    """
    claim: str
    held: bool | None             # None when skipped or inconclusive
    detail: str = ""              # the numbers behind the verdict
    skipped: str | None = None    # why it could not run on this host
    inconclusive: str | None = None   # why this run cannot tell (e.g. "the host was busy")

    @classmethod
    def skip(cls, claim: str, reason: str) -> "Check":
        return cls(claim, None, f"skipped: {reason}", reason)

    @classmethod
    def judge(cls, claim: str, misses: list, unjudged: list, detail: str) -> "Check":
        """Any miss makes the claim fail; otherwise points that could not be judged make
        it inconclusive; otherwise it held."""
        if misses:
            return cls(claim, False, "; ".join(misses) + f" ({detail})")
        if unjudged:
            return cls(claim, None, "; ".join(unjudged) + f" ({detail})", inconclusive="the host was busy")
        return cls(claim, True, detail)

    @property
    def status(self) -> str:
        if self.skipped:
            return "skipped"
        if self.inconclusive:
            return "inconclusive"
        return "held" if self.held else "did not hold"

    @property
    def missed(self) -> bool:
        """True only for a real miss (not for a skip or an inconclusive run)."""
        return self.held is False

    def __str__(self):
        # No numbers here: notebooks print this and nbval compares it run after run.
        if self.skipped:
            return f"{self.claim}\nskipped: {self.skipped}"
        if self.inconclusive:
            return f"{self.claim}\ninconclusive: {self.inconclusive}"
        return f"{self.claim}\nheld: {self.held}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"status": self.status}

    @classmethod
    def from_dict(cls, data: dict) -> "Check":
        return cls(data["claim"], data["held"], data.get("detail", ""), data.get("skipped"),
                   data.get("inconclusive"))


@dataclass
class ExperimentResult:
    """Raw measurements of one run: enough to plot and check without running again."""
    experiment: str
    params: dict
    data: dict = field(default_factory=dict)
    skipped: str | None = None    # the reason, when the host cannot run it
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def new_result(name: str, params) -> ExperimentResult:
    return ExperimentResult(name, dataclasses.asdict(params))


def finished(result: ExperimentResult) -> ExperimentResult:
    result.seconds = round(time.time() - result.started, 3)
    return result


def repeat_trials(name: str, params, one_trial, label: str, progress=None, **data) -> ExperimentResult:
    """The common shape of a run: `params.trials` calls of `one_trial()`, each reported
    to `progress`, kept in order in `result.data["trials"]` (beside any `data` given)."""
    result = new_result(name, params)
    result.data.update(data)
    trials = []
    for number in range(1, params.trials + 1):
        trials.append(one_trial())
        report(progress, number, params.trials, label)
    result.data["trials"] = trials
    return finished(result)


# --- progress -------------------------------------------------------------------------

def report(progress, done: int, total: int, label: str = "") -> None:
    """Tell `progress(done, total, label)` about a finished trial, if anyone listens."""
    if progress is not None:
        progress(done, total, label)


def text_progress(name: str, stream=None):
    """A progress callback that rewrites one text line: `namespace_cost  12/40  net`."""
    stream = stream or sys.stderr

    # A log file (CI, a redirect) gets only the finished line, not every rewrite of it.
    rewriting = getattr(stream, "isatty", lambda: False)()

    def show(done, total, label=""):
        finished = done >= total
        if not (rewriting or finished):
            return
        start, end = ("\r" if rewriting else ""), ("\n" if finished else "")
        stream.write(f"{start}{name:16} {done:4}/{total:<4} {label:40.40}{end}")
        stream.flush()
    return show


def widget_progress(name: str):
    """labkit.widgets' progress bar (a widget in a notebook, a text bar elsewhere), made
    on the first report because only then is the number of trials known."""
    try:
        from labkit.widgets import progress as make_bar
    except ImportError:
        return text_progress(name)
    bar = None

    def show(done, total, label=""):
        nonlocal bar
        if bar is None:
            bar = make_bar(total, name)
        bar.update(done - bar.done)
        if done >= total:
            bar.close()
    return show


# --- parameters -----------------------------------------------------------------------

def parse_params(params_class, overrides: dict, trials: int | None = None):
    """Params from `-p key=value` strings, each converted to the type of its default."""
    defaults = params_class()
    names = {f.name for f in dataclasses.fields(params_class)}
    values = {}
    for key, text in overrides.items():
        if key not in names:
            raise ValueError(f"{params_class.__module__.rsplit('.', 1)[-1]} has no parameter {key!r}; "
                             f"its parameters are {', '.join(sorted(names))}")
        values[key] = _convert(text, getattr(defaults, key), key)
    if trials is not None:
        if "trials" not in names:
            raise ValueError("this experiment has no trials parameter")
        values["trials"] = trials
    return dataclasses.replace(defaults, **values)


def _convert(text: str, default, key: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        if isinstance(default, tuple):
            item = type(default[0]) if default else str
            return tuple(item(part) for part in text.split(",") if part)
        if default is None:
            return text
        return type(default)(text)
    except ValueError:
        raise ValueError(f"parameter {key}={text!r} is not a {type(default).__name__} "
                         f"(default {default!r})") from None


# --- small statistics -----------------------------------------------------------------

def vm_unavailable(params) -> str | None:
    """Why an experiment's VM row cannot run here (its `vm` parameter off, or what
    `labkit.vm.status()` says is missing), or None when it can."""
    if not params.vm:
        return "left out by the vm=False parameter"
    try:
        from labkit.vm import status
    except ImportError as error:
        return f"labkit.vm is not installed here ({error})"
    state = status()
    return None if state.can_run else "; ".join(state.missing)


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def quartiles(values) -> tuple:
    """(25th, 75th) percentile: the spread bars in the figures."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


# --- containers that always go away --------------------------------------------------

@contextlib.contextmanager
def running(spec=None, **fields):
    """A detached container, removed (killed first if needed) however the block ends."""
    from labkit.runtime import Container, ContainerSpec

    container = Container(spec or ContainerSpec(**fields))
    try:
        container.start(detach=True)
        yield container
    finally:
        container.remove()
