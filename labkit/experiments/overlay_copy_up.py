"""What the union filesystem costs. Two measurements on images built for the purpose
in a scratch image store (removed afterwards):

* copy-up: opening a file that lives in a read-only image layer for writing copies the
  whole file up into the container's read-write layer (at open(2), before a byte is
  written), so it costs more the larger the file; a second open finds it there and
  does not copy again.
* lookup: a name not yet looked up is searched in every layer that has its directory,
  top to bottom, so a first lookup costs more the more layers the image has.

Timed from the host through /proc/<pid>/root, which is the container's own root (the
same overlay mount): busybox has no clock finer than 10 ms, the host has perf_counter.
"""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from labkit.experiments.base import Check, finished, idle_cpu_seconds, median, new_result, report, running

MIB = 1 << 20
BUSY_IDLE_CORES = 0.5   # fewer CPUs idle than this while timing: the times are the host's


@dataclass
class Params:
    sizes_mib: tuple = (1, 4, 16, 64)      # files in a lower layer, written once each
    depths: tuple = (1, 16, 64, 128)        # image layers above busybox's
    lookups: int = 500                      # distinct files looked up per container
    trials: int = 3


def run(params: Params, progress=None):
    from labkit.images import Store, ensure_busybox

    result = new_result("overlay_copy_up", params)
    home = tempfile.mkdtemp(prefix="labkit-overlay-experiment-")
    try:
        store = Store(home)
        base = ensure_busybox(store)
        big = _image(store, base, "big-files", [_layer(store, {f"big/f{s}": s * MIB for s in params.sizes_mib})])
        data = _layer(store, {f"data/f{i}": 0 for i in range(params.lookups)})
        markers = [_layer(store, {f"data/marker-{i}": 0}) for i in range(1, max(params.depths))]
        stacks = {d: _image(store, base, f"depth-{d}", [data] + markers[:d - 1]) for d in params.depths}
        total, done = params.trials * (1 + len(params.depths)), 0
        copy_up, lookup = [], []
        for trial in range(1, params.trials + 1):
            copy_up.append(_time_copy_up(big, params.sizes_mib))
            done += 1
            report(progress, done, total, "first and second opens for writing")
            for depth, image in stacks.items():
                lookup.append({"depth": depth, **_time_lookups(image, params.lookups)})
                done += 1
                report(progress, done, total, f"lookups through {depth} layers")
        result.data = {"copy_up": copy_up, "lookup": lookup}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return finished(result)


def _layer(store, files: dict) -> str:
    """A layer holding `files` ({path: size in bytes}); returns its digest."""
    with store.scratch() as scratch:
        root = scratch / "layer"
        for path, size in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                for _ in range(size // MIB):
                    handle.write(b"\xab" * MIB)   # real data: a hole would not be copied
                handle.write(b"\xab" * (size % MIB))
        return store.add_layer(root)


def _image(store, base, name, layers):
    return store.save_image(name, list(base.layers) + layers, base.config, [])


def _time_copy_up(image, sizes) -> dict:
    rows = []
    with running(image=image, command=["sleep", "600"]) as container:
        idle_before, started = idle_cpu_seconds(), time.perf_counter()
        root = f"/proc/{container.pid}/root"
        for size in sizes:
            path = f"{root}/big/f{size}"
            copy = container.upper_dir / "big" / f"f{size}"
            first, copied_at_open = _append(path, copy)
            second, _ = _append(path, copy)
            rows.append({"size_mib": size, "first_ms": first * 1e3, "second_ms": second * 1e3,
                         "copied_up": copied_at_open == size * MIB})
        idle = (idle_cpu_seconds() - idle_before) / (time.perf_counter() - started)
    return {"rows": rows, "idle_cores": round(idle, 4)}   # CPUs left idle while it timed, on average


def _append(path, copy) -> tuple:
    """Seconds to open `path` for writing and append one byte; and the size of its copy
    in the read-write layer right after open(2), before the write (None: no copy)."""
    started = time.perf_counter()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)   # the copy-up happens here
    try:
        copied = os.stat(copy).st_size if copy.exists() else None
        os.write(descriptor, b"x")
    finally:
        os.close(descriptor)
    return time.perf_counter() - started, copied


def _time_lookups(image, count) -> dict:
    with running(image=image, command=["sleep", "600"]) as container:
        names = [f"/proc/{container.pid}/root/data/f{i}" for i in range(count)]
        first = _stat_all(names)
        again = _stat_all(names)
    # The second pass finds every name cached: the difference is the layer search.
    return {"first_us": first / count * 1e6, "again_us": again / count * 1e6}


def _stat_all(names) -> float:
    started = time.perf_counter()
    for name in names:
        os.stat(name)
    return time.perf_counter() - started


