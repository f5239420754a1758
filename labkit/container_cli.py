"""`labkit exec | logs | stop | kill | rm | inspect | stats | top`: the container verbs of
the command line, with Docker's spellings and exit codes (labkit.verbs.CONTAINER_VERBS,
the table `%container` reads too).

A container started with `labkit run -d` belongs to its monitor (runtime/client/monitor.py):
these verbs ask it (exec, signals, stop, remove) or read what it and the helper wrote
(logs, inspect, stats). A container of a notebook kernel is read here (logs, inspect,
stats, top), and managed from its kernel.

Exit codes as Docker's CLI: the command's own for `exec` (126: it cannot be run, 127: not
found); 125 for labkit's own errors (no such container, a bad option); 1 when one of several
containers could not be handled (the others are).
"""

import json
import sys
import time

from labkit.errors import ConfigError, ContainerError, LabkitError
from labkit.verbs import USAGE_EXIT


class NoSuchContainer(ConfigError):
    """Docker: "No such container"; exits USAGE_EXIT (125) as podman does."""


class Refused(ConfigError):
    """What the container's monitor would not do (exec in an exited container, rm of a
    running one without -f): USAGE_EXIT (125), as podman's "container state improper"."""


def ask(state: dict, op: str, fds=(), **fields) -> dict:
    from labkit.runtime.client import monitor

    try:
        return monitor.call(state, op, fds, **fields)
    except ContainerError as error:
        raise Refused(str(error)) from None


def lookup(reference: str) -> dict:
    from labkit.runtime.client.state import find_container, host_containers

    try:
        found = find_container(reference)
    except ContainerError as error:
        raise NoSuchContainer(f"no such container: {error}") from None
    for state in host_containers():   # its true status (running, exited, orphaned)
        if state.get("id") == found.get("id"):
            return {**found, "status": state["status"]}
    return found


def _command(options) -> list:
    command = list(options.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError(f"{options.verb} needs a command after the container, e.g. "
                          f"labkit exec {options.target} ps")
    return command


def each(targets, action) -> int:
    """`action(state)` for each target, as `docker stop a b`: an error is one line, the
    others go on, and the exit code is 1 if any failed (125 if it was the only one)."""
    failed = 0
    for target in targets:
        try:
            action(lookup(target))
        except LabkitError as error:
            print(f"labkit: {error}", file=sys.stderr)
            failed += 1
        else:
            print(target)
    if not failed:
        return 0
    return USAGE_EXIT if len(targets) == 1 else 1


# --- verbs -----------------------------------------------------------------------------


def cmd_exec(options) -> int:
    state = lookup(options.target)
    command = _command(options)
    fields = {"command": command, "env": options.env, "workdir": options.workdir, "user": options.user,
              "tty": options.tty}
    if options.tty:
        from labkit.terminal import PtyRelay

        with PtyRelay(interactive=options.interactive) as relay:
            answer = ask(state, "exec", [relay.slave] * 3, fd_names=["stdin", "stdout", "stderr"],
                                  after_send=relay.close_slave, **fields)
            relay.finish()
    else:
        names = (["stdin"] if options.interactive else []) + ["stdout", "stderr"]
        fds = ([0] if options.interactive else []) + [1, 2]
        answer = ask(state, "exec", fds, fd_names=names, **fields)
    if answer.get("setup_error"):
        print(f"labkit: exec in {state.get('name')}: {answer['setup_error']}", file=sys.stderr)
    return answer["status"]


def cmd_logs(options) -> int:
    from labkit.runtime.client.log_reader import follow, last_lines
    from labkit.runtime.container_dir import ContainerDir

    state = lookup(options.target)
    directory = ContainerDir(state["dir"])
    streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}

    def write(name, data):
        streams[name].write(data)
        streams[name].flush()

    for name in streams:
        write(name, last_lines(directory.logs(name), options.tail))
    if options.follow:
        follow(directory, write, running=lambda: _running(state, directory))
    return 0


def _running(state, directory) -> bool:
    from labkit.runtime.client.monitor import read_record

    record = read_record(state)
    if record is not None:
        return record["State"]["Running"]
    current = directory.read_state()
    return current is not None and current.get("status") != "exited"


