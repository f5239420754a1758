"""The one timing loop every benchmark uses: a few unmeasured warm-up calls, then one
perf_counter sample per call. Benchmarks run as scripts, so this directory is on sys.path."""

import time


def samples(function, runs: int, warmup: int = 0) -> list:
    """Seconds taken by each of `runs` calls of `function()`, sorted, after `warmup` calls."""
    for _ in range(warmup):
        function()
    taken = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        taken.append(time.perf_counter() - started)
    return sorted(taken)
