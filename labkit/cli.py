"""`labkit`: the command line. Thin: it parses options and calls the same public API as
the notebook magics.

    labkit run [--image busybox] [--memory 64m] [--cpus 0.5] [--pids-limit N] -- CMD ARGS…
    labkit doctor | gc | ps

It starts like a native tool: building the parser imports argparse and the tables below
(the container options are labkit.verbs', which the magics read too), not the verbs. A verb's module is imported only when that verb is used (PLUGINS names
which verbs each module adds, so `labkit --help` lists them without importing them), and
only that verb's parser is built. The program (`command`) leaves without the
interpreter's teardown once the helper has shut down (`exit_now`).
"""

import argparse
import gc
import importlib
import os
import sys

from labkit.verbs import (COMMAND, CONTAINER_OPTIONS, CONTAINER_VERBS, INTERACTIVE, TTY, USAGE_EXIT, Option, Parser,
                          Verb, add_verbs, all_of, container_option, dispatch, option, spec_from_options, with_run)

# --- labkit's own verbs ---------------------------------------------------------------


def cmd_run(options):
    # A short-lived process: the cycle collector would only walk, again and again, the
    # objects each import below allocates (~10% of the start here); what little garbage
    # a run makes dies with the process. The helper forked from here inherits the setting.
    gc.disable()
    from labkit.linux.sealed_exe import run_sealed

    # Its fork, the helper, must not run a file a container can reach (CVE-2019-5736):
    # executed again from the sealed interpreter first, before the imports below (after
    # them, their second import cost a run ~40% more CPU: 0.297 s against 0.208 s, median
    # of 15 paired runs of `labkit run -- true`).
    run_sealed()
    spec = spec_from_options(options, options.command)
    if options.image is None and not options.dashes and options.command:
        # docker run [OPTIONS] IMAGE [COMMAND] [ARG...]; with nothing at all, busybox's CMD
        spec.image, spec.command = options.command[0], options.command[1:]
    spec = spec.validated()   # bad input: before any fork
    if options.detach:
        return _run_detached(spec, options)
    from labkit.runtime import Container
    from labkit.runtime.client.helper_client import fork_from_caller

    from labkit.errors import ImageNotFound

    # This process is small and single-threaded: it can be its own helper, for one container.
    fork_from_caller(one_container=True)
    try:
        container = Container(spec)
    except ImageNotFound as error:   # docker run: "Unable to find image", 125 as any error of its own
        print(f"labkit: {error}", file=sys.stderr)
        return USAGE_EXIT
    relay = None
    if options.tty:
        from labkit.terminal import PtyRelay

        relay = PtyRelay(interactive=options.interactive)
        stdio = {"stdin": relay.slave, "stdout": relay.slave, "stderr": relay.slave}
    else:
        stdio = {"stdin": sys.stdin.fileno() if options.interactive else None, "stdout": sys.stdout.fileno(),
                 "stderr": sys.stderr.fileno()}
    with forwarded_signals(container) as forwarding, relay or _nothing():
        try:
            container.start(**stdio, auto_remove=True, tty=options.tty)
            if relay is not None:
                relay.close_slave()
            forwarding.send_pending()
            result = container.wait()
            if relay is not None:
                relay.finish()
        finally:
            if container.state != "removed":
                container.remove()
    if not result.ok:
        print(f"labkit: container {result.name} {result.cause}" + (f": {result.error}" if result.error else ""),
              file=sys.stderr)
    return result.returncode


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run_detached(spec, options):
    """`run -d`: a monitor (runtime/client/monitor.py) starts the container and keeps it
    once this command has printed its id and returned."""
    from labkit.runtime.client.monitor import StartFailed, start_detached

    try:
        started = start_detached(spec, auto_remove=options.rm, keep_stdin=options.interactive, tty=options.tty)
    except StartFailed as error:
        print(f"labkit: {error}", file=sys.stderr)
        return error.returncode
    print(started["id"])
    return 0


# What `labkit run` passes on to the container's PID 1, as `docker run` does (its
# --sig-proxy, on by default): the container then decides, and its exit status is
# labkit's (128+n when the signal killed it). A third SIGINT kills the container: the
# way out of one whose PID 1 ignores interrupts (`docker run` gives none).
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP")
INTERRUPTS_TO_KILL = 3


class forwarded_signals:
    """While the container runs, FORWARDED signals to this process go to its PID 1; one
    that comes before the container started is sent once it has."""

    def __init__(self, container):
        self.container, self.pending, self.interrupts, self.previous = container, [], 0, {}

    def __enter__(self):
        import signal

        for name in FORWARDED:
            number = getattr(signal, name)
            self.previous[number] = signal.signal(number, self.on_signal)
        return self

    def on_signal(self, number, frame):
        import signal

        if number == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= INTERRUPTS_TO_KILL:
                raise KeyboardInterrupt   # wait() kills and collects the container
        if self.container.state == "running":
            self.container.signal(number)
        else:
            self.pending.append(number)   # still starting: send_pending() sends it once it runs

    def send_pending(self):
        while self.pending:
            self.container.signal(self.pending.pop(0))

    def __exit__(self, *exc):
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


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
    from labkit.runtime.client.state import host_containers

    print(f"{'NAME':24} {'ID':16} {'IMAGE':12} {'STATUS':10} OWNER")
    for state in host_containers():
        if not options.all and state["status"] not in ("created", "running"):
            continue   # docker ps: the containers that are up; -a: every one
        print(f"{state.get('name', '?'):24} {state['id']:16} {state.get('image', '?'):12} "
              f"{state['status']:10} {state.get('client_pid')}")
    return 0


