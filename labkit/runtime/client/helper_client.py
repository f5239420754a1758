"""The client's end of the helper: start it once, send it requests, collect its events.

Runs in the caller (the Jupyter kernel or the `labkit` command); the helper process
itself is runtime/helper/.

Safe to use from a multi-threaded process (a Jupyter kernel): the helper is started with
subprocess (fork+exec of a fresh interpreter), never by forking the caller. A caller that
is small and single-threaded (the `labkit` command) may ask for a fork of itself instead
(`fork_from_caller(True)`): no second interpreter to start, no second import of labkit.
Either way the helper, and so every process that becomes or joins a container, runs from
a sealed copy of the interpreter (labkit.linux.sealed_exe): a caller that asks to be forked
is executed again from it first (`labkit run` does so before its imports).
"""

import atexit
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from labkit.errors import HostError
from labkit.linux import rootless, sealed_exe
from labkit.linux.processes import ForkedChild
from labkit.runtime import protocol
from labkit.runtime.protocol import MAX_MESSAGE, Op

_lock = threading.Lock()
_helper = None
_fork_from_caller = False


def fork_from_caller(allowed: bool = True) -> None:
    """Let this process's helper be a fork of it. Only for a small, single-threaded
    caller: a fork copies the caller's memory map into every container's fork, and a
    fork of a multi-threaded process may hold a lock no thread will release. Checked
    again when the helper starts (a thread started since then turns it off). A caller
    not yet running from the sealed interpreter is executed again from it, with the same
    arguments, before this returns: its fork must not run a file containers can reach."""
    global _fork_from_caller
    if allowed and _single_threaded():
        sealed_exe.run_sealed()
    _fork_from_caller = allowed


def _single_threaded() -> bool:
    return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1


class Helper:
    """One helper process per owner; its messages are filed by whoever reads the socket.

    A caller waiting for an answer reads it itself (`wait_for`): handing each message
    over from another thread costs two wake-ups in a row on the start's path. While no
    one waits, a reader thread files what comes (a detached container's exit, the
    helper's death). One reader at a time (`read_lock`), each read non-blocking after
    the socket said it is readable. In the main thread, SIGINT's handler is held off from
    the read until the message is filed: a KeyboardInterrupt (the notebook's stop button)
    can then land anywhere in the caller without losing a message, and the caller can
    always go on to kill and collect its container.
    """

    def __init__(self, forked=False):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if forked:
            ours.set_inheritable(False)
            self.process = ForkedHelper(theirs.fileno())
        else:
            env = sealed_exe.exec_environment(dict(os.environ, LABKIT_HELPER_FD=str(theirs.fileno()),
                                                   LABKIT_OWNER_PID=str(os.getpid())))
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labkit.runtime.helper"], executable=sealed_exe.exec_path(),
                pass_fds=(theirs.fileno(),), env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, close_fds=True,
            )
        theirs.close()
        self.sock = ours
        self.owner_pid = os.getpid()
        self.events = {}             # id -> list of messages not yet taken
        lock = threading.RLock()   # take() is called with it held, too
        self.condition = threading.Condition(lock)   # a message filed, or the helper gone
        self.stand_aside = threading.Condition(lock)   # the reader thread waits here while callers read
        self.gone = None             # why the helper is gone, once it is
        self.read_lock = threading.Lock()   # held by the one reading the socket
        self.waiting = 0             # callers in wait_for: the reader thread stands aside
        self.caller_seen = 0.0       # when a caller last went round its loop (monotonic)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)   # tells it to
        self.reader = threading.Thread(target=self._read_forever, name="labkit-helper-reader", daemon=True)
        self.reader.start()
        self.send(Op.PING, id="ping")
        # LABKIT_HELPER_TIMEOUT: a guest under emulation may need longer for a cold start.
        timeout = float(os.environ.get("LABKIT_HELPER_TIMEOUT") or 30)
        if self.wait_for("ping", (Op.PONG,), timeout=timeout) is None:
            raise HostError(f"the labkit helper process did not answer within {timeout:g} s")

    @property
    def pid(self):
        return self.process.pid

    def send(self, op, fds=(), **fields):
        """One request of labkit.runtime.protocol, with `fds` (stdio) as SCM_RIGHTS."""
        data = protocol.encode(op, **fields)
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError, OSError) as error:
            raise HostError(f"the labkit helper process is gone ({error}); it restarts on the next container") from None

    def _read_forever(self):
        """The reader thread: files messages while no caller waits for one."""
        while True:
            with self.condition:
                # A caller interrupted at the wrong moment may leave `waiting` counted:
                # callers say they are there at least every 0.5 s (`caller_seen`).
                while self.waiting and self.gone is None and time.monotonic() - self.caller_seen < 1.0:
                    self.stand_aside.wait(0.5)
                if self.gone is not None:
                    return
            try:
                readable = select.select([self.sock, self.wake_r], [], [])[0]
            except (OSError, ValueError):   # closed under us
                return
            if self.wake_r in readable:
                _drain(self.wake_r)
                continue
            with self.read_lock:
                self._receive_one()

    def _receive_one(self) -> None:
        """One message off the socket, filed (or the helper found gone); nothing if none
        is there. The caller holds `read_lock`."""
        held_off = _hold_off_interrupts() if threading.current_thread() is threading.main_thread() else None
        try:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as error:
                data, reason = b"", str(error)
            else:
                reason = "it exited unexpectedly"
            self._file(data, reason)
        finally:
            if held_off is not None:
                held_off.release()

    def _file(self, data, reason) -> None:
        with self.condition:
            if not data:
                self.gone = reason
            else:
                try:
                    message = protocol.decode(data)
                except (protocol.ProtocolError, ValueError) as error:
                    self.gone = f"it sent a message this client does not understand ({error})"
                else:
                    self.events.setdefault(message.get("id"), []).append(message)
            self.condition.notify_all()

    def take(self, ident, ops):
        """The first waiting message for `ident` whose op is in `ops` (or a failure), or None."""
        with self.condition:
            queue = self.events.get(ident, [])
            for index, message in enumerate(queue):
                if message["op"] in ops or message["op"] == Op.FAILED:
                    return queue.pop(index)
            return None

    def put_back(self, message):
        with self.condition:
            self.events.setdefault(message.get("id"), []).insert(0, message)

    def wait_for(self, ident, ops, timeout=None):
        """The next message for `ident` whose op is in `ops` (or a failure); None on timeout.
        Read from the socket by this thread while no other reads it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        found = self.take(ident, ops)
        if found is not None:
            return found
        with self.condition:
            self.waiting += 1
        try:
            try:
                os.write(self.wake_w, b"w")   # the reader thread stands aside
            except (BlockingIOError, TypeError):
                pass   # told already (or collected: no reader thread)
            while True:
                found = self.take(ident, ops)
                if found is not None:
                    return found
                if self.gone is not None:
                    raise HostError(f"the labkit helper process is gone ({self.gone}); "
                                    "it restarts on the next container")
                now = self.caller_seen = time.monotonic()
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    return None
                # Short waits keep the caller interruptible (Ctrl-C, the stop button).
                wait = 0.5 if remaining is None else min(remaining, 0.5)
                if self.read_lock.acquire(blocking=False):
                    try:
                        if select.select([self.sock], [], [], wait)[0]:
                            self._receive_one()
                    finally:
                        self.read_lock.release()
                else:   # another thread reads, and files what is ours
                    with self.condition:
                        if self.take(ident, ops) is None and self.gone is None:
                            self.condition.wait(min(wait, 0.05))
        finally:
            with self.condition:
                self.waiting -= 1
                self.stand_aside.notify_all()

    def collect(self, timeout=5):
        """Reap the helper (no zombie left), killing it after `timeout` seconds, and close
        our end. For one that is gone, or that was asked to shut down (`close`)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.sock.close()
        try:
            os.write(self.wake_w, b"w")   # a reader thread still in select sees the closed socket
        except OSError:
            pass
        self.reader.join(timeout=1)
        if not self.reader.is_alive():
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = None

    def close(self):
        try:
            self.sock.send(protocol.encode(Op.SHUTDOWN))
        except OSError:
            pass
        self.collect(timeout=15)   # its teardown of every container first


def get_helper() -> Helper:
    """This process's helper, started (after a sweep of dead owners' leftovers) on first use."""
    global _helper
    with _lock:
        if _helper is not None and _helper.owner_pid == os.getpid():
            # Not Popen.poll(): it takes a lock that an interrupt (the stop button, landing
            # at every start) can leave held, and the close at exit then waits on it forever.
            # A helper that died closed its socket: the reader thread has said so in `gone`.
            if _helper.gone is None and _helper.process.returncode is None:
                return _helper
            _helper.collect()
        if rootless.running_rootless() and os.geteuid() != 0:
            # The helper maps the user's ids itself; only this process can say so in the notebook.
            rootless.say_single_id_once(rootless.id_maps()[2])
        from labkit.runtime.client.leftovers import sweep

        sweep()
        # Forked, the helper runs what this process runs: only a sealed copy will do.
        _helper = Helper(forked=_fork_from_caller and _single_threaded() and sealed_exe.running_sealed())
        return _helper


class ForkedHelper(ForkedChild):
    """The helper as a fork of this process, with the part of subprocess.Popen's
    interface that Helper uses (pid, poll, wait, kill)."""

    def __init__(self, sock_fd):
        owner = os.getpid()
        pid = os.fork()
        if pid == 0:
            _become_helper(sock_fd, owner)
        super().__init__(pid)

    def wait(self, timeout=None):
        """The helper's exit status, once it has exited (every teardown done). A pidfd
        turns readable at the exit itself: no sleep-and-poll after every `labkit run`."""
        if self.poll() is None:
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:  # Linux before 5.3
                pidfd = None
            if pidfd is not None:
                try:
                    exited = select.poll()
                    exited.register(pidfd, select.POLLIN)
                    exited.poll(None if timeout is None else timeout * 1000)
                finally:
                    os.close(pidfd)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("labkit helper", timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, 9)


class _hold_off_interrupts:
    """SIGINT's handler held off (the main thread's, between a read and its filing): an
    interrupt meanwhile is recorded, and raised by the handler as it was once released."""

    def __init__(self):
        self.caught = None
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is not None:   # None: set from C, which cannot be put back
            signal.signal(signal.SIGINT, self._record)

    def _record(self, signum, frame):
        self.caught = (signum, frame)

    def release(self):
        if self.previous is None:
            return
        signal.signal(signal.SIGINT, self.previous)
        if self.caught is not None:
            if callable(self.previous):
                self.previous(*self.caught)
            elif self.previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _drain(fd):
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


def _become_helper(sock_fd, owner):
    """In the fork, the helper process from here on: what `python -m labkit.runtime.helper`
    would be, minus the start-up.
    Never returns (the caller's atexit handlers and buffers are not ours to run)."""
    try:
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, sock_fd)
        os.closerange(sock_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.environ.update(LABKIT_HELPER_FD=str(sock_fd), LABKIT_OWNER_PID=str(owner))
        from labkit.runtime.helper.zygote import main

        main()
    except BaseException:  # noqa: BLE001 — sys.exit() in main included: leave quietly
        pass
    os._exit(0)


def settle() -> None:
    """Wait until this process's helper has finished tearing down every container that
    has exited (it does that right after reporting the exit). For checks of what is
    left behind; nothing else needs it."""
    _ping_own_helper("settle")


def ready_slots() -> list:
    """The cgroup names of the ready slots (runtime/helper/ready_slots.py) this process's helper would
    hand the next start, as the helper knows them: a slot's first process is seen waiting
    from outside before its "ready" has reached the helper."""
    pong = _ping_own_helper("ready-slots")
    return [] if pong is None else pong["ready_slots"]


def pool_filled(timeout: float = 30.0) -> bool:
    """Wait until this process's helper has torn down every exited container and holds as
    many ready slots as it keeps (each holds descriptors of the helper's: a count taken
    while one is being remade differs by them). False if that did not happen in time."""
    deadline = time.monotonic() + timeout
    while True:
        pong = _ping_own_helper("pool-filled")
        if pong is None or len(pong["ready_slots"]) >= pong["pool_size"]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _ping_own_helper(ident: str) -> dict | None:
    """A PONG from this process's helper, once it has handled everything before; None
    without a live helper."""
    with _lock:
        helper = _helper if _helper is not None and _helper.owner_pid == os.getpid() else None
    if helper is None or helper.gone is not None:
        return None
    helper.send(Op.PING, id=ident)
    pong = helper.wait_for(ident, (Op.PONG,), timeout=60)
    if pong is None:
        raise HostError("the labkit helper did not answer within 60 s")
    return pong


def shutdown_helper():
    """Stop this process's helper: every container it started is killed and removed."""
    global _helper
    with _lock:
        if _helper is not None and _helper.owner_pid == os.getpid():
            _helper.close()
        _helper = None


atexit.register(shutdown_helper)
