"""Which namespaces a container gets: the inode of /proc/<pid>/ns/<kind> as the host
sees it for itself and as the container sees it from inside. Same inode: shared with
the host; different: isolated. Also rebuilds the namespace table students read.
"""

import os
import re
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, new_result, report, running
from labkit.linux.namespaces import NAMESPACES, available_namespaces

# Docker's default (user and time shared), then each opt-in kind added.
SETUPS = {
    "default": (),
    "--userns": ("user",),
    "--timens": ("time",),
}
DEFAULT_ISOLATED = ("mnt", "uts", "ipc", "pid", "net", "cgroup")
PRINT_INODES = "for n in /proc/self/ns/*; do readlink $n; done"


@dataclass
class Params:
    trials: int = 1          # each trial makes one container per setup


def run(params: Params, progress=None):
    result = new_result("namespace_tour", params)
    available = available_namespaces()
    result.data["table"] = [
        {"kind": ns.name, "flag": ns.flag_name, "isolates": ns.isolates,
         "introduced": ns.introduced, "complete": ns.complete,
         "available": available.get(ns.name) is None, "why_not": available.get(ns.name)}
        for ns in NAMESPACES
    ]
    host = {ns.name: os.stat(ns.path()).st_ino for ns in NAMESPACES if os.path.exists(ns.path())}
    result.data["host"] = host
    setups = {name: extra for name, extra in SETUPS.items() if all(available.get(k) is None for k in extra)}
    result.data["skipped_setups"] = {name: f"{extra[0]} namespaces are not available here"
                                     for name, extra in SETUPS.items() if name not in setups}
    trials = []
    total, done = params.trials * len(setups), 0
    for _ in range(params.trials):
        trial = {}
        for name, extra in setups.items():
            trial[name] = _inodes_in_container(extra)
            done += 1
            report(progress, done, total, name)
        trials.append(trial)
    result.data["trials"] = trials
    return finished(result)


def _inodes_in_container(extra) -> dict:
    """{kind: {"inside": inode read in the container, "outside": the host's view of its PID 1}}"""
    from labkit.runtime import DEFAULT_NAMESPACES, ContainerSpec

    spec = ContainerSpec(command=["sh", "-c", f"{PRINT_INODES}; exec sleep 60"],
                         namespaces=DEFAULT_NAMESPACES + tuple(extra))
    with running(spec) as container:
        inside = _read_inside(container)
        outside = {}
        for ns in NAMESPACES:
            try:
                outside[ns.name] = os.stat(ns.path(container.pid)).st_ino
            except FileNotFoundError:
                pass
    return {kind: {"inside": inside.get(kind), "outside": outside.get(kind)} for kind in outside}


def _read_inside(container, tries=200) -> dict:
    import time

    for _ in range(tries):
        found = dict(re.findall(r"^(\w+):\[(\d+)\]$", container.logs(), re.M))
        if all(ns.name in found for ns in NAMESPACES if os.path.exists(ns.path())):
            return {kind: int(inode) for kind, inode in found.items()}
        time.sleep(0.01)
    raise RuntimeError(f"the container did not print its namespace inodes: {container.logs()!r}")


def matrix(result) -> dict:
    """{setup: {kind: True if isolated from the host}} from the first trial."""
    host = result.data["host"]
    trial = result.data["trials"][0]
    return {setup: {kind: views["inside"] != host.get(kind) for kind, views in kinds.items()}
            for setup, kinds in trial.items()}


def check(result) -> Check:
    claim = ("a default container has its own mnt, uts, ipc, pid, net and cgroup namespaces and shares "
             "user and time with the host; --userns and --timens isolate those too")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    host, problems = result.data["host"], []
    for number, trial in enumerate(result.data["trials"], 1):
        for setup, kinds in trial.items():
            wanted = set(DEFAULT_ISOLATED) | set(SETUPS[setup])
            for kind, views in kinds.items():
                if views["inside"] != views["outside"]:
                    problems.append(f"trial {number} {setup}: {kind} seen inside ({views['inside']}) "
                                    f"differs from the host's view of the container ({views['outside']})")
                isolated = views["inside"] != host.get(kind)
                if isolated != (kind in wanted):
                    problems.append(f"trial {number} {setup}: {kind} is {'isolated' if isolated else 'shared'}")
    skipped = result.data.get("skipped_setups") or {}
    detail = "; ".join(problems) or "every kind as expected in every trial"
    if skipped:
        detail += "; not tried: " + ", ".join(f"{k} ({v})" for k, v in skipped.items())
    return Check(claim, not problems, detail)


def table_text(result) -> str:
    """The namespace table, as rebuilt on this host: the kernel release that introduced
    each kind and the one that completed it, and whether this host can make it."""
    rows = [("kind", "flag", "introduced", "complete", "here", "isolates")]
    for row in result.data["table"]:
        rows.append((row["kind"], row["flag"], row["introduced"], row["complete"],
                     "yes" if row["available"] else "no", row["isolates"]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5] for r in rows)


def plot(result):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    figure, axes = plt.subplots(figsize=(6, 4.2))
    kinds = [row["kind"] for row in result.data["table"]]
    grid = matrix(result) if result.data.get("trials") else {}
    setups = list(grid)
    cells = [[1 if grid[s].get(k) else 0 for s in setups] for k in kinds]
    axes.imshow(cells or [[0]], cmap=ListedColormap(["#d9d9d9", "#2b8cbe"]), vmin=0, vmax=1, aspect="auto")
    for row, kind in enumerate(kinds):
        for column, setup in enumerate(setups):
            axes.text(column, row, "isolated" if grid[setup].get(kind) else "shared", ha="center", va="center",
                      color="white" if grid[setup].get(kind) else "black", fontsize=9)
    axes.set_xticks(range(len(setups)), setups)
    axes.set_yticks(range(len(kinds)), kinds)
    axes.set_title("namespace inode: container vs host")
    figure.tight_layout()
    return figure
