"""`%%container` runs a cell in a fresh container; `%container VERB` manages long-lived ones.

    %%container --memory 64m --hostname lab
    hostname; cat /sys/fs/cgroup/memory/memory.limit_in_bytes

    %container run -d --name web -- httpd -f -p 8080
    %%container exec web
    ps
    %container logs web | stats web | top web | stop web | rm web | commit web IMAGE | ps

Options are `labkit run`'s (labkit.cli.add_container_options), so the CLI and the magic
cannot drift. `{var}` and `$var` in the option line come from the user namespace
(IPython expands them before the magic sees the line).
"""

import argparse
import functools
import os
import shlex
import subprocess
import sys
import sysconfig

from IPython.core.magic import Magics, line_cell_magic, magics_class

from labkit.cli import add_container_options, spec_from_options
from labkit.errors import ConfigError, LabkitError
from labkit.magics.errors import RED, RESET, UsageError

class _HelpShown(Exception):
    """`-h`: argparse printed the help and wants to exit(0); the magic just returns."""


class _Parser(argparse.ArgumentParser):
    # argparse exits the process on bad usage; in a kernel that must be an exception.
    def error(self, message):
        raise UsageError(f"{message}\n{self.format_usage().strip()}")

    def exit(self, status=0, message=None):
        if status:
            raise UsageError((message or "bad usage").strip())
        raise _HelpShown


def _add_outcome_options(parser):
    parser.add_argument("--out", metavar="VAR", help="store the Result in this variable")
    parser.add_argument("--no-raise", action="store_true", help="do not raise ContainerError when the command fails")


def cell_parser():
    parser = _Parser(prog="%%container", description="Run the cell in a fresh container (as a shell script, "
                     "or as Python with --python). `%%container exec NAME` runs it in a running container.")
    add_container_options(parser)
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--shell", help="shell that runs the cell (default: sh)")
    body.add_argument("--python", action="store_true",
                      help="run the cell with this kernel's Python (its files are bind-mounted read-only)")
    _add_outcome_options(parser)
    return parser


def exec_cell_parser():
    parser = _Parser(prog="%%container exec", description="Run the cell inside a running container.")
    parser.add_argument("target", metavar="NAME", help="a container started with %container run -d")
    _add_exec_options(parser)
    parser.add_argument("--shell", default="sh", help="shell that runs the cell (default: sh)")
    _add_outcome_options(parser)
    return parser


def _add_exec_options(parser):
    parser.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", "-w", help="working directory inside")
    parser.add_argument("--user", "-u", help="uid[:gid] or a user name from the image")
    parser.add_argument("--timeout", type=float, help="kill the process after this many seconds")