def _with_short(entry: Option, flag: str) -> Option:
    """A container option with a short flag only the command line has (`run -h`: the
    magics keep -h for their help)."""
    return Option(entry.flags + (flag,), entry.kwargs, entry.spec_field, entry.to_spec)


def cmd_unshare(options):
    """COMMAND as root of labkit's user namespace, where a rootless container's and its
    layers' files show their own owners (what `podman unshare` is); as the host's root,
    COMMAND itself. The labkit kernel starts so (labkit/kernelspec/kernel.json)."""
    import os

    if not options.command:
        print("labkit unshare: give a command after --", file=sys.stderr)
        return 2
    enter_user_namespace_if_rootless(shared=True)
    try:
        os.execvp(options.command[0], options.command)
    except OSError as error:
        print(f"labkit unshare: cannot run {options.command[0]}: {error.strerror}", file=sys.stderr)
        return 127


def _container_verb(name):
    """CONTAINER_VERBS[name] run by labkit.container_cli's cmd_<name>, imported when used."""
    def run(options):
        return getattr(importlib.import_module("labkit.container_cli"), f"cmd_{name}")(options)

    return with_run(CONTAINER_VERBS[name], run, *((COMMAND,) if name == "exec" else ()))


VERBS = (
    Verb("run", "Create and run a new container from an image", cmd_run, (
        all_of(CONTAINER_OPTIONS, skip=("hostname",)),
        _with_short(container_option("hostname"), "-h"),
        option("--detach", "-d", action="store_true", help="run it in the background and print its ID"),
        option("--rm", action="store_true", help="remove it when it exits (without -d it always is)"),
        INTERACTIVE, TTY,
        option("command", nargs=argparse.REMAINDER, metavar="IMAGE [COMMAND] [ARG...]",
               help="as docker run; or -- COMMAND [ARG...] to run it in --image (default busybox)"),
    ), add_help=False, description="Create and run a new container from an image: labkit run [OPTIONS] IMAGE "
       "[COMMAND] [ARG...], as docker run (or labkit run [OPTIONS] -- COMMAND [ARG...] in busybox). Without a "
       "command it runs the image's ENTRYPOINT and CMD."),   # -h is --hostname, as docker run's
    *(_container_verb(name) for name in CONTAINER_VERBS),
    Verb("unshare", "Run a command as root of labkit's user namespace (rootless; as root: the command itself)",
         cmd_unshare, (option("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…"),)),
    Verb("doctor", "What this host offers, and what to do about what it lacks", cmd_doctor),
    Verb("gc", "Remove what containers of dead owners left behind", cmd_gc),
    Verb("ps", "List containers (running ones; -a: all)", cmd_ps, (
        option("--all", "-a", action="store_true", help="show all containers (the exited and orphaned ones too)"),
    )),
)

# Modules that add their own verbs: (module, function, {verb: help}). The function is
# add_subcommand(s)(subparsers) and sets `func` on its parsers; it runs only when one of the
# named verbs is used, and the help texts let `labkit --help` list them meanwhile. An entry
# without the verb names still works, but is imported for every command. A missing module
# (that part of labkit is not installed) is skipped.
PLUGINS = (
    ("labkit.images.cli", "add_subcommands", {
        "image": "list, inspect, import, export and remove images",
        "build": "build an image from a Dockerfile (offline: FROM names a local image)",
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
    parser = Parser(prog="labkit", description="Learn how Linux containers "
                    "work, on the real kernel. The container commands take Docker's options and exit codes "
                    "(125: labkit's own error; 126, 127: the command cannot be run); see 'labkit COMMAND --help'.")
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


# Verbs that make, read or remove files of a container's or a layer's own ids: rootless,
# they run as root of labkit's user namespace, as podman runs its commands in its own.
IN_USER_NAMESPACE = ("image", "build", "commit", "gc")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((word for word in argv if not word.startswith("-")), "")
    if first in IN_USER_NAMESPACE:
        enter_user_namespace_if_rootless()
    options = build_parser(first, listed=argv[:1] != [first]).parse_args(argv)
    options.dashes = bool(getattr(options, "command", None)) and options.command[:1] == ["--"]
    if options.dashes:
        options.command = options.command[1:]
    return dispatch(options)


def enter_user_namespace_if_rootless(shared=False) -> None:
    """Rootless: become root of a user namespace of labkit's. `shared`: the home's shared
    one (labkit.net.rootless_bridge), where the bridge's network namespace is and the
    containers of every helper started from here are made; the connection to its keeper is
    handed down to the command, which keeps it alive while it runs."""
    import os

    from labkit.linux import rootless

    if rootless.running_rootless() and os.geteuid() != 0:
        from labkit.home import check_before_user_namespace

        home = check_before_user_namespace()
        if shared:
            from labkit.net import rootless_bridge

            try:
                keeper = rootless_bridge.join(home)
            except Exception:  # noqa: BLE001 — a namespace of its own, only --net bridge will say what is wrong
                pass
            else:
                os.set_inheritable(keeper.detach(), True)
                return
        rootless.enter_user_namespace()


def command():
    """The `labkit` program: main(), then, for labkit's own verbs (they write nothing but
    their output) and for --help and usage errors, exit without the interpreter's teardown.
    A plugin's verb may hold a file that only that teardown would flush: the ordinary exit."""
    try:
        code = main()
    except BrokenPipeError:   # `labkit inspect x | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141   # as a shell reports a writer killed by SIGPIPE
    except SystemExit as done:  # argparse's --help and usage errors (verbs.USAGE_EXIT)
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
