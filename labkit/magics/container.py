"""`%%container` runs a cell in a fresh container; `%container VERB` manages long-lived ones.

    %%container --memory 64m --hostname lab
    hostname; cat /sys/fs/cgroup/memory/memory.limit_in_bytes

    %container run -d --name web -- httpd -f -p 8080
    %%container exec web
    ps
    %container logs web | stats web | top web | stop web | rm web | commit web IMAGE | ps

Options are `labkit run`'s (labkit.verbs.CONTAINER_OPTIONS, a table neither front end
owns), so the CLI and the magic cannot drift; the verbs are the table
LINE_VERBS. `{var}` and `$var` in the option line come from the user namespace (IPython
expands them before the magic sees the line).
"""

import shlex
import sys

from IPython.core.magic import Magics, line_cell_magic, magics_class

from labkit.errors import LabkitError
from labkit.magics.errors import HelpShown, MagicParser, UsageError, fail_shortly, interrupted_shortly
from labkit.verbs import (
    COMMAND, CONTAINER_OPTIONS, CONTAINER_VERBS, TARGET, Verb, add_container_options, add_options, all_of,
    container_option, one_of, option, parser_for, spec_from_options, with_run,
)

OUTCOME_OPTIONS = (
    option("--out", metavar="VAR", help="store the Result in this variable"),
    option("--no-raise", action="store_true", help="do not raise ContainerError when the command fails"),
)
# `exec` takes these of the container options: the process joins a container already made.
TIMEOUT = container_option("timeout").with_help("kill the process after this many seconds")
EXEC_OPTIONS = (container_option("env"), container_option("workdir"), container_option("user"), TIMEOUT)

# `%container VERB`: each runs ContainerMagics._verb_<name>. The verbs `labkit` has too are
# labkit.verbs.CONTAINER_VERBS, the same table (a cell adds --out/--no-raise to exec).
LINE_VERBS = (
    Verb("run", "run a command; -d leaves it running", options=(
        all_of(CONTAINER_OPTIONS),
        option("--detach", "-d", action="store_true", help="start it and return (see logs, exec, stop)"),
        *OUTCOME_OPTIONS, COMMAND)),
    with_run(CONTAINER_VERBS["exec"], None, TIMEOUT, *OUTCOME_OPTIONS, COMMAND),
    Verb("ps", "this kernel's long-lived containers"),
    *(CONTAINER_VERBS[name] for name in ("logs", "stats", "top", "stop", "kill", "rm", "inspect")),
    Verb("commit", "turn its read-write layer into a new image", options=(
        TARGET, option("image", metavar="IMAGE"), option("--message", "-m", default=""))),
)


def cell_parser():
    parser = MagicParser(prog="%%container", description="Run the cell in a fresh container (as a shell script, "
                         "or as Python with --python). `%%container exec NAME` runs it in a running container.")
    add_container_options(parser, skip=("python",))
    add_options(parser, (one_of(
        option("--shell", help="shell that runs the cell (default: sh)"),
        container_option("python").with_help("run the cell with this kernel's Python "
                                             "(its files are bind-mounted read-only)"),
    ), *OUTCOME_OPTIONS))
    return parser


def exec_cell_parser():
    parser = MagicParser(prog="%%container exec", description="Run the cell inside a running container.")
    add_options(parser, (TARGET.with_help("a container started with %%container run -d"), *EXEC_OPTIONS,
                         option("--shell", default="sh", help="shell that runs the cell (default: sh)"),
                         *OUTCOME_OPTIONS))
    return parser


def line_parser():
    return parser_for(LINE_VERBS, MagicParser, prog="%container", description="Manage long-lived containers "
                      "of this kernel (they are removed when the kernel exits).")