def line_parser():
    parser = _Parser(prog="%container", description="Manage long-lived containers of this kernel "
                     "(they are removed when the kernel exits).")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    run = verbs.add_parser("run", help="run a command; -d leaves it running")
    add_container_options(run)
    run.add_argument("--detach", "-d", action="store_true", help="start it and return (see logs, exec, stop)")
    _add_outcome_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")

    exec_ = verbs.add_parser("exec", help="run a command inside a running container")
    exec_.add_argument("target", metavar="NAME")
    _add_exec_options(exec_)
    _add_outcome_options(exec_)
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")

    verbs.add_parser("ps", help="this kernel's long-lived containers")
    for verb, text in (("logs", "what it wrote to stdout and stderr"), ("stats", "memory, CPU and pids now"),
                       ("top", "its processes, by host PID"), ("rm", "stop it if needed, then remove it")):
        verbs.add_parser(verb, help=text).add_argument("target", metavar="NAME")
    stop = verbs.add_parser("stop", help="SIGTERM, then SIGKILL after --time seconds")
    stop.add_argument("target", metavar="NAME")
    stop.add_argument("--time", "-t", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    commit = verbs.add_parser("commit", help="turn its read-write layer into a new image")
    commit.add_argument("target", metavar="NAME")
    commit.add_argument("image", metavar="IMAGE")
    commit.add_argument("--message", "-m", default="")
    return parser


def write_output(stream, text):
    """Stream from the kernel's own sys.stdout/sys.stderr: a child's writes to inherited fds
    never reach the notebook under nbval. Flushing sends each chunk as it arrives."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


@functools.lru_cache(maxsize=1)
def python_volumes() -> tuple:
    """(interpreter, ["SRC:DST:ro", …]) that run this kernel's Python inside any image:
    the binary, its standard library, and the directories of the shared libraries the
    binary and its extension modules link (as ldd finds them). Mounted at the host paths,
    so the interpreter finds its prefix and the dynamic loader its libraries."""
    interpreter = os.path.realpath(sys.executable)  # a venv's python is a symlink to this
    stdlib = sysconfig.get_path("stdlib")
    dynload = os.path.join(stdlib, "lib-dynload")
    linked = [interpreter] + ([os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so")]
                              if os.path.isdir(dynload) else [])
    directories = {stdlib} | {os.path.dirname(path) for path in _ldd_paths(linked)}
    kept = []
    for directory in sorted(directories):
        if not any(directory.startswith(parent + "/") for parent in kept):
            kept.append(directory)
    volumes = [f"{interpreter}:{interpreter}:ro"] + [f"{d}:{d}:ro" for d in kept if os.path.isdir(d)]
    return interpreter, volumes


def _ldd_paths(files) -> set:
    try:
        output = subprocess.run(["ldd", *files], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise ConfigError("--python needs ldd (package libc-bin) to find the interpreter's shared libraries") from None
    paths = set()
    for line in output.splitlines():
        for word in line.replace("=>", " ").split():
            if word.startswith("/") and not word.endswith(":"):
                paths.add(word)
    return paths


def _fail_shortly(error):
    """Show a LabkitError as one line (what failed and why), not a trace through the magic."""
    error._render_traceback_ = lambda: [f"{RED}{type(error).__name__}{RESET}: {error}"]
    return error


@magics_class
class ContainerMagics(Magics):
    def __init__(self, shell=None):
        super().__init__(shell)
        # Built once: a cell's round trip should cost the container, not argparse.
        self._cell_parser, self._exec_parser, self._line_parser = cell_parser(), exec_cell_parser(), line_parser()

    @line_cell_magic
    def container(self, line, cell=None):
        """%%container [options] runs the cell in a fresh container; %container -h lists the verbs."""
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except _HelpShown:
            return None
        except LabkitError as error:
            raise _fail_shortly(error) from None

    # --- %%container -----------------------------------------------------------------

    def _cell(self, line, cell):
        words = _split(line)
        if words[:1] == ["exec"]:
            options = self._exec_parser.parse_args(words[1:])
            return self._exec(options, [options.shell, "-c", cell])
        options = self._cell_parser.parse_args(words)
        if options.python:
            interpreter, volumes = python_volumes()
            options.volume = options.volume + volumes
            command = [interpreter, "-u", "-c", cell]  # -u: print() reaches the cell as it happens
        else:
            command = [options.shell or "sh", "-c", cell]
        return self._run(options, command)

    def _run(self, options, command):
        from labkit.runtime import Container

        result = Container(spec_from_options(options, command)).run(on_output=write_output)
        return self._outcome(options, result)

    def _exec(self, options, command):
        from labkit.runtime import get

        result = get(options.target).exec(command, on_output=write_output, env=options.env,
                                          workdir=options.workdir, user=options.user, timeout=options.timeout)
        return self._outcome(options, result)

    def _outcome(self, options, result):
        if options.out:
            self.shell.user_ns[options.out] = result
        if not options.no_raise:
            result.check()

    # --- %container VERB --------------------------------------------------------------

    def _line(self, line):
        options = self._line_parser.parse_args(_split(line))
        return getattr(self, f"_verb_{options.verb}")(options)

    def _verb_run(self, options):
        command = options.command[1:] if options.command[:1] == ["--"] else options.command
        if not options.detach:
            return self._run(options, command)
        from labkit.runtime import Container

        container = Container(spec_from_options(options, command)).start(detach=True)
        if options.out:
            self.shell.user_ns[options.out] = container
        return container

    def _verb_exec(self, options):
        command = options.command[1:] if options.command[:1] == ["--"] else options.command
        if not command:
            raise UsageError("%container exec needs a command after the name, e.g. %container exec web -- ps")
        return self._exec(options, command)

    def _verb_ps(self, options):
        from labkit.display import container_table

        print(container_table())

    def _verb_logs(self, options):
        from labkit.runtime import get

        write_output("stdout", get(options.target).logs())

    def _verb_stats(self, options):
        from labkit.display import stats_line
        from labkit.runtime import get

        print(stats_line(get(options.target)))

    def _verb_top(self, options):
        from labkit.runtime import get

        print(f"{'PID':>8}  COMMAND")
        for pid, command in get(options.target).top():
            print(f"{pid:>8}  {command}")

    def _verb_stop(self, options):
        from labkit.runtime import get

        result = get(options.target).stop(grace=options.time)
        print(f"{options.target}: {result.cause}")

    def _verb_rm(self, options):
        from labkit.runtime import get

        get(options.target).remove()
        print(f"removed {options.target}")

    def _verb_commit(self, options):
        from labkit.runtime import get

        return get(options.target).commit(options.image, message=options.message)


def _split(line):
    try:
        return shlex.split(line)
    except ValueError as error:  # an unclosed quote
        raise UsageError(f"cannot split the option line: {error}") from None