def summary(result) -> dict:
    """Medians over trials: {"copy_up": {size: (first, second)}, "lookup": {depth: µs}}."""
    copy_up, lookup = {}, {}
    for trial in result.data["copy_up"]:
        for row in trial["rows"]:
            copy_up.setdefault(row["size_mib"], []).append(row)
    for row in result.data["lookup"]:
        lookup.setdefault(row["depth"], []).append(row["first_us"] - row["again_us"])
    return {
        "copy_up": {size: (median([r["first_ms"] for r in rows]), median([r["second_ms"] for r in rows]))
                    for size, rows in sorted(copy_up.items())},
        "lookup": {depth: median(values) for depth, values in sorted(lookup.items())},
    }


def check(result) -> Check:
    claim = ("opening a file from an image layer for writing copies the whole file up before anything is "
             "written, costing more for larger files (a second open does not copy again), and a first lookup "
             "costs more through more layers")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    numbers, problems, unjudged = summary(result), [], []
    sizes, depths = list(numbers["copy_up"]), list(numbers["lookup"])
    small, large = numbers["copy_up"][sizes[0]], numbers["copy_up"][sizes[-1]]
    if not all(row["copied_up"] for trial in result.data["copy_up"] for row in trial["rows"]):
        problems.append("a file opened for writing was not in the read-write layer, whole, right after open")
    # Tolerances: a file 16x larger must cost at least 2x more; the deepest stack at
    # least 1.5x the shallowest per lookup (both far below the measured growth).
    # A copy-up is a copy through the page cache, CPU work: when the host left less than
    # half a CPU idle while it was timed, other work set the times and a timing point that
    # fails cannot be judged (as cpu_quota judges a busy host). Older records lack the field.
    idle = min((trial.get("idle_cores", float("inf")) for trial in result.data["copy_up"]), default=float("inf"))
    timing = unjudged if idle < BUSY_IDLE_CORES else problems
    busy = f" with {idle:.2f} CPUs idle" if timing is unjudged else ""
    if sizes[-1] >= 16 * sizes[0] and not large[0] >= 2 * small[0]:
        timing.append(f"copy-up of {sizes[-1]} MiB took {large[0]:.2f} ms, not 2x the {small[0]:.2f} ms of {sizes[0]} MiB{busy}")
    if not large[0] > 2 * large[1]:
        timing.append(f"first open for writing {large[0]:.2f} ms is not clearly slower than the second {large[1]:.2f} ms{busy}")
    shallow, deep = numbers["lookup"][depths[0]], numbers["lookup"][depths[-1]]
    if not deep >= 1.5 * max(shallow, 0.01):
        problems.append(f"lookup through {depths[-1]} layers {deep:.2f} µs is not 1.5x that through {depths[0]} ({shallow:.2f} µs)")
    detail = (f"copy-up {sizes[0]} MiB {small[0]:.2f} ms → {sizes[-1]} MiB {large[0]:.2f} ms (second open {large[1]:.3f} ms); "
              f"lookup {depths[0]} layer(s) {shallow:.2f} µs → {depths[-1]} layers {deep:.2f} µs")
    return Check.judge(claim, problems, unjudged, detail)


def plot(result):
    import matplotlib.pyplot as plt

    numbers = summary(result)
    figure, (copy_axes, lookup_axes) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = list(numbers["copy_up"])
    for trial in result.data["copy_up"]:
        copy_axes.plot([r["size_mib"] for r in trial["rows"]], [r["first_ms"] for r in trial["rows"]],
                       "o", color="#2b8cbe", alpha=0.4)
    copy_axes.plot(sizes, [numbers["copy_up"][s][0] for s in sizes], "-", color="#2b8cbe", label="first open for writing (copy-up)")
    copy_axes.plot(sizes, [numbers["copy_up"][s][1] for s in sizes], "-", color="#fdae61", label="second open")
    copy_axes.set_xscale("log", base=2)
    copy_axes.set_yscale("log")
    copy_axes.set_xlabel("file size in the image layer (MiB)")
    copy_axes.set_ylabel("ms to open for writing and write 1 byte")
    copy_axes.set_title("copy-up cost vs file size")
    copy_axes.legend(fontsize=8)
    depths = list(numbers["lookup"])
    for row in result.data["lookup"]:
        lookup_axes.plot(row["depth"], row["first_us"] - row["again_us"], "o", color="#2b8cbe", alpha=0.4)
    lookup_axes.plot(depths, [numbers["lookup"][d] for d in depths], "-", color="#2b8cbe")
    lookup_axes.set_xlabel("image layers the directory is spread over")
    lookup_axes.set_ylabel("µs per first lookup (minus cached)")
    lookup_axes.set_title("lookup cost vs layer depth")
    figure.tight_layout()
    return figure
