"""`labkit`: the command line. Thin: it parses options and calls the same public API as
the notebook magics.

    labkit run [--image busybox] [--memory 64m] [--cpus 0.5] [--pids-limit N] -- CMD ARGS…
    labkit doctor | gc | ps

It starts like a native tool: building the parser imports argparse and the tables below,
not the verbs. A verb's module is imported only when that verb is used (PLUGINS names
which verbs each module adds, so `labkit --help` lists them without importing them), and
only that verb's parser is built. The program (`command`) leaves without the
interpreter's teardown once the helper has shut down (`exit_now`).
"""

import argparse
import gc
import importlib
import sys

from labkit.errors import LabkitError
from labkit.verbs import Option, Verb, add_verbs, all_of, dispatch, option

# --- container options: the one place to add one ----------------------------------------
# `labkit run`, `%%container` and `%container run` all take these. An entry is argparse's
# flags and keywords plus the ContainerSpec field the value goes to: a new option is one
# entry in this list (and its field in the spec); no front end and not spec_from_options
# needs an edit.


def _with_user_namespace(on: bool) -> dict:
    if not on:
        return {}
    from labkit.runtime import DEFAULT_NAMESPACES

    return {"namespaces": DEFAULT_NAMESPACES + ("user",)}


CONTAINER_OPTIONS = [
    option("--image", spec_field="image", default="busybox", help="image name (default: busybox)"),
    option("--name", spec_field="name", help="container name"),
    option("--hostname", spec_field="hostname", help="hostname inside (default: the name)"),
    option("--memory", "-m", spec_field="memory", help="memory limit, e.g. 64m, 1g (swap disabled)"),
    option("--cpus", spec_field="cpus", help="CPU limit as a fraction of cores, e.g. 0.5"),
    option("--pids-limit", spec_field="pids", dest="pids", help="most processes at once"),
    option("--env", "-e", spec_field="env", action="append", default=[], metavar="KEY=VALUE"),
    option("--volume", "-v", spec_field="volumes", action="append", default=[], metavar="SRC:DST[:ro]"),
    option("--workdir", "-w", spec_field="workdir", help="working directory inside"),
    option("--user", "-u", spec_field="user", help="uid[:gid] or a user name from the image"),
    option("--timeout", spec_field="timeout", type=float, help="kill the container after this many seconds"),
    option("--net", "--network", spec_field="network", dest="network", default="none",
           help="none (default), host, bridge or container:NAME"),
    option("--publish", "-p", spec_field="publish", action="append", default=[], metavar="HOSTPORT:CONTAINERPORT"),
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
    option("--tmpfs", spec_field="tmpfs", action="append", default=[], metavar="PATH",
           help="a writable tmpfs at PATH (nosuid,nodev), e.g. /tmp with --read-only"),
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
        if entry.to_spec is not None:
            fields.update(entry.to_spec(value))
        elif entry.spec_field is not None:
            fields[entry.spec_field] = value
    return ContainerSpec(**fields)


# --- labkit's own verbs ---------------------------------------------------------------


def cmd_run(options):
    # A short-lived process: the cycle collector would only walk, again and again, the
    # objects each import below allocates (~10% of the start here); what little garbage
    # a run makes dies with the process. The helper forked from here inherits the setting.
    gc.disable()
    from labkit.runtime import Container
    from labkit.runtime.helper import fork_from_caller

    if not options.command:
        raise LabkitError("labkit run needs a command after --, e.g. labkit run -- echo hello")
    fork_from_caller()  # this process is small and single-threaded: it can be its own helper
    container = Container(spec_from_options(options, options.command))
    stdin = sys.stdin.fileno() if options.interactive else None
    result = container.run(stdout=sys.stdout.fileno(), stderr=sys.stderr.fileno(), stdin=stdin)
    if not result.ok:
        print(f"labkit: container {result.name} {result.cause}" + (f": {result.error}" if result.error else ""),
              file=sys.stderr)
    return result.returncode


def cmd_doctor(options):
    from labkit.doctor import diagnose, format_table

    rows = diagnose()
    print(format_table(rows))
    return 0 if all(row.ok or not row.required for row in rows) else 1


def cmd_gc(options):
    from labkit.runtime import gc

    removed = gc()
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} leftover(s) removed")
    return 0


def cmd_ps(options):
    from labkit.runtime.state import host_containers

    print(f"{'NAME':24} {'ID':16} {'IMAGE':12} {'STATUS':10} OWNER")
    for state in host_containers():
        print(f"{state.get('name', '?'):24} {state['id']:16} {state.get('image', '?'):12} "
              f"{state['status']:10} {state.get('client_pid')}")
    return 0


