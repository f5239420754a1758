"""Issue 13's performance table, with labkit's column filled, from one run.

    python benchmarks/table.py [--quick] [--results DIR] [--no-install]     (or: make benchmarks)

Runs startup.py (one container phase by phase, 100 sequential, 2×50 concurrent, the
command line), cell_roundtrip.py and images.py (the commit), each as a process of its
own, and prints one row per goal: labkit's figure, its baseline measured in the same
run, the ratio, the goal and whether it is met. Nothing is asserted.

For reproducibility it writes, under --results (default results/benchmarks/<UTC time>):
environment.json (kernel, cgroup version, CPUs, memory, load average before and after
each part, versions of Python, labkit, crun and podman), each part's raw samples
(<part>.json) and what it printed (<part>.log), and the table (table.md, table.json).
`--from DIR` prints the table again from such a directory, measuring nothing.

--quick uses tiny counts (a few containers, an 8 MiB commit): it checks that every row
can be produced, not how fast anything is.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# part name → (script, its arguments; --quick and --no-install are passed on where they apply)
PARTS = {
    "startup": ("startup.py", ["--no-install"]),
    "cell_roundtrip": ("cell_roundtrip.py", []),
    "images": ("images.py", ["--commit-only"]),
}


# --- the environment record ------------------------------------------------------------------

def environment(options) -> dict:
    from labkit.cgroups import detect_mode

    mode = detect_mode()
    if mode == "v1" and os.path.ismount(timing.HYBRID_CGROUP2):
        mode = "v1 (hybrid: an empty cgroup2 at /sys/fs/cgroup/unified)"
    return {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [sys.executable, *sys.argv],
        "quick": options.quick,
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cgroup": mode,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_kib": _meminfo("MemTotal"),
        "load_average_before": timing.load_average(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "labkit_commit": _git("rev-parse", "HEAD"),
        "labkit_tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "crun": timing.version_of(["crun", "--version"]),
        "podman": timing.version_of(["podman", "--version"]),
        "runc": timing.version_of(["runc", "--version"]),
        "os_release": _os_release(),
        "pool_variable": os.environ.get("LABKIT_POOL"),
    }


def _cpu_model():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _meminfo(key):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _os_release():
    try:
        with open("/etc/os-release") as handle:
            fields = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
        return fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        return None


def _git(*arguments):
    done = subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


# --- running the parts -----------------------------------------------------------------------

def run_part(name, results: Path, options, env: dict, record: dict) -> dict | None:
    """One benchmark script as its own process; its samples, or None if it failed."""
    script, arguments = PARTS[name]
    arguments = [a for a in arguments if a != "--no-install" or options.no_install]
    arguments += ["--quick"] if options.quick else []
    output = results / f"{name}.json"
    command = [sys.executable, str(HERE / script), *arguments, "--json", str(output)]
    print(f"table: running {script} {' '.join(arguments)} ...", file=sys.stderr, flush=True)
    part = {"load_average_before": timing.load_average()}
    began = time.perf_counter()
    with open(results / f"{name}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    part.update(seconds=time.perf_counter() - began, load_average_after=timing.load_average(),
                exit_code=done.returncode)
    record.setdefault("parts", {})[name] = part
    if done.returncode != 0 or not output.exists():
        tail = (results / f"{name}.log").read_text(errors="replace").strip()[-600:]
        print(f"table: {script} failed ({done.returncode}); see {results / (name + '.log')}:\n{tail}",
              file=sys.stderr)
        return None
    return json.loads(output.read_text())


# --- the rows --------------------------------------------------------------------------------

def row(what, labkit, baseline, ratio, goal, met):
    return {"what": what, "labkit": labkit, "baseline": baseline, "ratio": ratio, "goal": goal,
            "verdict": "—" if met is None else ("met" if met else "not met")}


def startup_rows(data) -> list:
    import startup

    if data is None:
        return [row("container start → exit, `true`", "failed: see startup.log", "", "",
                    f"≤ {startup.STARTUP_GOAL}× crun", False)]
    return (phase_rows(data["phases"]) + disk_busy_rows(data.get("disk_busy")) + command_line_rows(data["cli"]["rows"])
            + batch_rows(data["batches"]))


def disk_busy_rows(busy) -> list:
    import startup

    what, goal = "… the same with the disk busy (`stress-ng --iomix 1` beside both)", f"≤ {startup.DISK_BUSY_GOAL}× crun"
    if not busy:
        return [row(what, "not measured (see the notes)", "", "", goal, None)]
    labkit, crun = busy["labkit"]["exit"], busy["crun run"]["exit"]
    ratio = labkit["median_ms"] / crun["median_ms"]
    return [row(what, _ms(labkit), f"crun run {_ms(crun)}, the same conditions", _times(ratio, "crun"), goal,
                ratio <= startup.DISK_BUSY_GOAL)]


def phase_rows(phases) -> list:
    import startup

    crun = phases.get("crun run", {}).get("exit")
    anchors = [f"crun run {_ms(crun)}" if crun else "crun missing"]
    same_work = phases.get("crun run, same work", {}).get("exit")
    anchors += [f"crun run with labkit's profile, mounts and overlay root {_ms(same_work)}"] if same_work else []
    anchors += [f"runc run {_ms(phases['runc run']['exit'])}"] if "runc run" in phases else []
    anchors += [f"{floor} {phases[floor]['exit']['median_ms']:.2f} ms" for floor in ("bare fork+exec", "unshare (6 ns)")]
    rows = []
    for name, what in (("labkit", "container start → exit, `true`, profile on (`startup.py`)"),
                       ("labkit, pool off", "… start → exit, pool off (`LABKIT_POOL=0`)"),
                       ("labkit --privileged", "… start → exit, `--privileged` (no profile)")):
        ratio = phases[name]["exit"]["median_ms"] / crun["median_ms"] if crun else None
        if name == "labkit":  # the goal's row, with every anchor
            rows.append(row(what, _ms(phases[name]["exit"]), "; ".join(anchors), _times(ratio, "crun"),
                            f"≤ {startup.STARTUP_GOAL}× crun", ratio is not None and ratio <= startup.STARTUP_GOAL))
            if same_work:
                same = phases[name]["exit"]["median_ms"] / same_work["median_ms"]
                rows.append(row("… the same against crun doing the same work", _ms(phases[name]["exit"]),
                                anchors[1], _times(same, "crun (same work)"), f"≤ {startup.SAME_WORK_GOAL}× crun (same work)",
                                same <= startup.SAME_WORK_GOAL))
        else:
            rows.append(row(what, _ms(phases[name]["exit"]), anchors[0], _times(ratio, "crun"), "—", None))
    labkit = phases["labkit"]
    ratio = labkit["cleaned"]["median_ms"] / crun["median_ms"] if crun else None
    rows.append(row("… request → exec / → cleaned (teardown done), profile on",
                    f"{labkit['exec']['median_ms']:.1f} / {labkit['cleaned']['median_ms']:.1f} ms",
                    "crun run (deletes before it exits)" if crun else "crun missing", _times(ratio, "crun"), "—", None))
    return rows


def command_line_rows(command_line) -> list:
    import cli

    podman = command_line.get("podman run --rootfs")
    anchors = [f"podman run --rootfs {_ms(podman)}" if podman else "podman missing"]
    anchors += [f"{name} {_ms(command_line[name])}" for name in ("crun run", "python -c pass") if name in command_line]
    rows = []
    for name, what in (("labkit run -- true", "`labkit run -- true`, whole process (`cli.py`)"),
                       ("labkit run -- true, pool off", "… `labkit run`, pool off (`LABKIT_POOL=0`)")):
        run = command_line[name]
        ratio = run["median_ms"] / podman["median_ms"] if podman else None
        if name == "labkit run -- true":
            rows.append(row(what, _ms(run), "; ".join(anchors), _times(ratio, "podman"), f"≤ {cli.GOAL}× podman",
                            ratio is not None and ratio <= cli.GOAL))
        else:
            rows.append(row(what, _ms(run), anchors[0], _times(ratio, "podman"), "—", None))
    help_, floor = command_line["labkit --help"], command_line["python -c pass"]
    rows.append(row("`labkit --help`, whole process (`cli.py`)", _ms(help_), f"python -c pass {_ms(floor)}",
                    _times(help_["median_ms"] / floor["median_ms"], "python"), "—", None))
    return rows


def batch_rows(batches) -> list:
    import startup

    count, pair = batches["count"], batches["concurrent"].replace("x", "×")
    labkit, crun = batches["labkit"], batches.get("crun")
    ratio = labkit["sequential_s"] / crun["sequential_s"] if crun else None
    goal = labkit["sequential_goal_s"]
    sequential = row(f"{count} containers, sequential (`startup.py`)",
                     f"{labkit['sequential_s']:.2f} s ({labkit['per_container_ms']:.1f} ms each)",
                     f"crun {crun['sequential_s']:.2f} s" if crun else "crun missing", _times(ratio, "crun"),
                     f"≤ {goal:.2f} s", labkit["sequential_s"] <= goal)
    bound = labkit["two_core_bound_s"]
    baseline = f"{count} sequential {labkit['sequential_s']:.2f} s, 2-core bound {bound:.2f} s"
    if crun:
        baseline += f"; crun {pair} {crun['concurrent_s']:.2f} s ({crun['concurrent_to_sequential']:.2f}× its sequential)"
    concurrent = row(f"{pair} concurrent, two clients (`startup.py`)",
                     f"{labkit['concurrent_s']:.2f} s ({labkit['concurrent_to_sequential']:.2f}× sequential)",
                     baseline, _times(labkit["concurrent_s"] / bound, "bound"),
                     f"≤ 2-core bound (+{startup.CONCURRENCY_SLACK - 1:.0%})", labkit["within_bound"])
    return [sequential, concurrent]


def cell_rows(data) -> list:
    import cell_roundtrip

    goal = f"≤ {cell_roundtrip.GOAL_MS:.0f} ms"
    if data is None:
        return [row("`%%container true` cell round trip", "failed: see cell_roundtrip.log", "", "", goal, False)]
    rows = data["rows"]
    cell, empty = rows["%%container true"], rows["empty cell (pass)"]
    return [row("`%%container true` cell round trip (`cell_roundtrip.py`)", _ms(cell),
                f"empty cell {_ms(empty)}; `!true` {_ms(rows['!true'])}",
                _times(cell["median_ms"] / empty["median_ms"], "empty cell"), goal,
                cell["median_ms"] <= cell_roundtrip.GOAL_MS)]


def image_rows(data) -> list:
    import images

    goal = f"≤ {images.COMMIT_GOAL}× (tar read + sha256)"
    if data is None:
        return [row("commit, container kept", "failed: see images.log", "", "", goal, False)]
    commit = data["commit"]
    rows = commit["rows"]
    read, digest = rows["tar -cf - | cat"]["median_ms"], rows["sha256 (OpenSSL)"]["median_ms"]
    return [row(f"{commit['mib']} MiB commit, container kept (`images.py`)",
                _ms(rows["commit (copy, container kept)"]),
                f"tar read {read:.0f} + sha256 {digest:.0f} = {commit['baseline_ms']:.0f} ms",
                _times(commit["ratio"], "baseline"), goal, commit["ratio"] <= images.COMMIT_GOAL)]


def _ms(summary) -> str:
    if not summary:
        return "—"
    value, p90 = summary["median_ms"], summary["p90_ms"]
    digits = 1 if value >= 10 else 2
    return f"{value:.{digits}f} ms (p90 {p90:.{digits}f})"


def _times(ratio, of: str) -> str:
    return "—" if ratio is None else f"{ratio:.2f}× {of}"


def markdown(rows) -> str:
    lines = ["| what | labkit | baseline in the same run | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['labkit']} | {r['baseline']} | {r['ratio']} | {r['goal']} | {r['verdict']} |"
              for r in rows]
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks that every row is produced")
    parser.add_argument("--results", help="directory for the JSON and logs (default results/benchmarks/<UTC time>)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install a missing crun or podman")
    parser.add_argument("--from", dest="saved", metavar="DIR",
                        help="measure nothing: print the table again from a results directory's data")
    options = parser.parse_args()
    if options.saved:
        results = Path(options.saved)
        record = json.loads((results / "environment.json").read_text())
        data = {name: _saved(results / f"{name}.json") for name in PARTS}
    else:
        if os.geteuid() != 0:
            print("benchmarks/table.py needs root: containers make namespaces, cgroups and mounts", file=sys.stderr)
            return 2
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        results = Path(options.results or ROOT / "results" / "benchmarks" / stamp)
        results.mkdir(parents=True, exist_ok=True)
        record, data = measure(results, options)
    rows, notes = table_rows(data)
    table, footer = markdown(rows), "\n".join(footer_lines(record, notes, results))
    print(table)
    print(footer)
    if not options.saved:
        (results / "table.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
        (results / "table.md").write_text(table + "\n\n" + footer + "\n")
    return 0 if all(part is not None for part in data.values()) else 1


def measure(results: Path, options) -> tuple:
    """Every part, one after another; the environment record and each part's data."""
    missing = {}
    for tool in ("crun", "podman"):  # before the record, which has their versions
        _, missing[tool] = timing.ensure_tool(tool, install=not options.no_install)
    record = environment(options)
    record["missing"] = {tool: why for tool, why in missing.items() if why}
    home = Path(tempfile.mkdtemp(prefix="labkit-bench-home-"))
    try:
        env = dict(os.environ, LABKIT_HOME=str(home))
        data = {name: run_part(name, results, options, env, record) for name in PARTS}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    record["load_average_after"] = timing.load_average()
    record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (results / "environment.json").write_text(json.dumps(record, indent=1))
    return record, data


def table_rows(data: dict) -> tuple:
    """The table's rows and the notes under it, from the parts' data alone."""
    rows = startup_rows(data["startup"]) + cell_rows(data["cell_roundtrip"]) + image_rows(data["images"])
    return rows, (data["startup"] or {}).get("notes", [])


def footer_lines(record: dict, notes: list, results: Path) -> list:
    quick = " (--quick: tiny counts, not a measurement)" if record["quick"] else ""
    return [f"{record['cpus']} CPUs, kernel {record['kernel']}, cgroup {record['cgroup']}; load average "
            f"{_load(record['load_average_before'])} before, {_load(record['load_average_after'])} after{quick}",
            *(f"note: {note}" for note in notes), f"raw samples and environment: {results}"]


def _saved(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _load(averages) -> str:
    return " / ".join(f"{value:.2f}" for value in averages)


if __name__ == "__main__":
    sys.exit(main())
