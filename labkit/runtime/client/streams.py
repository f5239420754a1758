"""A container's stdout and stderr on the owner's side: read from pipes as data arrives,
decoded, handed to a callback (the notebook cell), and kept for the Result.

Runs in the caller; the other ends of the pipes are handed to the container through the
helper's socket (SCM_RIGHTS) and become its fds 1 and 2.

Why pipes and not the owner's own descriptors: under nbval a child writing straight to
inherited descriptors is lost; the kernel must write the output itself.
"""

import codecs
import os
import selectors
import stat
import time

OUTPUT_LIMIT = 16 << 20   # bytes of stdout/stderr kept in a Result (streaming sees it all)


class OutputStreams:
    """Reads the container's stdout/stderr pipes as data arrives and hands it on."""

    def __init__(self, on_output):
        self.on_output = on_output
        self.selector = selectors.DefaultSelector()
        self.buffers = {}
        self.decoders = {}
        self.sizes = {}
        self.handed_over = {}   # write end -> its pipe's inode: ours to close once sent

    def pipe(self, name) -> int:
        """A pipe for the stream `name`: its read end is read here, its write end (returned)
        goes to the container, and this side's copy is closed by `close_handed_over`."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self.handed_over[write_end] = os.fstat(write_end).st_ino
        self.add(name, read_end)
        return write_end

    def close_handed_over(self):
        """Close this side's copy of every write end. Safe to call again after an interrupt
        (the stop button) cut a call short: a write end still open here would keep its
        pipe from ever ending, and `drain` would wait forever. A descriptor is closed only
        while it still is that pipe's write end, never a number reused since."""
        for fd, inode in list(self.handed_over.items()):
            try:
                info = os.fstat(fd)
                still_ours = (stat.S_ISFIFO(info.st_mode) and info.st_ino == inode
                              and _access_mode(fd) == os.O_WRONLY)
            except OSError:   # closed already
                still_ours = False
            if still_ours:
                os.close(fd)
            self.handed_over.pop(fd, None)

    def add(self, name, fd):
        os.set_blocking(fd, False)
        self.selector.register(fd, selectors.EVENT_READ, name)
        self.buffers[name] = []
        self.sizes[name] = 0
        self.decoders[name] = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def open(self) -> bool:
        return bool(self.selector.get_map())

    def pump(self, timeout):
        if not self.open:
            if timeout:
                time.sleep(timeout)
            return
        for key, _ in self.selector.select(timeout):
            self._read(key.fileobj, key.data)

    def drain(self):
        """Read what is left (the writers are gone: every read ends in data or EOF)."""
        self.close_handed_over()   # one left open by an interrupted start is a writer too
        while self.open:
            for key in list(self.selector.get_map().values()):
                self._read(key.fileobj, key.data)
            if self.open:
                self.selector.select(0.05)

    def _read(self, fd, name):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(fd)
            os.close(fd)
            text = self.decoders[name].decode(b"", final=True)
        else:
            text = self.decoders[name].decode(chunk)
        if text:
            if self.sizes[name] < OUTPUT_LIMIT:
                self.buffers[name].append(text)
                self.sizes[name] += len(text)
            if self.on_output:
                self.on_output(name, text)

    def text(self, name) -> str:
        return "".join(self.buffers.get(name, []))

    def close(self):
        self.close_handed_over()
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            os.close(key.fileobj)
        self.selector.close()


def open_stdio(on_output, stdout, stderr, stdin, detach):
    """fds to hand the container, their names, and the reader on our side. Detached, the
    container's stdout and stderr are pipes the helper makes and reads into the rotated
    logs (runtime/helper/logs.py); `stdout`/`stderr`/`stdin` given are the caller's own
    fds, passed on as they are."""
    fds, names = [], []
    streams = OutputStreams(on_output)
    if detach:
        streams = OutputStreams(None)
    else:
        for name, given in (("stdout", stdout), ("stderr", stderr)):
            if given is not None:
                fds.append(given)
            else:
                fds.append(streams.pipe(name))
            names.append(name)
    if stdin is not None:
        fds.append(stdin)
        names.append("stdin")
    return fds, names, streams


def _access_mode(fd) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
