"""Verbs and options as data: the tables `labkit …`, `%container VERB` and `%image VERB`
build their argparse parsers from, so a new verb or flag is one entry in one table.

    VERBS = (
        Verb("ls", "list images", run=cmd_ls),
        Verb("rm", "remove images", cmd_rm, (option("images", nargs="+"),)),
    )
    add_verbs(subparsers, VERBS)        # in the CLI, and the same in a magic's parser

An option is argparse's own flags and keywords, so what a user types is what argparse
documents; a container option also names the ContainerSpec field it sets (`spec_field`),
which is how `labkit run` and `%%container` turn options into a spec without a second
list. Those options are one table here, CONTAINER_OPTIONS, which both front ends read:
neither owns it, so neither imports the other (spec_from_options makes the spec).

Plain classes, not dataclasses: `labkit --help` imports this module, argparse and
labkit.errors, nothing else (the dataclasses module alone costs more than argparse).
"""

import argparse
import sys

from labkit.errors import ConfigError, LabkitError


class Option:
    """One argument: argparse's flags (`--memory`, `-m`) or a positional's name, its
    keywords, and for a container option the ContainerSpec field its value goes to
    (`to_spec` turns the value into fields when it is not one field's value)."""

    def __init__(self, flags: tuple, kwargs: dict, spec_field: str | None = None, to_spec=None):
        self.flags, self.kwargs, self.spec_field, self.to_spec = tuple(flags), dict(kwargs), spec_field, to_spec
        # The attribute argparse stores the value in (its own rule), worked out once: a
        # %%container cell reads every option's on each run.
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        self.dest = self.kwargs.get("dest") or long.lstrip("-").replace("-", "_")

    def __repr__(self):
        return f"option{self.flags!r}"

    def add_to(self, parser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)

    def with_help(self, text: str) -> "Option":
        return Option(self.flags, {**self.kwargs, "help": text}, self.spec_field, self.to_spec)


def option(*flags, spec_field=None, to_spec=None, **kwargs) -> Option:
    return Option(flags, kwargs, spec_field, to_spec)


class OneOf:
    """Options that exclude each other (argparse's mutually exclusive group)."""

    def __init__(self, options: tuple):
        self.options = tuple(options)

    def add_to(self, parser) -> None:
        group = parser.add_mutually_exclusive_group()
        for member in self.options:
            member.add_to(group)


def one_of(*options) -> OneOf:
    return OneOf(options)


class AllOf:
    """Every option of a table (a list others add to), read when a parser is built, less
    those whose destination is in `skip`: `labkit run` and `%container run` both take
    all_of(CONTAINER_OPTIONS), so an option added to that list reaches both."""

    def __init__(self, table: list, skip: tuple = ()):
        self.table, self.skip = table, tuple(skip)

    def add_to(self, parser) -> None:
        for entry in self.table:
            if not (isinstance(entry, Option) and entry.dest in self.skip):
                entry.add_to(parser)


def all_of(table: list, skip=()) -> AllOf:
    return AllOf(table, skip)


# --- the container options: the one place to add one -------------------------------------
# `labkit run`, `%%container` and `%container run` all take these, so the command line and
# the magics cannot drift and neither front end reads the other's module (IPython and
# nbgrader keep such tables in a neutral module too). An entry is argparse's flags and
# keywords plus the ContainerSpec field the value goes to: a new option is one entry in this
# list (and its field in the spec); no front end and not spec_from_options needs an edit.


def _with_user_namespace(on: bool) -> dict:
    from labkit.runtime import userns_fields

    return userns_fields(on)


