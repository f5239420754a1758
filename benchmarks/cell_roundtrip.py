"""A `%%container true` cell's round trip through a real labkit kernel, beside two
baselines measured in the same run: an empty cell (`pass`) and a shell-out (`!true`).

    python benchmarks/cell_roundtrip.py [--cells 50]

Round trip = execute_request sent until the kernel reports idle again (what a notebook
user waits for). Medians over --cells cells after a warm-up (the first container also
starts the helper and builds the base image). Goal in the issue: %%container ≤ 25 ms.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_fixtures import LabkitKernel, searchable  # noqa: E402

CELLS = {"empty cell (pass)": "pass", "!true": "!true", "%%container true": "%%container\ntrue"}


def round_trips(kernel, code, count):
    times = []
    for _ in range(count):
        started = time.perf_counter()
        reply = kernel.run(code)
        times.append(time.perf_counter() - started)
        assert reply.status == "ok", f"{code!r} failed: {reply.ename}: {reply.evalue}"
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: %%container makes namespaces, cgroups and mounts")
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as home:
        kernel = LabkitKernel(searchable(Path(home)))
        try:
            for code in CELLS.values():
                round_trips(kernel, code, 5)  # warm-up: helper, base image, imports
            medians = {name: statistics.median(round_trips(kernel, code, options.cells))
                       for name, code in CELLS.items()}
        finally:
            kernel.shutdown()
    base = medians["empty cell (pass)"]
    shell = medians["!true"]
    print(f"cell round trip through a real kernel, median of {options.cells}")
    for name, seconds in medians.items():
        print(f"  {name:20} {seconds * 1000:7.2f} ms   {seconds / base:6.1f}x empty cell   "
              f"{seconds / shell:5.2f}x !true")
    container = medians["%%container true"]
    print(f"%%container adds {1000 * (container - base):.2f} ms to a cell; "
          f"goal <= 25 ms round trip: {'met' if container <= 0.025 else 'NOT met'}")


if __name__ == "__main__":
    main()
