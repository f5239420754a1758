"""`exec` on the caller's side: one more process in a running container, asked of the
helper with an ExecPlan, its output read and its end turned into a Result.

Runs in the caller. The helper forks the exec's supervisor (runtime/supervisor/exec.py),
which joins the container's cgroup and namespaces and execs the command as the
container's own first process would.
"""

import os
import time

from labkit.errors import ContainerError
from labkit.runtime import plan as launch
from labkit.runtime.client.result import Result, describe_setup_error
from labkit.runtime.client.streams import OutputStreams
from labkit.runtime.protocol import Op


class ExecProcess:
    """One `exec` into a running container: same pipes and events as a container."""

    def __init__(self, container, command, env, workdir, user, timeout, tty=False):
        self.container = container
        self.id = os.urandom(8).hex()
        self.plan = launch.ExecPlan(target=container.id, namespaces=list(container.spec.namespaces),
                                    process=container._process_plan(command, env, workdir, user, tty))
        self.timeout = timeout

    def run(self, on_output, stdio=None) -> Result:
        """`stdio`: {name: fd} handed to the process as they are (`labkit exec`'s own),
        instead of pipes read into the Result."""
        helper = self.container._helper
        streams = OutputStreams(on_output)
        names, fds = [], []
        for name in ("stdin", "stdout", "stderr"):
            if stdio and stdio.get(name) is not None:
                names.append(name)
                fds.append(stdio[name])
            elif name != "stdin" and not stdio:
                names.append(name)
                fds.append(streams.pipe(name))
        started = time.monotonic()
        try:
            helper.send(Op.EXEC, fds, id=self.id, plan=launch.to_wire(self.plan), fd_names=names)
        finally:
            streams.close_handed_over()
        deadline = None if self.timeout is None else started + self.timeout
        exited, timed_out = None, False
        try:
            while streams.open:
                streams.pump(0.25)
                failed = helper.take(self.id, (Op.FAILED,))
                if failed:
                    streams.close()
                    raise ContainerError(f"exec in {self.container.name} failed: {failed['error']}")
                if deadline and time.monotonic() > deadline:
                    timed_out = True
                    break
            while exited is None:
                if timed_out:
                    helper.send(Op.KILL, id=self.id)
                exited = helper.wait_for(self.id, (Op.EXITED,), timeout=0.5)
                if exited and exited["op"] == Op.FAILED:
                    raise ContainerError(f"exec in {self.container.name} failed: {exited['error']}")
        except KeyboardInterrupt:
            helper.send(Op.KILL, id=self.id)
            helper.wait_for(self.id, (Op.EXITED,), timeout=10)
            streams.close()
            raise
        streams.drain()
        error = exited.get("error")
        result = Result.from_status(exited["status"], name=self.container.name, command=self.plan.process.command,
                                    stdout=streams.text("stdout"), stderr=streams.text("stderr"),
                                    duration=time.monotonic() - started, timed_out=timed_out,
                                    error=describe_setup_error(error) if error else None)
        if error and error.get("exit_code"):
            result.exit_code, result.signal = error["exit_code"], None
        streams.close()
        return result
