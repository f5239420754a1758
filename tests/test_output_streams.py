"""The owner's side of a container's stdout/stderr pipes (runtime/client/streams.py), on
real pipes: no container needed, no root."""

import os
import threading

from labkit.runtime.client.streams import OutputStreams


def drained_within(streams, seconds=10) -> bool:
    done = threading.Event()
    worker = threading.Thread(target=lambda: (streams.drain(), done.set()), daemon=True)
    worker.start()
    return done.wait(seconds)


def test_a_write_end_an_interrupt_left_open_does_not_hang_the_drain():
    """The stop button landed in the loop that closes this side's copies of the write ends
    once the request is sent: the first was closed, the second not. Its pipe then never
    ended, and the container's collection waited for it forever (a fresh-clone run hung
    so in test_an_interrupt_at_any_moment_of_a_run_leaves_nothing)."""
    streams = OutputStreams(None)
    stdout_w, stderr_w = streams.pipe("stdout"), streams.pipe("stderr")
    os.write(stdout_w, b"out\n")
    os.close(stdout_w)   # what the interrupted loop did close; stderr_w is still open here
    assert drained_within(streams), "drain() waited on a write end of our own"
    assert streams.text("stdout") == "out\n"
    assert not streams.open
    try:
        os.fstat(stderr_w)
    except OSError:
        pass
    else:
        raise AssertionError("the write end left open was not closed")


def test_a_descriptor_number_reused_since_is_not_closed():
    """The write end closed, its number then given to something else: that is not ours."""
    streams = OutputStreams(None)
    write_end = streams.pipe("stdout")
    os.close(write_end)
    other_r, other_w = os.pipe()
    try:
        if other_r != write_end and other_w != write_end:
            os.dup2(other_w, write_end)   # make the reuse certain
        streams.close_handed_over()
        os.fstat(write_end)   # still open: raises if it was closed
    finally:
        for fd in {other_r, other_w, write_end}:
            try:
                os.close(fd)
            except OSError:
                pass
    streams.close()