def cmd_stop(options) -> int:
    return each(options.targets, lambda state: ask(state, "stop", grace=options.time))


def cmd_kill(options) -> int:
    from labkit.runtime.client.inspect import signal_number

    number = signal_number(options.signal)   # a bad one: before any container is touched
    return each(options.targets, lambda state: ask(state, "signal", signal=number))


def cmd_rm(options) -> int:
    return each(options.targets, lambda state: remove(state, options.force))


def remove(state: dict, force: bool) -> None:
    """Ask its monitor to remove it; one whose owner is gone is swept as `labkit gc` would."""
    if state.get("status") == "orphaned":
        from labkit.runtime import gc

        gc()
        return
    ask(state, "remove", force=force, timeout=60)


def cmd_inspect(options) -> int:
    records, failed = [], 0
    for target in options.targets:
        try:
            records.append(describe(lookup(target)))
        except LabkitError as error:
            print(f"labkit: {error}", file=sys.stderr)
            failed += 1
    print(json.dumps(records, indent=4))
    return 0 if not failed else USAGE_EXIT if len(options.targets) == 1 else 1


def describe(state: dict) -> dict:
    from labkit.runtime.client.inspect import from_state
    from labkit.runtime.client.monitor import read_record

    record = read_record(state)
    if record is None:
        return from_state(state)
    if state.get("status") == "orphaned":
        record["State"].update(Status="dead", Running=False, Dead=True)
    return record


def cmd_stats(options) -> int:
    """NAME, CPU %, memory (of its limit), pids: sampled twice, a second apart (the CPU
    share needs two readings); again every second until ^C unless --no-stream."""
    from labkit.runtime.client.state import host_containers

    if options.targets:
        states = [lookup(target) for target in options.targets]
    else:
        states = [state for state in host_containers() if state["status"] == "running"]
    clear = sys.stdout.isatty() and not options.no_stream
    before = _samples(states)
    while True:
        time.sleep(1.0)
        after = _samples(states)
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(f"{'NAME':24} {'CPU %':>7} {'MEM USAGE / LIMIT':>24} {'PIDS':>5}")
        for state in states:
            print(_stats_row(state, before.get(state["id"]), after.get(state["id"])))
        sys.stdout.flush()
        if options.no_stream:
            return 0
        before = after


def _samples(states) -> dict:
    from labkit.cgroups import host_hierarchy

    samples = {}
    for state in states:
        cgroup = host_hierarchy().open(state.get("cgroup") or f"labkit/{state['id']}")
        try:
            samples[state["id"]] = (time.monotonic(), cgroup.stats()) if cgroup.exists() else None
        except OSError:
            samples[state["id"]] = None
    return samples


def _stats_row(state, before, after) -> str:
    from labkit.units import format_bytes

    name = str(state.get("name"))[:24]
    if not after:
        return f"{name:24} {'--':>7} {'--':>24} {'--':>5}"
    stats = after[1]
    cpu = "--"
    if before and stats.cpu_seconds is not None and before[1].cpu_seconds is not None:
        cpu = f"{100 * (stats.cpu_seconds - before[1].cpu_seconds) / (after[0] - before[0]):.2f}%"
    record = describe(state)
    limit = (record.get("HostConfig") or {}).get("Memory") or 0
    memory = f"{format_bytes(stats.memory_current)} / {format_bytes(limit) if limit else 'unlimited'}"
    return f"{name:24} {cpu:>7} {memory:>24} {stats.pids_current if stats.pids_current is not None else '--':>5}"


def cmd_top(options) -> int:
    from labkit.cgroups import host_hierarchy

    state = lookup(options.target)
    cgroup = host_hierarchy().open(state.get("cgroup") or f"labkit/{state['id']}")
    if state.get("status") != "running" or not cgroup.exists():
        raise ConfigError(f"container {options.target} is not running")
    print(f"{'PID':>8}  COMMAND")
    for pid in cgroup.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        print(f"{pid:>8}  {command}")
    return 0