CONTAINER_OPTIONS = [
    option("--image", spec_field="image", help="image name (default: busybox)"),
    option("--name", spec_field="name", help="container name"),
    option("--hostname", spec_field="hostname", help="hostname inside (default: the name)"),
    option("--memory", "-m", spec_field="memory", help="memory limit, e.g. 64m, 1g (swap disabled)"),
    option("--cpus", spec_field="cpus", help="CPU limit as a fraction of cores, e.g. 0.5"),
    option("--pids-limit", spec_field="pids", dest="pids", help="most processes at once"),
    option("--env", "-e", spec_field="env", action="append", default=[], metavar="KEY[=VALUE]",
           help="set KEY; KEY alone passes this environment's value (none if unset)"),
    option("--env-file", spec_field="env_file", action="append", default=[], metavar="FILE",
           help="read KEY=VALUE (or KEY) lines from FILE; # starts a comment"),
    option("--volume", "-v", spec_field="volumes", action="append", default=[], metavar="SRC:DST[:ro]"),
    option("--workdir", "-w", spec_field="workdir", help="working directory inside"),
    option("--user", "-u", spec_field="user", help="uid[:gid] or a user name from the image"),
    option("--entrypoint", spec_field="entrypoint", metavar="CMD",
           help="run CMD instead of the image's ENTRYPOINT (\"\" for none); the image's CMD is dropped"),
    option("--timeout", spec_field="timeout", type=float, help="kill the container after this many seconds"),
    option("--net", "--network", spec_field="network", dest="network", default="none",
           help="none (default), host, bridge or container:NAME"),
    option("--publish", "-p", spec_field="publish", action="append", default=[],
           metavar="[IP:]HOSTPORT:CONTAINERPORT", help="forward the host's port (on 127.0.0.1 unless IP) to the "
                                                      "container's (TCP; needs --net bridge)"),
    option("--cap-add", spec_field="cap_add", action="append", default=[], metavar="CAP",
           help="keep a capability beyond Docker's default set, e.g. SYS_ADMIN (or ALL)"),
    option("--cap-drop", spec_field="cap_drop", action="append", default=[], metavar="CAP",
           help="drop a capability from the default set, e.g. NET_RAW (or ALL)"),
    option("--privileged", spec_field="privileged", action="store_true",
           help="all capabilities, no seccomp filter, every device, no masked paths"),
    option("--security-opt", spec_field="security_opt", action="append", default=[], metavar="OPT",
           help="seccomp=unconfined, seccomp=PROFILE.json (Docker's format), no-new-privileges"),
    option("--device-read-bps", spec_field="device_read_bps", action="append", default=[], metavar="DEVICE:RATE",
           help="limit reads from a block device, e.g. /dev/vda:1m (direct I/O on cgroup v1)"),
    option("--device-write-bps", spec_field="device_write_bps", action="append", default=[], metavar="DEVICE:RATE"),
    option("--init", spec_field="init", action="store_true", help="run a reaping PID 1 in front of the command"),
    option("--userns", to_spec=_with_user_namespace, action="store_true",
           help="also make a user namespace (root inside, not outside)"),
    option("--timens", spec_field="time_offset", type=float, default=0.0, metavar="SECONDS",
           help="a time namespace with CLOCK_MONOTONIC moved by SECONDS"),
    option("--read-only", spec_field="read_only", action="store_true",
           help="mount the container's root filesystem read-only"),
    option("--tmpfs", spec_field="tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
           help="a tmpfs at PATH (nosuid,nodev,noexec unless OPTIONS say), e.g. /tmp:size=64m,exec"),
    option("--storage-opt", spec_field="storage_opt", action="append", default=[], metavar="size=SIZE",
           help="bound the read-write layer, e.g. size=1g (a tmpfs of that size holds it)"),
    option("--log-opt", spec_field="log_opt", action="append", default=[], metavar="KEY=VALUE",
           help="a detached container's logs: max-size=10m (then rotated), max-file=3"),
    option("--python", spec_field="python", action="store_true",
           help="mount this Python (interpreter, standard library, shared libraries) read-only at its host "
                "paths; a command starting with python or python3 runs it"),
]


def container_option(dest: str) -> Option:
    """One of CONTAINER_OPTIONS by its destination, for a front end that takes only some
    (`exec` takes --env, --workdir, --user and --timeout) or words its help differently."""
    return next(entry for entry in CONTAINER_OPTIONS if entry.dest == dest)


def add_container_options(parser, skip=()) -> None:
    """Options shared by `run` and the `%%container` magic (Docker's spellings)."""
    all_of(CONTAINER_OPTIONS, skip).add_to(parser)


def spec_from_options(options, command):
    """The ContainerSpec the parsed CONTAINER_OPTIONS describe, running `command`."""
    from labkit.runtime import ContainerSpec

    fields = {"command": command}
    for entry in CONTAINER_OPTIONS:
        if not hasattr(options, entry.dest):
            continue  # a front end that does not take this option: the spec's default
        value = getattr(options, entry.dest)
        if value is None:
            continue  # not given: the spec's default (--image: busybox)
        if entry.to_spec is not None:
            fields.update(entry.to_spec(value))
        elif entry.spec_field is not None:
            fields[entry.spec_field] = value
    return ContainerSpec(**fields)


# --- verbs -------------------------------------------------------------------------------


class Verb:
    """A verb: its name, one line of help, what runs it (called with the parsed options;
    None when the front end dispatches by name) and its options, or its sub-verbs
    (`labkit image ls`)."""

    def __init__(self, name: str, help: str, run=None, options: tuple = (), verbs: tuple = (),
                 metavar: str = "VERB", description: str | None = None, add_help: bool = True):
        self.name, self.help, self.run, self.add_help = name, help, run, add_help
        self.options, self.verbs = options, verbs  # kept as given: a list stays open to additions
        self.metavar, self.description = metavar, description

    def __repr__(self):
        return f"Verb({self.name!r})"


def with_run(verb: "Verb", run, *extra) -> "Verb":
    """`verb` (one of CONTAINER_VERBS) as a front end runs it: with its own function
    and any options only that front end has."""
    return Verb(verb.name, verb.help, run, (*verb.options, *extra), verb.verbs, verb.metavar, verb.description,
                verb.add_help)