def write_output(stream, text):
    """Stream from the kernel's own sys.stdout/sys.stderr: a child's writes to inherited fds
    never reach the notebook under nbval. Flushing sends each chunk as it arrives."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


# What one cell shows of a container's output. Every character shown is kept by the
# kernel, sent over ZeroMQ and kept again by the browser: a 200 MB output grew the kernel
# from 55 to 279 MB. Jupyter's own guard (iopub_data_rate_limit, 1 MB/s) cuts output and
# says so; this cuts at a size, so the same cell shows the same thing on any machine.
CELL_OUTPUT_LIMIT = 1 << 20   # characters, stdout and stderr together (a notebook may set it)


class CappedOutput:
    """write_output up to `limit` characters; the rest is counted, not kept, and `finish`
    says how much was cut."""

    def __init__(self, limit: int | None = None):
        self.limit = CELL_OUTPUT_LIMIT if limit is None else limit
        self.shown = 0
        self.cut = 0

    def __call__(self, stream, text):
        room = self.limit - self.shown
        if room > 0:
            part = text[:room]
            write_output(stream, part)
            self.shown += len(part)
            text = text[len(part):]
        self.cut += len(text)

    def finish(self):
        if self.cut:
            write_output("stderr", f"\n[labkit: output cut: {self.cut:,} more characters not shown (a cell shows the "
                                   f"first {self.limit:,}); --out VAR keeps the Result, whose stdout and stderr "
                                   "hold up to 16 MiB each]\n")


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
        except HelpShown:
            return None
        except LabkitError as error:
            raise fail_shortly(error) from None
        except KeyboardInterrupt as interrupt:
            # By here labkit has killed and collected what the cell started. IPython's
            # traceback of the interrupt (every frame down to the selector, with source
            # context) took 3.3 s on the host and ~20x that in the emulated VM kernel:
            # most of the stop button's cost. One line says what happened instead.
            raise interrupted_shortly(interrupt) from None

    def completion_parsers(self) -> dict:
        """For Tab (labkit.magics.completion): the parser each magic's line is read with."""
        def cell(line):
            return self._exec_parser if line.split()[1:2] == ["exec"] else self._cell_parser

        return {"%%container": cell, "%container": lambda line: self._line_parser}

    # --- %%container -----------------------------------------------------------------

    def _cell(self, line, cell):
        words = _split(line)
        if words[:1] == ["exec"]:
            options = self._exec_parser.parse_args(words[1:])
            return self._exec(options, [options.shell, "-c", cell])
        options = self._cell_parser.parse_args(words)
        if options.python:  # the spec mounts the kernel's Python and runs it for `python3`
            command = ["python3", "-u", "-c", cell]  # -u: print() reaches the cell as it happens
        else:
            command = [options.shell or "sh", "-c", cell]
        return self._run(options, command)

    def _run(self, options, command):
        from labkit.runtime import Container

        output = CappedOutput()
        try:
            result = Container(spec_from_options(options, command)).run(on_output=output)
        finally:
            output.finish()
        return self._outcome(options, result)

    def _exec(self, options, command):
        from labkit.runtime import get

        output = CappedOutput()
        try:
            result = get(options.target).exec(command, on_output=output, env=options.env,
                                              workdir=options.workdir, user=options.user, timeout=options.timeout)
        finally:
            output.finish()
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
        if not command:   # the image's ENTRYPOINT and CMD, as docker run: say so, since a shell's says nothing
            from labkit.images import get_image

            image = get_image(options.image or "busybox")
            what = image.config.command(None, options.entrypoint)
            if not what:
                raise UsageError(f"%container run: no command, and image {image.name!r} has no ENTRYPOINT or CMD; "
                                 "give one: %container run [OPTIONS] -- CMD ARGS")
            write_output("stderr", f"[labkit: no command given: running the image's {' '.join(what)!r}"
                                   f"{'' if options.detach else ' (a shell with no input exits at once)'}]\n")
        if not options.detach:
            return self._run(options, command)
        from labkit.runtime import Container

        container = Container(spec_from_options(options, command)).start(detach=True)
        if options.out:
            self.shell.user_ns[options.out] = container
        return container

    def _verb_exec(self, options):
        command = options.command[1:] if options.command[:1] == ["--"] else options.command
        if options.tty or options.interactive:
            raise UsageError("%container exec: a notebook cell has no terminal (-t) and no stdin (-i); "
                             "use labkit exec -it in a terminal")
        if not command:
            raise UsageError("%container exec needs a command after the name, e.g. %container exec web -- ps")
        return self._exec(options, command)

    def _verb_ps(self, options):
        from labkit.display import container_table

        print(container_table())

    def _verb_logs(self, options):
        from labkit.runtime import get

        container = get(options.target)
        size, limit = container.log_size(), CELL_OUTPUT_LIMIT
        if options.tail != "all" or options.follow:
            from labkit.runtime.client.log_reader import follow, last_lines

            output = CappedOutput()
            for name in ("stdout", "stderr"):
                output(name, last_lines(container.files.logs(name), options.tail).decode(errors="replace"))
            if options.follow:
                follow(container.files, lambda name, data: output(name, data.decode(errors="replace")),
                       running=lambda: container.poll() == "running")
            output.finish()
        elif size > limit:  # the newest part: what a reader of logs wants, as `docker logs --tail`
            write_output("stderr", f"[labkit: the first {size - limit:,} bytes of the logs are not "
                                   f"shown (a cell shows the last {limit:,}); the whole logs: "
                                   f"{', '.join(str(path) for path in container.log_files())}]\n")
            write_output("stdout", container.logs(last=limit))
        else:
            write_output("stdout", container.logs())

    def _verb_stats(self, options):
        from labkit.display import stats_line
        from labkit.runtime import get, running_containers

        for name in options.targets or running_containers():   # once: a cell is not a terminal to redraw
            print(stats_line(get(name)))

    def _verb_top(self, options):
        from labkit.runtime import get

        print(f"{'PID':>8}  COMMAND")
        for pid, command in get(options.target).top():
            print(f"{pid:>8}  {command}")

    def _verb_stop(self, options):
        from labkit.runtime import get

        for name in options.targets:
            result = get(name).stop(grace=options.time)
            print(f"{name}: {result.cause}")

    def _verb_kill(self, options):
        from labkit.runtime import get
        from labkit.runtime.client.inspect import signal_number

        number = signal_number(options.signal)
        for name in options.targets:
            get(name).signal(number) if number != 9 else get(name).kill()
            print(name)

    def _verb_rm(self, options):
        from labkit.runtime import get

        for name in options.targets:
            get(name).remove()   # a running one is killed first: this kernel's own, -f or not
            print(f"removed {name}")

    def _verb_inspect(self, options):
        import json

        from labkit.runtime import get
        from labkit.runtime.client.inspect import describe

        print(json.dumps([describe(get(name)) for name in options.targets], indent=4))

    def _verb_commit(self, options):
        from labkit.runtime import get

        return get(options.target).commit(options.image, message=options.message)


def _split(line):
    try:
        return shlex.split(line)
    except ValueError as error:  # an unclosed quote
        raise UsageError(f"cannot split the option line: {error}") from None


# `%%container?` and `%container?` show this: every option and verb, from the parsers themselves.
ContainerMagics.container.__doc__ = (
    f"{ContainerMagics.container.__doc__}\n\n"
    f"{cell_parser().format_help()}\n{exec_cell_parser().format_help()}\n{line_parser().format_help()}")
