"""Class-wide defaults an instructor sets in one file, and the most a container may ask for.

    # /etc/labkit/defaults.toml (as root; rootless: $XDG_CONFIG_HOME/labkit/defaults.toml;
    # $LABKIT_DEFAULTS names another file, for tests)
    [memory]
    default = "256m"      # what a container gets when it asks for nothing
    max = "1g"            # what no container may exceed (--memory 2g is refused, naming this file)
    [pids]
    default = 256
    max = 1024
    [cpus]
    default = 1
    max = 2
    [storage]             # the read-write layer (--storage-opt size=)
    default = "1g"
    max = "4g"
    [log_size]            # each of a detached container's stdout.log / stderr.log (--log-opt max-size=)
    default = "10m"
    [log_files]           # how many of each are kept, rotated (--log-opt max-file=)
    default = 3
    [import_size]         # bytes an imported image (or the archives one build ADDs) may unpack to
    default = "4g"
    [import_files]        # entries (files, directories, links) an imported image (or ADD) may unpack
    default = 1000000

Every table and key is optional. Without a file a container is bounded only where that
costs nothing: its logs (10 MiB x 3 each, as Docker's `local` log driver bounds by default)
and imports (4 GiB and a million entries unpacked, so a small gzip, bzip2 or xz bomb cannot
fill the disk or its inodes).
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError
from labkit.units import format_bytes, parse_bytes, parse_count, parse_cpus

SYSTEM_FILE = Path("/etc/labkit/defaults.toml")


@dataclass(frozen=True)
class Item:
    option: str       # how a user asks for it, for messages
    parse: object     # units.parse_bytes, parse_count or parse_cpus
    built_in: object = None

    def show(self, value) -> str:
        return format_bytes(value) if self.parse is parse_bytes else f"{value:g}"


ITEMS = {
    "memory": Item("--memory", parse_bytes),
    "pids": Item("--pids-limit", parse_count),
    "cpus": Item("--cpus", parse_cpus),
    "storage": Item("--storage-opt size", parse_bytes),
    "log_size": Item("--log-opt max-size", parse_bytes, 10 << 20),
    "log_files": Item("--log-opt max-file", parse_count, 3),
    "import_size": Item("the import size", parse_bytes, 4 << 30),
    "import_files": Item("the import's entry count", parse_count, 1_000_000),
}


@dataclass(frozen=True)
class Defaults:
    path: Path | None               # the file they came from (None: built in only)
    values: dict                    # item -> (default or None, max or None), parsed

    def default(self, name):
        return self.values[name][0]

    def maximum(self, name):
        return self.values[name][1]

    def resolve(self, name, asked):
        """`asked` (already parsed) or the default; refuses more than the file's max."""
        default, most = self.values[name]
        if asked is None:
            return default
        if most is not None and asked > most:
            item = ITEMS[name]
            raise ConfigError(
                f"{item.option} {item.show(asked)} is more than this host allows: {item.show(most)} "
                f"([{name}] max in {self.path}); ask for at most that, or ask whoever keeps that file")
        return asked


def defaults_file() -> Path:
    configured = os.environ.get("LABKIT_DEFAULTS")
    if configured:
        return Path(configured)
    from labkit.linux.rootless import running_rootless

    if not running_rootless():
        return SYSTEM_FILE
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "labkit" / "defaults.toml"


_cache = {}  # (path, mtime_ns, size) -> Defaults: read once per change, not per container


def class_defaults() -> Defaults:
    """The defaults in force: the file's, over the built-in ones."""
    path = defaults_file()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Defaults(None, {name: (item.built_in, None) for name, item in ITEMS.items()})
    except OSError as error:  # a directory on the way this user may not enter
        raise _unreadable(path, error) from None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _cache:
        _check_owner(path, st)
        _cache.clear()
        _cache[key] = Defaults(path, _parse(path))
    return _cache[key]


def _parse(path: Path) -> dict:
    try:  # imported only when there is a file: 10 ms of every `labkit run` otherwise
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (pyproject.toml)
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}; fix it or remove it") from None
    except OSError as error:
        raise _unreadable(path, error) from None
    unknown = sorted(set(table) - set(ITEMS))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}]; the tables are {', '.join(ITEMS)}")
    values = {}
    for name, item in ITEMS.items():
        entry = table.get(name, {})
        if not isinstance(entry, dict) or set(entry) - {"default", "max"}:
            raise ConfigError(f"{path}: [{name}] takes only `default` and `max`, e.g. default = \"256m\"")
        default = _value(path, name, "default", entry, item)
        most = _value(path, name, "max", entry, item)
        if default is None:  # asking for nothing must not mean more than the max
            default = item.built_in if most is None or (item.built_in is not None and item.built_in <= most) else most
        if most is not None and default is not None and default > most:
            raise ConfigError(f"{path}: [{name}] default {item.show(default)} is more than its max {item.show(most)}")
        values[name] = (default, most)
    return values


def _unreadable(path: Path, error: OSError) -> ConfigError:
    """The class's limits are in a file this user cannot read: refuse to run without them
    rather than guess (running with none would ignore the class's max)."""
    why = error.strerror or str(error)
    return ConfigError(f"the class defaults file {path} cannot be read by uid {os.geteuid()}: {why}; "
                       f"whoever keeps it must make it readable to every user (chmod a+r {path}, "
                       "and a+x on its directories), as it holds no secrets")


def _value(path, name, key, entry, item):
    if key not in entry:
        return None
    return item.parse(entry[key], f"{path}: [{name}] {key}")


def _check_owner(path: Path, st) -> None:
    """A file another user may write could raise every limit: refuse it rather than obey it."""
    if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(f"{path} may be changed by other users (owner uid {st.st_uid}, mode "
                          f"{oct(stat.S_IMODE(st.st_mode))}); make it yours or root's and not writable by others "
                          f"(chmod go-w {path})")
