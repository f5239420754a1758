"""`labkit vm setup | run | status | boot-time`: the command-line face of labkit.vm.

    labkit vm setup
    labkit vm run [-m MEM] [-s CPUS] [-w RWDIR] [--timeout S] [-e KEY=VALUE] -- CMD ARGS…
    labkit vm status
    labkit vm boot-time

`run` exits with the command's own exit code. Try it without the main CLI:
`python -m labkit.vm.cli run -- uname -r`.
"""

import argparse
import json
import signal
import sys

from labkit.units import parse_assignments
from labkit.verbs import Verb, add_verbs, dispatch, option, parser_for

# What timeout(1) returns when it had to kill the command.
TIMEOUT_EXIT_CODE = 124


def cmd_setup(options):
    from labkit.vm import setup

    kernel = setup(say=lambda line: print(f"labkit vm setup: {line}", flush=True),
                   kernel_deb=options.kernel_deb, sha256=options.sha256)
    print(f"ready: kernel {kernel.version}, cached in {kernel.unpacked.parent}")
    return 0


def cmd_run(options):
    from labkit.vm import VMTimeout, run

    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    # Turn SIGTERM into SystemExit so run()'s cleanup kills QEMU and removes temp files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = run(command, memory=options.memory, cpus=options.cpus, rw_dir=options.rw_dir,
                     timeout=options.timeout, env=parse_assignments(options.env, "-e"), stream=sys.stdout)
    except VMTimeout as error:
        print(f"labkit: {error}", file=sys.stderr)
        return TIMEOUT_EXIT_CODE
    return result.exit_code


def cmd_status(options):
    from labkit.vm import status

    report = status()
    print(report)
    return 0 if report.can_run else 1


def cmd_boot_time(options):
    from labkit.vm import measure_boot

    print(json.dumps(measure_boot().as_dict(), indent=2))
    return 0


VERBS = (
    Verb("vm", "a small VM with a real cgroup v2 kernel (QEMU)", metavar="VM_COMMAND", verbs=(
        Verb("setup", "install QEMU if missing and cache a kernel (~400 MiB)", cmd_setup, (
            option("--kernel-deb", metavar="URL_OR_FILE",
                   help="this Debian kernel package instead of apt's linux-image-amd64 (Ubuntu, Binder)"),
            option("--sha256", help="the package's SHA-256, checked before unpacking (required for a URL)"),
        )),
        Verb("run", "boot a VM on this host's root and run one command in it", cmd_run, (
            option("-m", "--memory", default="1g", help="guest memory (default 1g)"),
            option("-s", "--cpus", default=2, type=int, help="guest CPUs (default 2)"),
            option("-w", "--rw-dir", help="host directory shared read-write at the same path inside"),
            option("--timeout", type=float, default=600, help="kill the VM after this many seconds (default 600)"),
            option("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="add to the environment inside"),
            option("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…"),
        )),
        Verb("status", "can VMs run here, how, and what is missing", cmd_status),
        Verb("boot-time", "measure one boot: seconds to the command and QEMU's peak memory", cmd_boot_time),
    )),
)


def add_subcommand(subparsers):
    add_verbs(subparsers, VERBS)


def main(argv=None):
    """`python -m labkit.vm.cli`: the vm verbs alone, without importing every other
    subcommand (which costs most of a minute inside an emulated VM)."""
    parser = parser_for(VERBS, prog="labkit", metavar="COMMAND")
    return dispatch(parser.parse_args(["vm", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
