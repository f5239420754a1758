"""Docker-style units: `64m`, `1g`, `512k`, `0.5` CPUs, seconds.

Each parser refuses what the kernel would refuse later (a cgroup write error, an
overflow deep in setup), naming the option, the value and what would work."""

import math
import re

from labkit.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_BYTES = (1 << 63) - 1   # what the kernel's counters (and Docker) take: a signed 64-bit number
# CFS bandwidth: the kernel refuses a quota below 1 ms or above 2^44-1 us per period, and
# labkit's period is 100 ms (labkit.cgroups.base.CPU_PERIOD_US).
MIN_CPUS = 0.01
MAX_CPUS = ((1 << 44) - 1) / 100_000


def parse_bytes(value, what="size") -> int:
    """`64m` -> 67108864. Suffixes are powers of 1024, as in Docker (`b`, `k`, `m`, `g`, `t`).
    `what` names the option in errors (`--memory`), so the person knows which one to fix."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} {value!r} is not a size; give bytes or e.g. 64m, 1g")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(
                f"{what} {value!r} is not a size; give bytes or a number with k, m, g or t (e.g. 64m, 1g)"
            )
        # Exact: a float would turn 400 digits into inf, and 1.1g into a rounding error.
        from fractions import Fraction   # here: fractions and decimal are ~3 ms of every labkit run's start

        number = int(Fraction(match.group(1)) * _FACTOR[match.group(2).lower()])
    if number <= 0:
        raise ConfigError(f"{what} {value!r} must be more than zero")
    if number > MAX_BYTES:
        raise ConfigError(f"{what} {value!r} is more than the kernel can count (at most 8 EiB, 2^63-1 bytes)")
    return number


def parse_cpus(value, what="CPU value") -> float:
    """`0.5` -> 0.5 of one core, from 0.01 (1 ms of each 100 ms) to what a CFS quota can hold."""
    try:
        cpus = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what} {value!r} is not a number; give a fraction of cores such as 0.5 or 2") from None
    if not math.isfinite(cpus) or cpus <= 0:
        raise ConfigError(f"{what} {value!r} must be a positive number of cores, such as 0.5")
    if cpus < MIN_CPUS:
        raise ConfigError(f"{what} {value!r} is less than the kernel's smallest quota: give at least {MIN_CPUS} "
                          "(1 ms of CPU time in each 100 ms)")
    if cpus > MAX_CPUS:
        raise ConfigError(f"{what} {value!r} is more than a CFS quota can hold: give at most {MAX_CPUS:.0f} "
                          "(or leave it out for no CPU limit)")
    return cpus


def parse_count(value, what="pids limit", most=None) -> int:
    """A whole number from 1 to `most` (when given)."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", text):
        raise ConfigError(f"{what} {value!r} is not a whole number")
    count = int(text, 10)
    if count <= 0:
        raise ConfigError(f"{what} {value!r} must be at least 1")
    if most is not None and count > most:
        raise ConfigError(f"{what} {value!r} is more than the kernel allows: give at most {most}")
    return count


def parse_seconds(value, what, least=None, most=None) -> float:
    """A finite number of seconds; `least`/`most` bound it (inclusive), when given."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"{what} {value!r} is not a finite number of seconds; give e.g. 30")
    if least is not None and seconds < least:
        raise ConfigError(f"{what} {value!r} is too small: give at least {least:g} seconds")
    if most is not None and seconds > most:
        raise ConfigError(f"{what} {value!r} is too large: give at most {most:g} seconds")
    return seconds


def format_bytes(count) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def parse_assignments(pairs, what="setting") -> dict:
    """["KEY=VALUE", ...] (as given to -e or -p) -> {"KEY": "VALUE"}; a pair without '='
    or without a key is refused by name."""
    assignments = {}
    for pair in pairs:
        key, equals, value = str(pair).partition("=")
        if not equals or not key:
            raise ConfigError(f"{what} {pair!r} is not KEY=VALUE")
        assignments[key] = value
    return assignments
