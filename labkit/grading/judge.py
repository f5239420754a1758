"""The grader judges a grade cell itself, from outside the student's kernel.

`judge_cell` reads the cell's source as data (labkit.grading.cell_source: only literals
and `Answer("variable")`), builds the probes in the grader's own process and runs them
against the sandbox: its processes and cgroups (every one must be inside it), its image
store, its network namespace, the kernel's log and what the grader saw while the cells
ran (labkit.grading.evidence). An `Answer` is the repr the kernel sends of a variable,
read as a literal: never an object, never unpickled.
"""

import ast
import os

from labkit.files import read_regular
from labkit.grading import probes
from labkit.grading.cell_source import AnswerRef, parse_answer, parse_check
from labkit.grading.checks import Expectation, Observation, ProbeFailed, Report, run_checks
from labkit.grading.evidence import candidate_cgroups, in_labkit_subtree, kernel_events, owned
from labkit.grading.targets import (Answer, Finished, Process, cgroup_from_path, cgroup_of_pid, first_process,
                                    in_root, labkit_runtime_ancestor, namespace_pids,
                                    process_by_id, reset_world, running_words, using_world)
from labkit.images.store import Store    # imported here: read_inside's thread may import nothing

PROBES = frozenset(name for name in probes.__all__ if name != "Answer")


def parse(cell_source: str, where: str):
    return parse_check(cell_source, where, PROBES)


def judge_cell(call, world) -> Report:
    """Run a parsed check cell's expectations in this process, in `world`."""
    expectations = [Expectation(e.name, e.points, _probe(e.probe), e.hint, e.id) for e in call.expectations]
    token = using_world(world)
    try:
        return run_checks(call.title, expectations, quiet=False)
    finally:
        reset_world(token)


def _probe(call):
    factory = getattr(probes, call.name)
    args = [_argument(a) for a in call.args]
    kwargs = {k: _argument(v) for k, v in call.kwargs.items()}
    return lambda: factory(*args, **kwargs)()


def _argument(value):
    if isinstance(value, AnswerRef):
        return Answer(value.name)
    return value


