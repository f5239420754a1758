"""`-t`: a pseudo-terminal between the user's terminal and a container's command.

Runs in the `labkit` command (run -t, exec -t). The command gets the pty's slave as stdin,
stdout and stderr and makes it its controlling terminal (runtime/inside/command.py's
take_terminal); this process keeps the master and copies bytes both ways. With `-i` on a
terminal, this side is put in raw mode, as Docker's CLI does: ^C, ^Z and ^D are bytes for
the container's terminal, whose line discipline turns them into SIGINT for the
container's foreground process group (a shell's running job), not for labkit. The window
size is copied to the pty at the start and on each SIGWINCH. The terminal's settings are
restored on the way out, whatever happened.
"""

import fcntl
import os
import select
import signal
import termios
import threading
import tty

WINDOW_SIZE = b"\0" * 8   # struct winsize: rows, columns, xpixel, ypixel (unsigned short each)


class PtyRelay:
    """`with PtyRelay(interactive) as relay:` hand `relay.slave` to the command (it is
    closed here on the way out); its output reaches this stdout until the command and
    everything holding the terminal has gone, or `finish()`."""

    def __init__(self, interactive: bool, stdin: int = 0, stdout: int = 1):
        self.interactive, self.stdin, self.stdout = interactive, stdin, stdout
        self.master, self.slave = os.openpty()
        os.set_inheritable(self.master, False)
        self.saved = None
        self.previous_winch = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._relay, name="labkit-pty", daemon=True)

    def __enter__(self):
        if self.interactive and os.isatty(self.stdin):
            self.saved = termios.tcgetattr(self.stdin)
            tty.setraw(self.stdin)
        self._copy_window_size()
        if threading.current_thread() is threading.main_thread():
            self.previous_winch = signal.signal(signal.SIGWINCH, lambda *_: self._copy_window_size())
        self.thread.start()
        return self

    def _copy_window_size(self):
        for fd in (self.stdin, self.stdout):
            if os.isatty(fd):
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, WINDOW_SIZE)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                return

    def close_slave(self):
        """Once the command holds the slave: then the master reads EIO when it is gone."""
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    def _relay(self):
        sources = [self.master] + ([self.stdin] if self.interactive else [])
        while True:
            readable, _, _ = select.select(sources, [], [], 0.1)
            if self.stopping.is_set() and not readable:
                return
            if self.master in readable:
                try:
                    data = os.read(self.master, 65536)
                except OSError:   # EIO: every slave fd is closed, the command is gone
                    return
                if not data:
                    return
                _write_all(self.stdout, data)
            if self.stdin in readable:
                data = os.read(self.stdin, 65536)
                if data:
                    _write_all(self.master, data)
                else:   # our stdin ended: the terminal's end-of-file (^D) for the command
                    sources.remove(self.stdin)
                    _write_all(self.master, b"\x04")

    def finish(self, timeout: float = 1.0):
        """The command has exited: print what is left of its output (a child that still
        holds the terminal cannot keep this open past `timeout`)."""
        self.close_slave()
        self.thread.join(timeout)
        self.stopping.set()
        self.thread.join()

    def __exit__(self, *exc):
        try:
            if self.thread.is_alive():
                self.finish()
        finally:
            if self.saved is not None:
                termios.tcsetattr(self.stdin, termios.TCSADRAIN, self.saved)
            if self.previous_winch is not None:
                signal.signal(signal.SIGWINCH, self.previous_winch)
            self.close_slave()
            os.close(self.master)
        return False


def _write_all(fd, data):
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[written:]
