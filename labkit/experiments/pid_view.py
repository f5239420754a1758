"""The container's process tree as it sees it (its own PID namespace, numbered from 1)
next to the same processes as the host sees them. /proc/<pid>/status has both numbers:
`NSpid:  <host pid>  <pid in the container>`.
"""

import time
from dataclasses import dataclass

from labkit.experiments.base import Check, repeat_trials, running

# PID 1 with a child, and a subshell with two children of its own: a tree of five.
TREE = "sleep 600 & (sleep 600 & sleep 600 & wait) & wait"
TREE_SIZE = 5


@dataclass
class Params:
    trials: int = 1


def run(params: Params, progress=None):
    return repeat_trials("pid_view", params, _one_view, "ps inside, /proc outside", progress)


def _one_view() -> dict:
    with running(command=["sh", "-c", TREE]) as container:
        _wait_for_tree(container)
        listing = container.exec(["ps", "-o", "pid,ppid,comm"]).check().stdout
        host = [_host_row(pid) for pid in container.pids()]
        pid1 = container.pid
    inside = []
    for line in listing.splitlines()[1:]:
        pid, ppid, name = line.split(None, 2)
        if name.strip() != "ps":   # the looking process itself
            inside.append({"pid": int(pid), "ppid": int(ppid), "name": name.strip()})
    return {"inside": inside, "host": [row for row in host if row], "pid1_on_host": pid1}


def _wait_for_tree(container, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(container.pids()) < TREE_SIZE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the container's process tree did not appear: {container.top()}")
        time.sleep(0.01)


def _host_row(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None   # gone between listing and reading
    return {"pid": pid, "ppid": int(fields["PPid"]), "name": fields["Name"],
            "nspid": [int(n) for n in fields["NSpid"].split()]}


def check(result) -> Check:
    claim = ("a container's processes are ordinary host processes: each has a host PID and a PID in "
             "the container, which numbers its own from 1")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    problems = []
    for number, trial in enumerate(result.data["trials"], 1):
        by_inner = {row["nspid"][-1]: row for row in trial["host"] if len(row["nspid"]) > 1}
        host_by_pid = {row["pid"]: row for row in trial["host"]}
        if by_inner.get(1, {}).get("pid") != trial["pid1_on_host"]:
            problems.append(f"trial {number}: container PID 1 is not host PID {trial['pid1_on_host']}")
        for row in trial["inside"]:
            twin = by_inner.get(row["pid"])
            if twin is None or twin["name"] != row["name"]:
                problems.append(f"trial {number}: no host process is container PID {row['pid']} ({row['name']})")
            elif row["ppid"] and host_by_pid.get(twin["ppid"], {}).get("nspid", [None])[-1] != row["ppid"]:
                problems.append(f"trial {number}: parent of {row['pid']} differs between the two views")
        if sorted(r["pid"] for r in trial["inside"]) != list(range(1, len(trial["inside"]) + 1)):
            problems.append(f"trial {number}: container PIDs are not 1..{len(trial['inside'])}")
    trial = result.data["trials"][0]
    detail = "; ".join(problems) or (f"{len(trial['inside'])} processes; container PID 1 is host PID "
                                     f"{trial['pid1_on_host']}")
    return Check(claim, not problems, detail)


def tree_lines(rows, pid_of, label) -> list:
    """Indented `pid name` lines, children under their parent."""
    children, known = {}, {pid_of(r) for r in rows}
    for row in rows:
        parent = row["parent"] if row["parent"] in known else None
        children.setdefault(parent, []).append(row)
    lines = []

    def walk(parent, depth):
        for row in sorted(children.get(parent, []), key=pid_of):
            lines.append("   " * depth + ("└─ " if depth else "") + f"{label(row)}")
            walk(pid_of(row), depth + 1)
    walk(None, 0)
    return lines


def plot(result):
    import matplotlib.pyplot as plt

    trial = result.data["trials"][0]
    inside = [dict(r, parent=r["ppid"]) for r in trial["inside"]]
    host = [dict(r, parent=r["ppid"]) for r in trial["host"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 2.2))
    panels = (
        (left, "inside: the container's PID namespace",
         tree_lines(inside, lambda r: r["pid"], lambda r: f"PID {r['pid']:<3} {r['name']}")),
        (right, "outside: the same processes on the host",
         tree_lines(host, lambda r: r["pid"], lambda r: f"PID {r['pid']:<7} {r['name']}  (NSpid {r['nspid'][-1]})")),
    )
    for axes, title, lines in panels:
        axes.axis("off")
        axes.set_title(title, fontsize=10)
        axes.text(0.02, 0.95, "\n".join(lines), family="monospace", fontsize=10, va="top", transform=axes.transAxes)
    figure.tight_layout()
    return figure
