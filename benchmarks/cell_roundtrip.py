"""A `%%container true` cell's round trip through a real labkit kernel, beside two
baselines measured in the same run: an empty cell (`pass`) and a shell-out (`!true`).

    python benchmarks/cell_roundtrip.py [--cells 50] [--quick] [--json FILE]

Round trip = execute_request sent until the kernel reports idle again (what a notebook
user waits for). The three cells are run in turn (a, b, c, a, b, c, ...), --cells of
each after a warm-up (the first container also starts the helper and builds the base
image). Goal in issue 13: a %%container cell ≤ 15 ms. Printed, never asserted.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import timing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_fixtures import LabkitKernel, searchable  # noqa: E402

CELLS = {"empty cell (pass)": "pass", "!true": "!true", "%%container true": "%%container\ntrue"}
GOAL_MS = 15.0
WARMUP = 5


def round_trip(kernel, code) -> float:
    started = time.perf_counter()
    reply = kernel.run(code)
    seconds = time.perf_counter() - started
    if reply.status != "ok":
        raise RuntimeError(f"{code!r} failed: {reply.ename}: {reply.evalue}")
    return seconds


def measure(cells: int) -> dict:
    taken = {name: [] for name in CELLS}
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as home:
        kernel = LabkitKernel(searchable(Path(home)))
        try:
            for round_number in range(WARMUP + cells):
                for name, code in CELLS.items():
                    seconds = round_trip(kernel, code)
                    if round_number >= WARMUP:
                        taken[name].append(seconds)
        finally:
            kernel.shutdown()
    return {"rows": {name: timing.summary(seconds) for name, seconds in taken.items()}, "goal_ms": GOAL_MS}


def report(data: dict) -> None:
    rows = data["rows"]
    base, shell = rows["empty cell (pass)"]["median_ms"], rows["!true"]["median_ms"]
    print(f"cell round trip through a real kernel (median / p90 ms of {rows['!true']['runs']}, cells in turn)")
    for name, row in rows.items():
        print(f"  {name:20} {row['median_ms']:7.2f} / {row['p90_ms']:7.2f} ms   "
              f"{row['median_ms'] / base:6.1f}x empty cell   {row['median_ms'] / shell:5.2f}x !true")
    container = rows["%%container true"]["median_ms"]
    print(f"%%container adds {container - base:.2f} ms to a cell; goal ≤ {GOAL_MS:.0f} ms round trip: "
          f"{'met' if container <= GOAL_MS else 'not met'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="3 cells of each: checks that everything runs")
    parser.add_argument("--json", help="also write the rows and raw samples to this file")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/cell_roundtrip.py needs root: %%container makes namespaces, cgroups and mounts")
    data = measure(3 if options.quick else options.cells)
    report(data)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(data, handle, indent=1)


if __name__ == "__main__":
    main()
