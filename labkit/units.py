"""Docker-style units: `64m`, `1g`, `512k`, `0.5` CPUs."""

import re

from labkit.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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
        number = int(float(match.group(1)) * _FACTOR[match.group(2).lower()])
    if number <= 0:
        raise ConfigError(f"{what} {value!r} must be more than zero")
    return number


def parse_cpus(value, what="CPU value") -> float:
    """`0.5` -> 0.5 of one core; must be positive."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number; give a fraction of cores such as 0.5 or 2") from None
    if not cpus > 0 or cpus != cpus or cpus == float("inf"):
        raise ConfigError(f"{what} {value!r} must be a positive number of cores, such as 0.5")
    return cpus


def parse_count(value, what="pids limit") -> int:
    try:
        count = int(str(value), 10)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a whole number") from None
    if count <= 0:
        raise ConfigError(f"{what} {value!r} must be at least 1")
    return count


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
