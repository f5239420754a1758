"""The janitor: removes exited containers' directories beside the helper, not in it.

Runs in the helper (the `Janitor` object) and in one child process of the helper's (the
removals), forked at the first removal. Why it exists: removing a container's directory
(its read-write layer, work directory and files on the host's ext4, mounted with
`discard`) takes 5–90 ms on a busy disk. The helper is single-threaded: when starts come
back to back, a removal it did itself sat in front of the next request (a trace of 60
sequential starts on a loaded host: a median of 45 ms each, 3.4 s of 7.9). The janitor
removes them in its own process while the helper answers requests.

The helper sends each directory's path (NUL-terminated) on one pipe; the janitor removes
it and writes one byte back on another, in order. `wait` returns once every directory
sent is gone (the helper's `settle`: a ping, `no_leftovers`). If the janitor dies, the
helper removes what it had not confirmed itself. If the helper dies, the janitor finishes
the paths it was sent, reads EOF and exits: nothing it was given is left half-removed.
"""

import gc
import os
import selectors
from collections import deque

from labkit.runtime.container_dir import ContainerDir


class Janitor:
    def __init__(self, selector, inline=False):
        self.selector = selector
        self.inline = inline         # remove in the helper itself: no next request to keep waiting
        self.pid = None
        self.orders = None           # write end: paths, NUL-terminated
        self.done = None             # read end: one byte per path removed
        self.pending = deque()       # ContainerDir sent and not yet confirmed, in order

    def remove(self, directory: ContainerDir) -> None:
        """Have `directory` removed (by the janitor; here if it cannot be started or is gone,
        or when the helper removes inline)."""
        if self.pid is None and (self.inline or not self._start()):
            directory.remove()
            return
        try:
            os.write(self.orders, os.fsencode(str(directory.path)) + b"\0")
        except OSError:
            self._lost()
            directory.remove()
            return
        self.pending.append(directory)

    def wait(self) -> None:
        """Return once every directory sent is removed."""
        while self.pending:
            self.on_done(blocking=True)

    def close(self) -> None:
        """Every directory sent removed, and the janitor gone (the helper's shutdown): what is
        removed after this is removed inline (no request comes any more)."""
        self.wait()
        self.inline = True
        if self.pid is None:
            return
        os.close(self.orders)
        self.selector.unregister(self.done)
        os.close(self.done)
        os.waitpid(self.pid, 0)
        self.pid = self.orders = self.done = None

    def on_done(self, blocking=False) -> None:
        if self.done is None:
            return
        if not blocking:
            os.set_blocking(self.done, False)
        try:
            said = os.read(self.done, max(1, len(self.pending)))
        except BlockingIOError:
            return
        finally:
            os.set_blocking(self.done, True)
        if not said:
            self._lost()
            return
        for _ in said:
            if self.pending:
                self.pending.popleft()

    def _start(self) -> bool:
        from labkit.runtime.supervisor.slot import keep_only

        try:
            orders_r, orders_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return False
        try:
            done_r, done_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(orders_r)
            os.close(orders_w)
            return False
        try:
            pid = os.fork()
        except OSError:
            for fd in (orders_r, orders_w, done_r, done_w):
                os.close(fd)
            return False
        if pid == 0:
            try:
                gc.disable()   # a collection would touch (and so copy) every page shared with the helper
                keep_only({orders_r, done_w})
                _serve(orders_r, done_w)
            finally:
                os._exit(0)
        os.close(orders_r)
        os.close(done_w)
        self.pid, self.orders, self.done = pid, orders_w, done_r
        self.selector.register(done_r, selectors.EVENT_READ, lambda _fd: self.on_done())
        return True

    def _lost(self) -> None:
        """The janitor died (killed from outside): what it had not confirmed is removed here."""
        unconfirmed = list(self.pending)
        self.pending.clear()
        if self.pid is not None:
            self.selector.unregister(self.done)
            for fd in (self.orders, self.done):
                os.close(fd)
            os.waitpid(self.pid, 0)
            self.pid = self.orders = self.done = None
        for directory in unconfirmed:
            directory.remove()


def _serve(orders_r: int, done_w: int) -> None:
    """The janitor process: remove each path as it comes, confirm it; exit at EOF."""
    from labkit.linux import syscalls

    syscalls.prctl_set_name("labkit-janitor")
    buffer = b""
    while True:
        chunk = os.read(orders_r, 65536)
        if not chunk:
            return
        buffer += chunk
        *paths, buffer = buffer.split(b"\0")
        for path in paths:
            try:
                ContainerDir(os.fsdecode(path)).remove()
            except Exception:  # noqa: BLE001 — a directory that cannot be removed is the sweep's
                pass
            os.write(done_w, b".")
