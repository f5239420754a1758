"""Writing a small file so that a reader sees either the old content or the new, never a
half-written one: write a temporary file beside it, then rename(2) it over the old (the
kernel makes a rename within one filesystem atomic)."""

import os


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