class GraderWorld:
    """Names resolved by the grader in the sandbox `box`; `ask(name)` fetches the repr of a
    notebook variable from the kernel (or raises ProbeFailed)."""

    def __init__(self, box, ask, watch):
        self.box, self.ask, self.watch = box, ask, watch
        self.reference = box.pid or "self"

    # --- answers ------------------------------------------------------------------------

    def answer(self, name):
        value, attribute = self.ask(name)
        for text in (value, attribute):
            if text is None:
                continue
            try:
                return parse_answer(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        raise ProbeFailed(f"`{name}` is not a value the grader can read (a name, a number, a path, "
                          "or an object with a .name)")

    # --- processes --------------------------------------------------------------------------

    def _owns_cgroup(self, cgroup) -> bool:
        return owned(self.box, cgroup)

    def host_pid(self, pid: int) -> int | None:
        """The host PID of the process the notebook knows as `pid` (PIDs the kernel sees
        are in the sandbox's PID namespace); None if the sandbox has no such process."""
        if not self.box.pid:
            return pid if self.box.owns_pid(pid) else None
        level = len(namespace_pids(self.box.pid)) - 1
        for host in self.box.pids():
            try:
                seen = namespace_pids(host)
            except OSError:
                continue
            if len(seen) > level and seen[level] == pid and self.box.owns_pid(host):
                return host
        return None

    def process(self, target) -> Process:
        if isinstance(target, str) and not target.startswith("/") and not target.isdigit():
            return self._container(target)
        if isinstance(target, int) and not isinstance(target, bool) or isinstance(target, str) and target.isdigit():
            host = self.host_pid(int(target))
            if host is None:
                raise ProbeFailed(f"no process {target} is running in this submission")
            self._refuse_labkit_container(host, target)
            target = host
        elif isinstance(target, str) and target.startswith("/"):
            return self._cgroup(target)
        process = process_by_id(target, self.box.owns_pid, self._owns_cgroup)
        if process.cgroup is not None and not self._owns_cgroup(process.cgroup):
            raise ProbeFailed(f"{process.label} is not in this submission's cgroups")
        return process

    def _refuse_labkit_container(self, host: int, given) -> None:
        """A PID answer names a process the student made by hand (lab 1's unshare, lab 2's
        cgroup, lab 4's pair, the capstone's own runtime); a labkit container is named by
        its name. So a process labkit's runtime made is refused, however it is given: the
        watch saw it in a container's cgroup, the kernel has it in labkit's cgroup subtree,
        or labkit's helper (or a monitor, a slot) is among its ancestors."""
        sighting = self.watch.container_that_had(host)
        if sighting is None and not in_labkit_subtree(self.box, host) \
                and labkit_runtime_ancestor(host, self.box.owns_pid) is None:
            return
        which = f"labkit container {sighting.name!r}" if sighting is not None and sighting.name else "a labkit container"
        raise ProbeFailed(f"process {given} belongs to {which}: labkit's runtime made it, and this check "
                          "wants a process you made yourself")

    def _container(self, name) -> Process:
        self.watch.look()
        for sighting in reversed(self.watch.named(name)):
            for cgroup in candidate_cgroups(self.box, sighting.cgroup):
                if not (cgroup.exists() and self._owns_cgroup(cgroup)):
                    continue
                pid = first_process([p for p in cgroup.pids() if self.box.owns_pid(p)])
                if pid is None:
                    continue
                real = cgroup_of_pid(pid)
                if not self._owns_cgroup(real):
                    continue
                return Process(f"container {name}", pid, real)
        raise ProbeFailed(f"no running container named {name!r} in this submission")

    def _cgroup(self, path) -> Process:
        """A cgroup path as the notebook sees it (the sandbox's cgroup namespace) or as the
        host does; it must be the sandbox's, with a process of the sandbox's in it."""
        relative = next(iter(cgroup_from_path(path).values()), path)
        for cgroup in candidate_cgroups(self.box, relative):
            if not (cgroup.exists() and self._owns_cgroup(cgroup)):
                continue
            pid = first_process([p for p in cgroup.pids() if self.box.owns_pid(p)])
            if pid is not None:
                return Process(f"cgroup {path}", pid, cgroup)
        raise ProbeFailed(f"no cgroup {path} with a process in it in this submission")

    def finished(self, target) -> Finished:
        if not (isinstance(target, str) and not target.startswith("/") and not target.isdigit()):
            process = self.process(target)
            stats = process.cgroup.stats()
            return Finished(process.label, True, stats.oom_kills, stats.pids_limit_hits, stats.throttled_periods or 0,
                            [running_words(process, stats)])
        self.watch.look()
        self.watch.count()
        sightings = self.watch.named(target)
        if not sightings:
            return Finished(f"container {target}", False)
        last = sightings[-1]
        # While its cgroup is there its counters (just read) are the kernel's word; once it
        # is gone, the log speaks for it (evidence.kernel_events says by which name).
        oom, forks, lines = (0, 0, []) if self.watch.cgroup_of(last) else kernel_events(self.box, last)
        ran = last.ran or bool(oom or forks)
        return Finished(f"container {target}", ran, max(last.oom_kills, oom), max(last.pids_limit_hits, forks),
                        last.throttled_periods, lines)

    # --- images, network, paths --------------------------------------------------------------

    def image(self, name):
        """The image by that name in the sandbox's store, read as it is (nothing built
        there, never busybox on first use); call it inside read_inside."""
        return Store(self.box.home).image(name)

    def read_inside(self, fn, *args):
        """fn(*args) in a thread of the grader whose root is the sandbox's and whose working
        directory is its scratch (targets.in_root): the sandbox's store, its paths and the
        notebook's relative paths resolve as the kernel sees them, and a symlink the student
        planted in them (to the host's image store, say) leads nowhere outside. The watch
        first takes the evidence of any image that appeared since its last tick."""
        try:
            self.watch.look_at_images()
        except Exception:  # noqa: BLE001 — no evidence taken: a commit check fails closed
            pass
        if not self.box.pid:
            return fn(*args)
        return in_root(self.box.pid, fn, *args, cwd=str(self.box.scratch))

    def file_of(self, pid, path: str, most: int) -> bytes:
        """At most `most` bytes of the regular file at `path` as process `pid` sees it, read
        in its root (an absolute symlink there is its, never the host's)."""
        return in_root(pid, read_regular, path, most)

    def in_netns(self, fn, *args):
        return self.box.in_netns(fn, *args)

    def committed_container(self, made_from: dict, layer: str) -> tuple:
        """(whether that container ran in this sandbox, whether the watch saw a manifest
        naming it commit `layer`, the digest its read-write layer had then or None)."""
        sighting = self.watch.sightings.get(str(made_from.get("id")))
        if sighting is None or not sighting.ran:
            return False, False, None
        seen = self.watch.commit_seen(layer, sighting.id)
        return True, seen is not None, seen.upper if seen else None


def read_answer(client, name: str, timeout: float) -> tuple:
    """(repr of the variable, repr of its .name) as the kernel sends them, each None if it
    could not; never the object itself. `client` is nbclient's NotebookClient."""
    if not name.isidentifier():
        raise ProbeFailed(f"{name!r} is not a variable name")
    msg_id = client.kc.execute("", silent=True, store_history=False,
                               user_expressions={"value": f"repr({name})", "name": f"repr({name}.name)"})
    try:
        reply = _reply(client, msg_id, timeout)
    except TimeoutError:
        raise ProbeFailed(f"the kernel did not answer with `{name}` within {timeout:g} s") from None
    expressions = reply.get("content", {}).get("user_expressions", {}) or {}
    if expressions.get("value", {}).get("status") == "error" and expressions["value"].get("ename") == "NameError":
        raise ProbeFailed(f"`{name}` is not set: run your answer cell above first")
    return tuple(_text(expressions.get(key)) for key in ("value", "name"))


def _text(expression):
    if not isinstance(expression, dict) or expression.get("status") != "ok":
        return None
    text = (expression.get("data") or {}).get("text/plain")
    if not isinstance(text, str) or len(text) > 1 << 16:
        return None
    try:
        value = ast.literal_eval(text)      # text/plain of repr(x) is the repr of that string
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _reply(client, msg_id, timeout):
    from nbclient.exceptions import DeadKernelError

    try:
        return client.wait_for_reply(msg_id)     # within the client's cell timeout
    except DeadKernelError:
        raise ProbeFailed("the kernel died") from None