VERBS = (
    Verb("run", "run a command in a fresh container", cmd_run, (
        all_of(CONTAINER_OPTIONS),
        option("--interactive", "-i", action="store_true", help="pass stdin to the container"),
        option("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…"),
    )),
    Verb("doctor", "what this host offers, and what to do about what it lacks", cmd_doctor),
    Verb("gc", "remove what containers of dead owners left behind", cmd_gc),
    Verb("ps", "list containers known on this host", cmd_ps),
)

# Modules that add their own verbs: (module, function, {verb: help}). The function is
# add_subcommand(s)(subparsers) and sets `func` on its parsers; it runs only when one of the
# named verbs is used, and the help texts let `labkit --help` list them meanwhile. An entry
# without the verb names still works, but is imported for every command. A missing module
# (that part of labkit is not installed) is skipped.
PLUGINS = (
    ("labkit.images.cli", "add_subcommands", {
        "image": "list, inspect, import, export and remove images",
        "build": "build an image from a recipe (a Dockerfile subset)",
        "commit": "save a container's changes as a new image"}),
    ("labkit.net.cli", "add_subcommands", {"network": "list and inspect container networks"}),
    ("labkit.vm.cli", "add_subcommand", {"vm": "a small VM with a real cgroup v2 kernel (QEMU)"}),
    ("labkit.kernelspec", "add_subcommand", {"kernel": "install the Jupyter kernel that preloads the labkit magics"}),
    ("labkit.experiments.cli", "add_subcommand", {"experiment": "run isolation experiments; figures and raw data"}),
    ("labkit.lab", "add_subcommand", {"lab": "start JupyterLab on the notebooks (127.0.0.1, with a token)",
                                      "notebooks": "execute the notebooks headless"}),
    ("labkit.grading.cli", "add_subcommand", {"grade": "release graded labs and grade submissions (no database)"}),
)


def _add_plugin(subparsers, module_name, function) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return  # that part of labkit is not here
        raise
    getattr(module, function)(subparsers)


def build_parser(verb: str | None = None, listed: bool = False):
    """The parser for one command line whose first word is `verb`: that verb's full parser
    alone when `verb` is one labkit has; otherwise (--help, a typo), or when `listed` (an
    option before the verb, such as -h, is the top level's), a one-line entry for each
    other verb too, which --help and the error list. None: every verb in full.

    Each parser argparse makes costs ~0.3 ms, most of it gettext looking for a translation
    of its headings on disk: `labkit run` makes three, not the fourteen of a full table."""
    parser = argparse.ArgumentParser(prog="labkit", description="Learn how Linux containers work, on the real kernel.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    known = not listed and verb is not None and (any(v.name == verb for v in VERBS) or
                                                 any(named and verb in named[0] for _, _, *named in PLUGINS))
    add_verbs(sub, [v for v in VERBS if v.name == verb] if known else VERBS)
    for module_name, function, *named in PLUGINS:
        verbs = named[0] if named else None
        if verb is None or verbs is None or verb in verbs:
            _add_plugin(sub, module_name, function)
        elif not known:
            for name, text in verbs.items():
                sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((word for word in argv if not word.startswith("-")), "")
    options = build_parser(first, listed=argv[:1] != [first]).parse_args(argv)
    if getattr(options, "command", None) and options.command[:1] == ["--"]:
        options.command = options.command[1:]
    return dispatch(options)


def command():
    """The `labkit` program: main(), then, for labkit's own verbs (they write nothing but
    their output) and for --help and usage errors, exit without the interpreter's teardown.
    A plugin's verb may hold a file that only that teardown would flush: the ordinary exit."""
    try:
        code = main()
    except SystemExit as done:  # argparse's --help and usage errors
        code = done.code
        if not (code is None or isinstance(code, int)):
            raise
    else:
        first = next((word for word in sys.argv[1:] if not word.startswith("-")), "")
        if not any(verb.name == first for verb in VERBS):
            sys.exit(code)
    exit_now(code or 0)


def exit_now(code: int):
    """Leave the way the interpreter would, less its final teardown: other threads first (a
    thread that is not a daemon is waited for: then the ordinary exit), atexit handlers
    (the helper's shutdown, which waits until every container is torn down), buffered
    output; then _exit. The teardown skipped frees every module and object one by one:
    20-30 ms after `labkit run` here, with nobody waiting for it but the user."""
    threading = sys.modules.get("threading")
    if threading is not None and any(not thread.daemon for thread in threading.enumerate()
                                     if thread is not threading.main_thread()):
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 120  # what the interpreter exits with when it cannot flush stdout
    os._exit(code)


if __name__ == "__main__":
    command()
