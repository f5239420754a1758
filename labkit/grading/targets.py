"""What a probe looks at: a running container (by name or object), a stored Result, or a
variable the student set in the notebook, resolved when the check runs, not when the
check cell is written. Polling for state that takes a moment to appear."""

import time

from labkit.grading.checks import Observation, ProbeFailed


class Answer:
    """A notebook variable, read when the check runs: `Answer("box_pid")`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Answer({self.name!r})"

    def value(self):
        namespace = _user_namespace()
        if self.name not in namespace:
            raise ProbeFailed(f"`{self.name}` is not set: run your answer cell above first")
        return namespace[self.name]


def _user_namespace() -> dict:
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is not None:
        return shell.user_ns
    import __main__

    return vars(__main__)


def value_of(target):
    return target.value() if isinstance(target, Answer) else target


def running_container(target):
    """A Container of this kernel that is running now."""
    from labkit.runtime import Container, get

    target = value_of(target)
    if isinstance(target, str):
        try:
            target = get(target)
        except Exception:
            raise ProbeFailed(f"no running container named {target!r} in this notebook") from None
    if not isinstance(target, Container):
        raise ProbeFailed(f"expected a container, found {type(target).__name__}")
    if target.state != "running" or target.result is not None:
        raise ProbeFailed(f"container {target.name} is not running ({target.result.cause if target.result else target.state})")
    return target


def finished_result(target):
    """A Result (what `%%container --out NAME` stores)."""
    from labkit.runtime import Result

    target = value_of(target)
    if not isinstance(target, Result):
        name = target.name if isinstance(target, Answer) else repr(target)
        raise ProbeFailed(f"expected the Result of a finished container, found {type(target).__name__} {name}")
    return target


def is_result(target) -> bool:
    from labkit.runtime import Result

    return isinstance(value_of(target), Result)


def poll(look, deadline: float, interval: float = 0.1) -> Observation:
    """Call `look()` until it passes or `deadline` seconds have gone; the last look counts."""
    end = time.monotonic() + deadline
    while True:
        seen = look()
        if seen.passed or time.monotonic() >= end:
            return seen
        time.sleep(interval)
