"""Image benchmarks, printed as ratios against baselines measured in the same run.

1. commit of a 100 MiB upper dir against what a commit cannot avoid: reading every
   byte (`tar -cf - DIR | cat > /dev/null`) plus its sha256 (OpenSSL through hashlib,
   on the same number of bytes in memory). Goal: <= 1.5x that sum. GNU tar notices when
   its archive *is* /dev/null and then skips reading file contents, so
   `tar -cf /dev/null` measures only the directory walk; it is printed for reference.
2. warm-cache rebuild vs cold build of the same recipe (goal: <= 10%).

Run as root:  .venv/bin/python benchmarks/images.py [--repeat 5] [--mib 100] [--commit-only]
                                                    [--quick] [--json FILE]
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timing

SIZE_MIB = 100
COMMIT_GOAL = 1.5   # × (tar read + sha256)
RECIPE = """\
FROM busybox
RUN echo one > /one && mkdir -p /data
COPY blob.bin /data/blob.bin
RUN sha256sum /data/blob.bin > /data/blob.sha256
ENV MODE=bench
RUN ls -R / > /listing.txt 2>/dev/null || true
"""


def make_upper(directory: Path, mib: int) -> None:
    """`mib` MiB: nine tenths in files of 1 MiB, one tenth in files of 4 KiB, in nested
    directories (100 MiB: 90 files of 1 MiB and 2560 of 4 KiB)."""
    directory.mkdir(parents=True)
    for index in range(mib * 9 // 10):
        (directory / "big").mkdir(exist_ok=True)
        (directory / "big" / f"{index:03}.bin").write_bytes(os.urandom(1 << 20))
    for index in range((mib - mib * 9 // 10) * 256):
        folder = directory / "small" / f"{index // 100:02}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04}.txt").write_bytes(os.urandom(4096))
    subprocess.run(["tar", "-cf", "-", "-C", str(directory), "."], stdout=subprocess.DEVNULL, check=True)  # warm cache


def bench_commit(home: Path, repeat: int, mib: int = SIZE_MIB) -> dict:
    from labkit.images import commit, get_image
    from labkit.images.layers import layer_digest
    from labkit.images.store import Store

    store = Store(home)
    base = get_image("busybox", store)
    upper = home / "upper"
    make_upper(upper, mib)

    def tar_to_dev_null():
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(upper), "."], check=True)

    def tar_through_pipe():
        subprocess.run(f"tar -cf - -C {upper} . | cat > /dev/null", shell=True, check=True)

    copied, moved = [], []

    def commit_copy():
        started = time.perf_counter()
        commit(upper, base, "bench", store=store)
        copied.append(time.perf_counter() - started)
        store.remove_image("bench", layers_used_by_containers=set)  # cleanup, not timed: deleting 2650 files is slow here too

    spare = home / "spare"

    def commit_move():
        shutil.copytree(upper, spare, symlinks=True)
        started = time.perf_counter()
        commit(spare, base, "bench", store=store, consume=True)
        moved.append(time.perf_counter() - started)
        store.remove_image("bench", layers_used_by_containers=set)
        shutil.rmtree(spare)

    def digest_only():
        layer_digest(upper)

    data = os.urandom(mib << 20)

    def openssl_sha256():
        hashlib.sha256(data).digest()

    samples = {"tar -cf /dev/null": timing.samples(tar_to_dev_null, repeat),
               "tar -cf - | cat": timing.samples(tar_through_pipe, repeat)}
    timing.samples(commit_copy, repeat)
    timing.samples(commit_move, repeat)
    samples["commit (copy, container kept)"] = copied
    samples["commit (move)"] = moved
    samples["labkit digest alone"] = timing.samples(digest_only, repeat)
    samples["sha256 (OpenSSL)"] = timing.samples(openssl_sha256, repeat)
    rows = {name: timing.summary(seconds) for name, seconds in samples.items()}
    ms = {name: row["median_ms"] for name, row in rows.items()}
    baseline = ms["tar -cf - | cat"] + ms["sha256 (OpenSSL)"]
    copy, move, floor = ms["commit (copy, container kept)"], ms["commit (move)"], ms["labkit digest alone"]
    print(f"commit of a {mib} MiB upper dir (median of {repeat}):")
    print(f"  tar -cf /dev/null (skips reading!)  {ms['tar -cf /dev/null']:8.1f} ms")
    print(f"  tar -cf - | cat >/dev/null          {ms['tar -cf - | cat']:8.1f} ms")
    print(f"  sha256 of {mib} MiB (OpenSSL)        {ms['sha256 (OpenSSL)']:8.1f} ms")
    print(f"  read + digest (the two above)       {baseline:8.1f} ms   baseline")
    print(f"  commit (copy, container kept)       {copy:8.1f} ms   ratio {copy / baseline:.2f}x  "
          f"(goal <= {COMMIT_GOAL}x: {'met' if copy / baseline <= COMMIT_GOAL else 'not met'})")
    print(f"  commit (move, as a build does)      {move:8.1f} ms   ratio {move / baseline:.2f}x")
    print(f"  labkit's digest alone (canonical tar, no copy) {floor:.1f} ms = {floor / baseline:.2f}x")
    return {"mib": mib, "rows": rows, "baseline_ms": baseline, "ratio": copy / baseline, "goal": COMMIT_GOAL}


def bench_build(root: Path, repeat: int) -> dict:
    from labkit.images import get_image
    from labkit.images.builder import build
    from labkit.images.store import Store

    try:
        from labkit.runtime.client.build_step import run_build_step
    except ImportError:
        print("build: skipped, labkit.runtime is not available")
        return {}
    context = root / "context"
    context.mkdir()
    (context / "blob.bin").write_bytes(os.urandom(10 << 20))
    colds, warms = [], []
    for attempt in range(repeat):
        home = root / f"home-{attempt}"
        os.environ["LABKIT_HOME"] = str(home)
        store = Store(home)
        get_image("busybox", store)  # the base image is not part of the build
        started = time.perf_counter()
        build(RECIPE, "bench", context, store=store, run_step=run_build_step)
        colds.append(time.perf_counter() - started)
        started = time.perf_counter()
        build(RECIPE, "bench", context, store=store, run_step=run_build_step)
        warms.append(time.perf_counter() - started)
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"build of a 5-step recipe (3 RUN, 1 COPY of 10 MiB; median of {repeat}):")
    print(f"  cold build                          {cold * 1000:8.1f} ms   baseline")
    print(f"  warm rebuild (all cached)           {warm * 1000:8.1f} ms   ratio {warm / cold:.1%}  (goal <= 10%)")
    return {"rows": {"cold build": timing.summary(colds), "warm rebuild": timing.summary(warms)}, "ratio": warm / cold}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mib", type=int, default=SIZE_MIB, help="size of the committed upper dir")
    parser.add_argument("--commit-only", action="store_true", help="skip the build benchmark")
    parser.add_argument("--quick", action="store_true", help="8 MiB, once: checks that everything runs")
    parser.add_argument("--json", help="also write the rows and raw samples to this file")
    options = parser.parse_args()
    if options.quick:
        options.repeat, options.mib = 1, 8
    if os.geteuid() != 0:
        print("benchmarks/images.py needs root (whiteouts, overlay, containers)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="labkit-bench-images-"))
    saved_home = os.environ.get("LABKIT_HOME")
    try:
        os.environ["LABKIT_HOME"] = str(root / "home")
        data = {"commit": bench_commit(root / "home", options.repeat, options.mib)}
        if not options.commit_only:
            data["build"] = bench_build(root, options.repeat)
    finally:
        if saved_home is None:
            os.environ.pop("LABKIT_HOME", None)
        else:
            os.environ["LABKIT_HOME"] = saved_home
        shutil.rmtree(root, ignore_errors=True)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(data, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