def add_options(parser, options) -> None:
    for entry in options:
        entry.add_to(parser)


def add_verb(subparsers, verb: Verb):
    """The parser of one verb (and of its sub-verbs) in `subparsers`."""
    parser = subparsers.add_parser(verb.name, help=verb.help, description=verb.description or verb.help,
                                   allow_abbrev=False, add_help=verb.add_help)
    if not verb.add_help:  # the verb gives -h another meaning (`run -h NAME`: the hostname, as Docker's)
        parser.add_argument("--help", action="help", help="show this help message and exit")
    add_options(parser, verb.options)
    if verb.verbs:
        add_verbs(parser.add_subparsers(dest=f"{verb.name.replace('-', '_')}_verb", metavar=verb.metavar),
                  verb.verbs)
    if verb.run is not None:
        parser.set_defaults(func=verb.run)
    return parser


def add_verbs(subparsers, verbs) -> None:
    subparsers.required = True
    for verb in verbs:
        add_verb(subparsers, verb)


def parser_for(verbs, parser_class=argparse.ArgumentParser, dest="verb", metavar="VERB", **keywords):
    """A whole parser whose first word is one of `verbs` (a magic's, or a module's alone)."""
    parser = parser_class(**{"allow_abbrev": False, **keywords})
    add_verbs(parser.add_subparsers(dest=dest, metavar=metavar), verbs)
    return parser


# What `labkit` exits with when what it was given cannot be used (a bad option or value, a
# recipe line, an archive member), before any container ran: Docker's CLI says 125 for its
# own errors, so a script can tell them from the container's exit status.
USAGE_EXIT = 125


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line and exit USAGE_EXIT instead of 2,
    and which takes no abbreviation of a long option: with them `--pid host` (Docker: the
    host's PID namespace) was read as `--pids-limit host`. Docker's CLI has none either.
    Sub-verbs' parsers are of this class too (argparse makes them of the parent's class)."""

    def __init__(self, *args, **keywords):
        keywords.setdefault("allow_abbrev", False)
        super().__init__(*args, **keywords)

    def error(self, message):
        # One line, as Docker's CLI: the usage block would bury it.
        self.exit(USAGE_EXIT, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def dispatch(options) -> int:
    """Run a parsed verb: a LabkitError is one line for the user, not a traceback; bad
    input (ConfigError) exits USAGE_EXIT, any other failure 2."""
    try:
        return options.func(options) or 0
    except ConfigError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return USAGE_EXIT
    except LabkitError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# --- the container verbs: `labkit VERB` and `%container VERB` both take these ---------------
# Docker's spellings (`stop -t`, `kill -s`, `logs -f --tail`, `rm -f`, `exec -it`); each
# front end gives a verb its function (with_run) and may add options of its own.

TARGET = option("target", metavar="CONTAINER", help="the container's name or id")
TARGETS = option("targets", metavar="CONTAINER", nargs="+", help="the containers' names or ids")
COMMAND = option("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                 help="what to run (after -- if it starts with -)")
INTERACTIVE = option("--interactive", "-i", action="store_true", help="keep stdin open and pass it to the container")
TTY = option("--tty", "-t", action="store_true", help="a terminal for the command (window size, ^C, job control)")
EXEC_OPTIONS = (container_option("env"), container_option("workdir"), container_option("user"))

CONTAINER_VERBS = {verb.name: verb for verb in (
    Verb("exec", "Execute a command in a running container", options=(TARGET, INTERACTIVE, TTY, *EXEC_OPTIONS)),
    Verb("logs", "Fetch the logs of a container (what it wrote to stdout and stderr)", options=(
        TARGET, option("--follow", "-f", action="store_true", help="keep printing what it writes until it exits"),
        option("--tail", "-n", metavar="N", default="all",
               help="only the last N lines of each stream (default: all)"))),
    Verb("stop", "Stop one or more running containers (STOPSIGNAL, then SIGKILL after -t seconds)", options=(
        TARGETS, option("--time", "-t", type=float, default=10.0, metavar="SECONDS",
                        help="seconds to wait before SIGKILL (default 10)"))),
    Verb("kill", "Kill one or more running containers (SIGKILL, or the signal -s names, to PID 1)", options=(
        TARGETS, option("--signal", "-s", default="KILL", metavar="SIGNAL", help="a name (TERM, SIGHUP) or number"))),
    Verb("rm", "Remove one or more containers (-f: a running one too)", options=(
        TARGETS, option("--force", "-f", action="store_true", help="kill it first if it runs"))),
    Verb("inspect", "Return low-level information on containers (JSON, docker inspect's keys)", options=(TARGETS,)),
    Verb("stats", "Display a live stream of containers' CPU, memory and pids", options=(
        option("targets", metavar="CONTAINER", nargs="*", help="the containers (default: every running one)"),
        option("--no-stream", action="store_true", help="print once and return"))),
    Verb("top", "Display the running processes of a container (host PIDs)", options=(TARGET,)),
)}
