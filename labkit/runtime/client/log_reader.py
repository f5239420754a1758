"""A detached container's logs read back: the last lines of each stream, and `-f`'s
follow of what is appended, across rotations (runtime/helper/logs.py writes them).

Runs in the caller: `labkit logs` and `%container logs` both read through here.
"""

import os
import time


def last_lines(paths, tail="all") -> bytes:
    """The files (oldest first) taken as one stream; `tail`: only its last N lines."""
    from labkit.errors import ConfigError

    data = b"".join(_read_all(paths))
    if tail == "all":
        return data
    if not str(tail).isdigit():
        raise ConfigError(f"--tail {tail!r} is not a number of lines (or 'all')")
    count = int(tail)
    return b"".join(data.splitlines(keepends=True)[-count:]) if count else b""


def _read_all(paths):
    for path in paths:
        try:
            with open(path, "rb") as handle:
                yield handle.read()
        except FileNotFoundError:
            continue   # rotated away meanwhile


def follow(files, write, running, interval=0.1) -> None:
    """`write(name, data)` what is appended to stdout.log and stderr.log of the
    ContainerDir `files` from now on, until `running()` says no (its last words are in the
    files by then: the helper drains the pipes before it reports the exit)."""
    readers = {name: LogReader(files.log(name)) for name in ("stdout", "stderr")}
    while True:
        still = running()
        for name, reader in readers.items():
            for data in reader.new_data():
                write(name, data)
        if not still:
            break
        time.sleep(interval)
    for reader in readers.values():
        reader.close()


class LogReader:
    """Reads a log file from its end on; when the helper rotates it (the path names a new
    file), what is left of the old one, then the new one from its start."""

    def __init__(self, path):
        self.path = path
        self.handle = None
        try:
            self.handle = open(path, "rb")
            self.handle.seek(0, os.SEEK_END)   # what was there is shown already
        except FileNotFoundError:
            pass

    def new_data(self):
        while True:
            if self.handle is not None:
                data = self.handle.read()
                if data:
                    yield data
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                return
            if self.handle is not None and os.fstat(self.handle.fileno()).st_ino == current:
                return
            self.close()
            self.handle = open(self.path, "rb")

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None
