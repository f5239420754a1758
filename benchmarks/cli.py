"""The command line as a user meets it: whole processes, start to exit, in one run.

    python benchmarks/cli.py [--runs 20] [--no-install] [--before CHECKOUT]

Each row is the median (and p90) of one whole process, started and waited for; the rows
are called in turn (a, b, c, a, b, c, ...), so that a busy machine slows them alike:

- python -c pass:        the interpreter labkit runs on, with its site-packages (the floor
                         for any Python command here)
- labkit --help:         building the parser and printing; imports no verb's module
- labkit run -- true:    a container start → exit of /bin/true in busybox, cleaned up
- … pool off:            the same with LABKIT_POOL=0 (the helper's pool switched off)
- … (before):            with --before CHECKOUT, the same command from another checkout
                         (e.g. a worktree of main), run by this Python, in the same turns
- crun run:              an OCI bundle on the same busybox files (crun is installed with
                         apt when missing; see benchmarks/timing.py for why it runs in a
                         mount namespace of its own)
- podman run --rootfs:   `podman run --rm --network none --rootfs DIR true` (with lowered
                         ulimits; in the same kind of mount namespace as crun); installed
                         with apt when missing, and left out with a note where it cannot be

Ratios are printed (issue 13's goal: labkit run ≤ 0.6 × podman); nothing is asserted.
It also lists which labkit modules `labkit --help` imported, from `python -X importtime`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GOAL = 0.6  # labkit run -- true ÷ podman run
WARMUP = 2


def labkit_command() -> list:
    """The installed `labkit` script beside this Python, else `python -m labkit.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "labkit")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "labkit.cli"]


def whole_process(command, env=None):
    """A function that runs `command` once and returns its seconds."""
    def once():
        began = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        seconds = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-300:]}")
        return seconds

    return once


def checkout_command(checkout: str) -> list:
    """`labkit` from another checkout, started as the installed script starts it (its own
    entry point: labkit.entry where it has one, else labkit.cli)."""
    checkout = os.path.abspath(checkout)
    entry = "labkit.entry" if os.path.exists(os.path.join(checkout, "labkit", "entry.py")) else "labkit.cli"
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {checkout!r}); from {entry} import command; "
            "sys.exit(command())"]


def compile_bytecode(checkout: str) -> None:
    """Write the bytecode of a checkout's labkit now: with PYTHONDONTWRITEBYTECODE set (as
    in some shells and CI), a checkout whose sources changed, or one never imported, would
    compile its modules again in every timed run, and the ratio would measure that."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(os.path.abspath(checkout), "labkit")],
                   stdout=subprocess.DEVNULL, check=True)


def podman_command(rootfs) -> list:
    # Limits lowered, not raised: podman's default open-files limit is above many hosts'
    # hard limit, and raising one needs CAP_SYS_RESOURCE, which some hosts withhold.
    return ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024", "--rootfs", rootfs, "true"]


def help_imports() -> list:
    """The labkit modules `labkit --help` imports, as Python reports them."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "labkit.cli", "--help"],
                          capture_output=True, text=True)
    names = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return [name for name in names if name == "labkit" or name.startswith("labkit.")]


def measure(runs: int, layer: str, install: bool = True, before: str | None = None) -> dict:
    """Every row called in turn, `runs` rounds after WARMUP rounds; `before`: another
    checkout whose `labkit run -- true` is called in the same turns."""
    labkit = labkit_command()
    for checkout in (ROOT, before):
        if checkout:
            compile_bytecode(checkout)
    pool_off = dict(os.environ, LABKIT_POOL="0")
    pool_on = {k: v for k, v in os.environ.items() if k != "LABKIT_POOL"}
    rows = {
        "python -c pass": whole_process([sys.executable, "-c", "pass"]),
        "labkit --help": whole_process([*labkit, "--help"]),
        "labkit run -- true": whole_process([*labkit, "run", "--", "true"], pool_on),
        "labkit run -- true, pool off": whole_process([*labkit, "run", "--", "true"], pool_off),
    }
    if before:
        rows["labkit run -- true (before)"] = whole_process([*checkout_command(before), "run", "--", "true"], pool_on)
    notes, workers = [], []
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as directory:
        try:
            crun, why = timing.ensure_tool("crun", install)
            if crun:
                bundle = timing.make_bundle(os.path.join(directory, "bundle"), layer)
                rows["crun run"] = _in_worker(workers, "crun worker", ["crun", "run", "--bundle", bundle, "{name}"],
                                              ["crun", "delete", "--force", "{name}"])
            else:
                notes.append(why)
            podman, why = timing.ensure_tool("podman", install)
            if podman:
                rootfs = os.path.join(directory, "rootfs")
                shutil.copytree(layer, rootfs, symlinks=True)  # podman writes /etc files into a --rootfs
                rows["podman run --rootfs"] = _in_worker(workers, "podman worker", podman_command(rootfs))
            else:
                notes.append(f"no podman row: {why}")
            taken = timing.in_turn(rows, runs, WARMUP)
        finally:
            for worker in workers:
                worker.close()
    return {"rows": {name: timing.summary(seconds) for name, seconds in taken.items()},
            "help_imports": help_imports(), "notes": notes}


def _in_worker(workers, name, argv, cleanup=None):
    worker = timing.command_worker(name)
    workers.append(worker)
    return lambda: worker.ask({"argv": argv, "cleanup": cleanup})["seconds"][0]


def report(data: dict) -> None:
    rows = data["rows"]
    floor = rows["python -c pass"]["median_ms"]
    print(f"the command line, whole processes (median / p90 ms of {rows['python -c pass']['runs']}, called in turn)")
    print(f"{'':30} {'median ms':>10} {'p90 ms':>8} {'÷ python -c pass':>17}")
    for name, row in rows.items():
        print(f"{name:30} {row['median_ms']:10.1f} {row['p90_ms']:8.1f} {row['median_ms'] / floor:17.2f}")
    run = rows["labkit run -- true"]["median_ms"]
    for anchor, goal in (("podman run --rootfs", GOAL), ("crun run", None)):
        if anchor in rows:
            ratio = run / rows[anchor]["median_ms"]
            verdict = f" (goal ≤ {goal:.2f}: {'met' if ratio <= goal else 'not met'})" if goal else ""
            print(f"labkit run -- true / {anchor} = {ratio:.2f}{verdict}")
    if "labkit run -- true (before)" in rows:
        older = rows["labkit run -- true (before)"]["median_ms"]
        print(f"labkit run -- true, after ÷ before = {run / older:.2f}"
              + (f"; before / podman run --rootfs = {older / rows['podman run --rootfs']['median_ms']:.2f}"
                 if "podman run --rootfs" in rows else ""))
    print(f"labkit modules imported by `labkit --help`: {', '.join(data['help_imports'])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install a missing crun or podman")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also time `labkit run -- true` from another checkout (e.g. a worktree of main), in the same turns")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/cli.py needs root: `labkit run` makes namespaces, cgroups and mounts")

    from labkit.images import get_image

    data = measure(options.runs, str(get_image("busybox").layer_dirs[0]), install=not options.no_install,
                   before=options.before)
    report(data)
    for note in data["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
