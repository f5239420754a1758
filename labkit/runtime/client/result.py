"""Result: what a finished container did (exit, output, resources), with a readable repr.

Built in the caller from the helper's `exited` message and the output the caller read."""

import os
import signal as signals
from dataclasses import dataclass, field

from labkit.errors import ContainerError
from labkit.units import format_bytes


@dataclass
class Result:
    name: str
    command: list
    exit_code: int | None = None      # None when killed by a signal
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0             # seconds, request to exit
    startup: float | None = None      # seconds, request to exec of the command
    memory_peak: int | None = None    # bytes
    memory_limit: int | None = None
    cpu_seconds: float | None = None
    oom_killed: bool = False
    timed_out: bool = False
    interrupted: bool = False
    error: str | None = None          # setup failed: which step and why
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: int, **fields) -> "Result":
        if os.WIFSIGNALED(status):
            return cls(exit_code=None, signal=os.WTERMSIG(status), **fields)
        return cls(exit_code=os.WEXITSTATUS(status), **fields)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.oom_killed or self.timed_out or self.interrupted or self.error)

    @property
    def cause(self) -> str:
        """In words: exited 0, OOM-killed, killed by SIGKILL, timed out, setup failed."""
        if self.error:
            return "setup failed"
        if self.timed_out:
            return "timed out"
        if self.interrupted:
            return "interrupted"
        if self.oom_killed:
            return "OOM-killed"
        if self.signal is not None:
            return f"killed by {signals.Signals(self.signal).name}"
        return f"exited {self.exit_code}"

    @property
    def returncode(self) -> int:
        """As a shell reports it: the exit code, or 128 + the signal."""
        return self.exit_code if self.exit_code is not None else 128 + (self.signal or 0)

    def check(self) -> "Result":
        """Raise ContainerError unless the command succeeded."""
        if not self.ok:
            detail = f": {self.error}" if self.error else ""
            tail = self.stderr.strip().splitlines()[-3:]
            more = ("\n" + "\n".join(tail)) if tail and not self.error else ""
            raise ContainerError(f"container {self.name} {self.cause}{detail}{more}", self)
        return self

    def __repr__(self):
        peak = format_bytes(self.memory_peak)
        limit = f" of {format_bytes(self.memory_limit)}" if self.memory_limit else ""
        return f"<Result {self.name}: {self.cause}, {self.duration * 1000:.1f} ms, peak memory {peak}{limit}>"

    def _repr_html_(self):
        import html  # here, for notebooks: not in every `labkit run`

        rows = [
            ("command", " ".join(self.command)),
            ("outcome", self.cause),
            ("duration", f"{self.duration * 1000:.1f} ms"),
            ("peak memory", format_bytes(self.memory_peak) + (f" of {format_bytes(self.memory_limit)}" if self.memory_limit else "")),
            ("CPU time", "-" if self.cpu_seconds is None else f"{self.cpu_seconds * 1000:.1f} ms"),
            ("OOM-killed", "yes" if self.oom_killed else "no"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table><caption>container {html.escape(self.name)}</caption>{body}</table>"


def describe_setup_error(error: dict) -> str:
    """The text of a setup failure the helper reported (runtime/step_failure.py's payload)."""
    return error.get("message") or str(error)
