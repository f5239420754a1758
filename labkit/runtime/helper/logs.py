"""A detached container's stdout.log and stderr.log, bounded and rotated.

Why the helper writes them, not the container: a file the container holds open grows
without end, and nothing can rotate it under the writer. Docker's json-file driver reads
the container's pipes and starts a new file at `max-size`, keeping `max-file` of them;
labkit's helper does the same in its loop: the container writes into a pipe, the helper
into the files (`stdout.log` newest, then `stdout.log.1`, … oldest).
"""

import os
import selectors
from pathlib import Path


class RotatingLog:
    """Bytes appended to `path`; at `max_size` the file becomes `path.1` (`path.1` becomes
    `path.2`, …) and a new one starts; at most `max_files` files are kept, this one included."""

    def __init__(self, path, max_size: int, max_files: int):
        self.path = Path(path)
        self.max_size = max_size
        self.max_files = max_files
        self.fd = None
        self.size = 0

    def write(self, data: bytes) -> None:
        while data:
            if self.fd is None:
                self.open()
            if self.size >= self.max_size:
                self._rotate()
                continue
            part = data[:self.max_size - self.size]
            written = os.write(self.fd, part)
            self.size += written
            data = data[written:]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        self.close()
        if self.max_files == 1:
            os.truncate(self.path, 0)
            return
        # Only the files there are: --log-opt max-file=99999999999999999999 is a number
        # Python takes, and a loop over every number below it never ended (the helper hung).
        last = 0
        while last + 1 < self.max_files and self._numbered(last + 1).exists():
            last += 1
        if last == self.max_files - 1:
            os.unlink(self._numbered(last))
            last -= 1
        for number in range(last, 0, -1):
            os.rename(self._numbered(number), self._numbered(number + 1))
        os.rename(self.path, self._numbered(1))

    def _numbered(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")


class LogPipes:
    """The helper's side: a pipe per stream of each detached container, read in the
    helper's loop into a RotatingLog."""

    def __init__(self, selector):
        self.selector = selector
        self.open = {}   # container id -> [(read fd, RotatingLog)]

    def make(self, container_id, paths: dict, max_size: int, max_files: int) -> dict:
        """{"stdout": path, "stderr": path} -> {"stdout": write fd, ...} to hand the container."""
        ends = {}
        for name, path in paths.items():
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(read_end, False)
            log = RotatingLog(path, max_size, max_files)
            log.open()  # there from the start, as Docker's, even before the first line
            self.open.setdefault(container_id, []).append((read_end, log))
            self.selector.register(read_end, selectors.EVENT_READ, lambda fd, c=container_id, lg=log: self.on_data(c, fd, lg))
            ends[name] = write_end
        return ends

    def on_data(self, container_id, fd, log) -> bool:
        """Read what is there into the log; True if there was something (more may follow),
        False if nothing now or the stream ended (then it is closed)."""
        if (fd, log) not in self.open.get(container_id, ()):
            # Closed earlier in the same round of events (its container was removed by a
            # request read just before): the fd is gone, or already another's.
            return False
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            self._close(container_id, fd, log)
            return False
        try:
            log.write(chunk)
        except OSError:
            pass  # its directory is gone (removed while it ran): the output has nowhere to go
        return True

    def drain(self, container_id) -> None:
        """Everything already written (the container has exited: its writers are gone)."""
        for fd, log in list(self.open.get(container_id, [])):
            while self.on_data(container_id, fd, log):
                pass

    def close(self, container_id) -> None:
        for fd, log in list(self.open.get(container_id, [])):
            self._close(container_id, fd, log)

    def close_all(self) -> None:
        for container_id in list(self.open):
            self.close(container_id)

    def _close(self, container_id, fd, log) -> None:
        self.selector.unregister(fd)
        os.close(fd)
        log.close()
        entries = self.open.get(container_id, [])
        entries.remove((fd, log))
        if not entries:
            self.open.pop(container_id, None)

