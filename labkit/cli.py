"""`labkit`: the command line. Thin: it parses options and calls the same public API as
the notebook magics.

    labkit run [--image busybox] [--memory 64m] [--cpus 0.5] [--pids-limit N] -- CMD ARGS…
    labkit doctor | gc | ps
"""

import argparse
import importlib
import sys

from labkit.errors import LabkitError

# Modules that add their own subcommands: each has add_subcommand(s)(subparsers) and
# sets `func` on its parsers. A missing module (feature not installed) is skipped.
PLUGINS = (
    ("labkit.images.cli", "add_subcommands"),
    ("labkit.net.cli", "add_subcommands"),
    ("labkit.vm.cli", "add_subcommand"),
    ("labkit.kernelspec", "add_subcommand"),
    ("labkit.experiments.cli", "add_subcommand"),
    ("labkit.lab", "add_subcommand"),
)


def add_container_options(parser):
    """Options shared by `run` and the `%%container` magic (Docker's spellings)."""
    parser.add_argument("--image", default="busybox", help="image name (default: busybox)")
    parser.add_argument("--name", help="container name")
    parser.add_argument("--hostname", help="hostname inside (default: the name)")
    parser.add_argument("--memory", "-m", help="memory limit, e.g. 64m, 1g (swap disabled)")
    parser.add_argument("--cpus", help="CPU limit as a fraction of cores, e.g. 0.5")
    parser.add_argument("--pids-limit", dest="pids", help="most processes at once")
    parser.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--volume", "-v", action="append", default=[], metavar="SRC:DST[:ro]")
    parser.add_argument("--workdir", "-w", help="working directory inside")
    parser.add_argument("--user", "-u", help="uid[:gid] or a user name from the image")
    parser.add_argument("--timeout", type=float, help="kill the container after this many seconds")
    parser.add_argument("--net", "--network", dest="network", default="none",
                        help="none (default), host, bridge or container:NAME")
    parser.add_argument("--publish", "-p", action="append", default=[], metavar="HOSTPORT:CONTAINERPORT")
    parser.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                        help="keep a capability beyond Docker's default set, e.g. SYS_ADMIN")
    parser.add_argument("--device-read-bps", action="append", default=[], metavar="DEVICE:RATE",
                        help="limit reads from a block device, e.g. /dev/vda:1m (direct I/O on cgroup v1)")
    parser.add_argument("--device-write-bps", action="append", default=[], metavar="DEVICE:RATE")
    parser.add_argument("--init", action="store_true", help="run a reaping PID 1 in front of the command")
    parser.add_argument("--userns", action="store_true", help="also make a user namespace (root inside, not outside)")
    parser.add_argument("--timens", type=float, default=0.0, metavar="SECONDS",
                        help="a time namespace with CLOCK_MONOTONIC moved by SECONDS")
    parser.add_argument("--read-only", action="store_true", help="mount the container's root filesystem read-only")
    parser.add_argument("--tmpfs", action="append", default=[], metavar="PATH",
                        help="a writable tmpfs at PATH (nosuid,nodev), e.g. /tmp with --read-only")


def spec_from_options(options, command):
    from labkit.runtime import DEFAULT_NAMESPACES, ContainerSpec

    namespaces = DEFAULT_NAMESPACES + (("user",) if options.userns else ())
    return ContainerSpec(
        image=options.image, command=command, name=options.name, hostname=options.hostname,
        memory=options.memory, cpus=options.cpus, pids=options.pids, env=options.env,
        volumes=options.volume, workdir=options.workdir, user=options.user, timeout=options.timeout,
        network=options.network, publish=options.publish, init=options.init, namespaces=namespaces,
        time_offset=options.timens, cap_add=options.cap_add,
        device_read_bps=options.device_read_bps, device_write_bps=options.device_write_bps,
        read_only=options.read_only, tmpfs=options.tmpfs,
    )


def cmd_run(options):
    from labkit.runtime import Container

    if not options.command:
        raise LabkitError("labkit run needs a command after --, e.g. labkit run -- echo hello")
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
    from labkit.runtime.state import all_states, owner_alive

    print(f"{'NAME':24} {'ID':16} {'IMAGE':12} {'STATUS':10} OWNER")
    for state in all_states():
        owner = state.get("client_pid")
        status = state.get("status", "?") if owner_alive(state) else "orphaned"
        print(f"{state.get('name', '?'):24} {state['id']:16} {state.get('image', '?'):12} {status:10} {owner}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="labkit", description="Learn how Linux containers work, on the real kernel.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run a command in a fresh container")
    add_container_options(run)
    run.add_argument("--interactive", "-i", action="store_true", help="pass stdin to the container")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    run.set_defaults(func=cmd_run)

    sub.add_parser("doctor", help="what this host offers, and what to do about what it lacks").set_defaults(func=cmd_doctor)
    sub.add_parser("gc", help="remove what containers of dead owners left behind").set_defaults(func=cmd_gc)
    sub.add_parser("ps", help="list containers known on this host").set_defaults(func=cmd_ps)

    for module_name, function in PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue  # that part of labkit is not here
            raise
        getattr(module, function)(sub)
    return parser


def dispatch(options) -> int:
    """Run a parsed verb: a LabkitError is one line for the user, not a traceback."""
    try:
        return options.func(options) or 0
    except LabkitError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv=None):
    parser = build_parser()
    options = parser.parse_args(argv)
    if getattr(options, "command", None) and options.command[:1] == ["--"]:
        options.command = options.command[1:]
    return dispatch(options)


if __name__ == "__main__":
    sys.exit(main())
