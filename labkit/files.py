"""Writing a small file so that a reader sees either the old content or the new, never a
half-written one: write a temporary file beside it, then rename(2) it over the old (the
kernel makes a rename within one filesystem atomic). Reading a small file someone else
may have replaced by a FIFO or a device: a bounded read of a regular file, or an error.
A lock file no one else can open (`open_lock`)."""

import errno
import os
import stat


def write_atomically(path, text: str | bytes, mode: int = 0o644) -> None:
    """Replace the file at `path` with `text`. The temporary name carries our PID, so two
    processes writing the same file never share one; a failed write leaves no temporary."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    try:
        # os.write, not open(): a text file object costs more than the write (it is on
        # every container start, for state.json).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
        finally:
            os.close(descriptor)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def read_regular(path, most: int, follow: bool = True, dir_fd: int | None = None) -> bytes:
    """At most `most` bytes of the regular file at `path`. Opened without blocking and
    checked before a byte is read: a FIFO put there would block the reader for ever (open
    waits for a writer) and /dev/zero would feed it without end; both, and anything else
    that is not a regular file, are OSError(EINVAL). `follow=False` refuses a symlink as
    the last component (ELOOP); `dir_fd`: `path` is relative to that open directory."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    descriptor = os.open(path, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        chunks, left = [], most
        while left > 0:
            chunk = os.read(descriptor, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def open_lock(path) -> int:
    """A descriptor of the lock file at `path` (made if missing), 0600: flock takes a lock
    through any descriptor, a read-only one too, so a lock file others can open is one
    they can hold for ever (an audit's student held /run/labkit-net.lock so, and every
    bridge of root's waited). An older one made 0644 is closed to others here."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if stat.S_IMODE(os.fstat(descriptor).st_mode) != 0o600:
            os.fchmod(descriptor, 0o600)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor
