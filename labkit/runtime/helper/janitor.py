"""The janitor: removes exited containers' directories beside the helper, not in it.

Runs in the helper (the `Janitor` object) and in one child process of the helper's (the
removals), forked at the first removal. Why it exists: removing a container's directory
(its read-write layer, work directory and files on the host's ext4, mounted with
`discard`) takes 5–90 ms on a busy disk. The helper is single-threaded: when starts come
back to back, a removal it did itself sat in front of the next request (a trace of 60
sequential starts on a loaded host: a median of 45 ms each, 3.4 s of 7.9). The janitor
removes them in its own process while the helper answers requests.

It also lets go of the mount namespaces the helper held for slots' first processes
(runtime/helper/ready_slots.py): the last close of one unmounts the container's overlay
(and syncs its upper layer when it is not volatile), work the helper must not wait for.

The helper sends each order as one packet on a socket (a directory's path to remove, or
a namespace's fd to close, before the directory of its container is removed); the janitor
does it and writes one byte back on a pipe, in order. `wait` returns once every directory
sent is gone (the helper's `settle`: a ping, `no_leftovers`). If the janitor dies, the
helper removes what it had not confirmed itself. If the helper dies, the janitor finishes
the paths it was sent, reads EOF and exits: nothing it was given is left half-removed.
"""

import gc
import os
import selectors
import socket
from collections import deque

from labkit.runtime.container_dir import ContainerDir


class Janitor:
    def __init__(self, selector, inline=False):
        self.selector = selector
        self.inline = inline         # remove in the helper itself: no next request to keep waiting
        self.pid = None
        self.orders = None           # our end of the orders' socket: one packet an order
        self.done = None             # read end: one byte per order done
        self.pending = deque()       # ContainerDir (None: a namespace) sent and not yet confirmed, in order
        self.spares = set()          # spare paths it was asked to keep: removed here if it dies

    def remove(self, directory: ContainerDir) -> None:
        """Have `directory` removed (by the janitor; here if it cannot be started or is gone,
        or when the helper removes inline)."""
        if not self._send(b"R" + os.fsencode(str(directory.path)), directory):
            directory.remove()

    def recycle(self, directory: ContainerDir, spare, init_names) -> None:
        """Keep `directory`'s skeleton as `spare` for the next slot's directory (ContainerDir.
        make_spare says why); what cannot be kept, or beyond MAX_SPARES, is removed."""
        order = b"\0".join([b"C" + os.fsencode(str(directory.path)), os.fsencode(str(spare)),
                             *(name.encode() for name in init_names)])
        if not self._send(order, directory):
            directory.remove()
            return
        self.spares.add(str(spare))

    def let_go(self, namespace_fd: int) -> None:
        """Close a held mount namespace's fd (ours is closed here either way)."""
        try:
            self._send(b"N", None, namespace_fd)
        finally:
            os.close(namespace_fd)

    def _send(self, order: bytes, pending, fd=None) -> bool:
        if self.pid is None and (self.inline or not self._start()):
            return False
        try:
            socket.send_fds(self.orders, [order], [] if fd is None else [fd])
        except OSError:
            self._lost()
            return False
        self.pending.append(pending)
        return True

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
        self.orders.close()
        self.selector.unregister(self.done)
        os.close(self.done)
        os.waitpid(self.pid, 0)   # it removed the spares it kept
        self.pid = self.orders = self.done = None
        self.spares.clear()

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
            orders_w, orders_r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return False
        try:
            done_r, done_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            orders_r.close()
            orders_w.close()
            return False
        try:
            pid = os.fork()
        except OSError:
            for end in (orders_r, orders_w):
                end.close()
            for fd in (done_r, done_w):
                os.close(fd)
            return False
        if pid == 0:
            try:
                gc.disable()   # a collection would touch (and so copy) every page shared with the helper
                keep_only({orders_r.fileno(), done_w})
                _serve(orders_r, done_w)
            finally:
                os._exit(0)
        orders_r.close()
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
            self.orders.close()
            os.close(self.done)
            os.waitpid(self.pid, 0)   # its namespaces' fds went with it
            self.pid = self.orders = self.done = None
        for directory in unconfirmed:
            if directory is not None:
                directory.remove()
        for spare in self.spares:
            ContainerDir(spare).remove()   # those no slot took (a taken one is gone from there)
        self.spares.clear()


MAX_SPARES = 4   # skeletons kept at once: a burst's worth (the pool holds 3 slots, 5 in a burst)


def _serve(orders: socket.socket, done_w: int) -> None:
    """The janitor process: do each order as it comes, confirm it; at EOF remove the
    spares it kept (no slot of its helper will take them) and exit."""
    from labkit.linux import syscalls

    syscalls.prctl_set_name("labkit-janitor")
    spares = set()   # the spare paths it made; taken ones are gone from their place
    while True:
        try:
            order, fds, _flags, _addr = socket.recv_fds(orders, 65536, 1)
        except InterruptedError:
            continue
        if not order:
            for spare in spares:
                ContainerDir(spare).remove()
            return
        for fd in fds:
            os.close(fd)   # a mount namespace let go: its mounts are taken down here
        try:
            if order[:1] == b"R":
                ContainerDir(os.fsdecode(order[1:])).remove()
            elif order[:1] == b"C":
                path, spare, *names = (os.fsdecode(part) for part in order[1:].split(b"\0"))
                spares = {kept for kept in spares if os.path.lexists(kept)}
                if len(spares) >= MAX_SPARES or not ContainerDir(path).make_spare(spare, names):
                    ContainerDir(path).remove()
                else:
                    spares.add(spare)
        except Exception:  # noqa: BLE001 — a directory that cannot be removed is the sweep's
            pass
        os.write(done_w, b".")
