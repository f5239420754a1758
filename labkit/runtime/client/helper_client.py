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
import math
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
from labkit.runtime.client import state
from labkit.runtime.protocol import MAX_MESSAGE, Op

_lock = threading.Lock()
_helper = None
_fork_from_caller = False
_one_container = False


def fork_from_caller(allowed: bool = True, one_container: bool = False) -> None:
    """Let this process's helper be a fork of it. Only for a small, single-threaded
    caller: a fork copies the caller's memory map into every container's fork, and a
    fork of a multi-threaded process may hold a lock no thread will release. Checked
    again when the helper starts (a thread started since then turns it off). A caller
    not yet running from the sealed interpreter is executed again from it, with the same
    arguments, before this returns: its fork must not run a file containers can reach.
    `one_container`: the caller starts one container and leaves (`labkit run`, a detached
    container's monitor): its helper makes no ready slots ahead and no janitor process,
    whether it is forked or, when the caller cannot be forked, started by exec."""
    global _fork_from_caller, _one_container
    if allowed and _single_threaded():
        sealed_exe.run_sealed()
    _fork_from_caller, _one_container = allowed, allowed and one_container


def _single_threaded() -> bool:
    return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1


# After the last caller's wait, the reader thread waits this long before it polls the socket
# again. A caller that finds it polling must wake it (a pipe write) and it must take the GIL
# to stand aside; at the end of each wait it was woken again to go back to poll: two thread
# hand-overs per wait, 0.6 ms a container in a profile of 200 back-to-back runs. Starts in a
# row (a start, its exit, the next start) now find it standing aside. A message no caller
# waits for (a detached container's exit, the helper's death) is filed this much later.
READER_GRACE = 0.05


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

    def __init__(self, forked=False, one_container=False):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if forked:
            ours.set_inheritable(False)
            self.process = ForkedHelper(theirs.fileno(), one_container)
        else:
            env = sealed_exe.exec_environment(dict(os.environ, LABKIT_HELPER_FD=str(theirs.fileno()),
                                                   LABKIT_OWNER_PID=str(os.getpid()),
                                                   **({"LABKIT_ONE_CONTAINER": "1"} if one_container else {})))
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labkit.runtime.helper"], executable=sealed_exe.exec_path(),
                pass_fds=(theirs.fileno(),), env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, close_fds=True,
            )
        theirs.close()
        self.sock = ours
        # The helper's exit, told by the kernel: its socket's end-of-file alone is not
        # enough, since any process that holds a copy of the helper's end (a stray fork)
        # keeps the socket open after the helper has died.
        try:
            self.exit_fd = os.pidfd_open(self.process.pid)
        except OSError:   # Linux before 5.3: the socket's end-of-file only
            self.exit_fd = None
        self.owner_pid = os.getpid()
        self.events = {}             # id -> list of messages not yet taken
        # Taken as `with self.mutex`, never `with self.condition`: Condition's __enter__
        # and __exit__ are Python functions, and an interrupt (the stop button) landing
        # between the lock's acquire and the end of __enter__ leaves the lock held by the
        # main thread for good. The main thread never notices (the lock is re-entrant);
        # the reader thread waits on it forever, and no one sees a container exit or the
        # helper die while the main thread does not wait (a stressed run found it so).
        # The C lock's own `with` has no such gap.
        self.mutex = threading.RLock()   # take() is called with it held, too
        self.condition = threading.Condition(self.mutex)   # a message filed, or the helper gone
        self.stand_aside = threading.Condition(self.mutex)   # the reader thread waits here while callers read
        self.gone = None             # why the helper is gone, once it is
        self.read_lock = threading.Lock()   # held by the one reading the socket
        self.waiting = 0             # callers in wait_for: the reader thread stands aside
        self.caller_seen = 0.0       # when a caller last went round its loop (monotonic)
        self.polling = False         # the reader thread is in poll(2): a caller must wake it to read
        self.collected = False       # `collect` closed our end: the reader thread ends
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)   # tells it to
        self.reader = threading.Thread(target=self._read_forever, name="labkit-helper-reader", daemon=True)
        self.reader.start()
        self.send(Op.PING, id="ping", settle=True)
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
        except (BrokenPipeError, ConnectionResetError) as error:
            self._mark_gone(f"a request could not be sent: {error}")
            raise HostError(f"the labkit helper process is gone ({self.gone}); it restarts on the next container") from None
        except OSError as error:   # the helper is there; this request could not go
            raise HostError(f"a request to the labkit helper could not be sent ({error})") from None

    def _mark_gone(self, reason) -> None:
        with self.mutex:
            if self.gone is None:
                self.gone = reason
            self.condition.notify_all()
            self.stand_aside.notify_all()

    def exited(self) -> bool:
        """True once the helper has exited, asked of the kernel (not of the reader
        thread). What it sent before it died is filed first, then `gone` is set."""
        if self.gone is not None:
            return True
        if self.exit_fd is None or not _readable([self.exit_fd], 0):
            return False
        with self.read_lock:
            self._file_what_is_left()
        return True

    def _file_what_is_left(self) -> None:
        """The helper has exited: every message it sent is in the socket already. File
        them, then say it is gone. The caller holds `read_lock`."""
        while self.gone is None:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as error:
                self._mark_gone(str(error))
                break
            self._file(data, "it exited unexpectedly")
        self._mark_gone("it exited unexpectedly")

    def _read_forever(self):
        """The reader thread: files messages while no caller waits for one. Should it
        fail, it says so in `gone` (the next container then starts a new helper) rather
        than leave a helper that no one watches."""
        try:
            self._read_until_gone()
        except BaseException as error:  # noqa: BLE001 — a daemon thread: said in `gone`, not lost
            self._mark_gone(f"its reader thread failed: {error!r}")

    def _read_until_gone(self):
        while True:
            with self.mutex:
                while self.gone is None and not self.collected:
                    # A caller interrupted at the wrong moment may leave `waiting` counted:
                    # callers say they are there at least every 0.5 s (`caller_seen`).
                    quiet = time.monotonic() - self.caller_seen
                    if self.waiting and quiet < 1.0:
                        self.stand_aside.wait(READER_GRACE)
                    elif not self.waiting and quiet < READER_GRACE:
                        self.stand_aside.wait(READER_GRACE - quiet)   # the next wait_for may come soon
                    else:
                        break
                if self.gone is not None or self.collected:
                    return
                self.polling = True
            try:
                readable = _readable(self._watched() + [self.wake_r])
            except (OSError, ValueError):
                if self.sock.fileno() == -1:
                    return   # closed under us (collect)
                raise   # said in `gone` by _read_forever
            finally:
                with self.mutex:
                    self.polling = False
            if self.wake_r in readable:
                _drain(self.wake_r)
                continue
            with self.read_lock:
                self._take_readable(readable)

    def _watched(self) -> list:
        """What tells a reader there is something to do: the socket, and the helper's pidfd."""
        return [self.sock] + ([self.exit_fd] if self.exit_fd is not None else [])

    def _take_readable(self, readable) -> None:
        """After a select on `_watched()`: the helper's exit first (what it sent before it
        died is filed, then `gone`), else one message. The caller holds `read_lock`."""
        if self.exit_fd is not None and self.exit_fd in readable:
            self._file_what_is_left()
        elif readable:
            self._receive_one()

    def _receive_one(self) -> None:
        """One message off the socket, filed (or the helper found gone); nothing if none
        is there. The caller holds `read_lock`: the reader thread, or `wait_for`, which in
        the main thread holds SIGINT off around it (an interrupt between the read and the
        filing would lose the message)."""
        try:
            data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as error:
            data, reason = b"", str(error)
        else:
            reason = "it exited unexpectedly"
        self._file(data, reason)

    def _file(self, data, reason) -> None:
        with self.mutex:
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
        with self.mutex:
            queue = self.events.get(ident, [])
            for index, message in enumerate(queue):
                if message["op"] in ops or message["op"] == Op.FAILED:
                    return queue.pop(index)
            return None

    def put_back(self, message):
        with self.mutex:
            self.events.setdefault(message.get("id"), []).insert(0, message)

    def wait_for(self, ident, ops, timeout=None):
        """The next message for `ident` whose op is in `ops` (or a failure); None on timeout.
        Read from the socket by this thread while no other reads it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        found = self.take(ident, ops)
        if found is not None:
            return found
        with self.mutex:
            self.waiting += 1
            wake = self.polling
        try:
            if wake:
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
                # Short waits keep the caller interruptible (Ctrl-C, the stop button): in
                # the main thread an interrupt is held off while it holds a lock (one
                # raised between a lock's acquire and its `try` would leave it held), and
                # raised at the end of the wait, 0.1 s at most after it came.
                held_off = _hold_off_interrupts() if threading.current_thread() is threading.main_thread() else None
                try:
                    wait = min(0.5 if held_off is None else 0.1, 0.5 if remaining is None else remaining)
                    if self.read_lock.acquire(blocking=False):
                        try:
                            self._take_readable(_readable(self._watched(), wait))
                        finally:
                            self.read_lock.release()
                    else:   # another thread reads, and files what is ours
                        with self.mutex:
                            if self.take(ident, ops) is None and self.gone is None:
                                self.condition.wait(min(wait, 0.05))
                finally:
                    if held_off is not None:
                        held_off.release()
        finally:
            with self.mutex:
                self.waiting -= 1
                self.caller_seen = time.monotonic()   # the reader thread polls again READER_GRACE after the last

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
        with self.mutex:
            self.collected = True
            self.stand_aside.notify_all()   # one standing aside (READER_GRACE) ends now, not up to 50 ms later
        self.reader.join(timeout=1)
        if not self.reader.is_alive():
            for fd in (self.wake_r, self.wake_w, self.exit_fd):
                if fd is not None:
                    os.close(fd)
            self.wake_r = self.wake_w = self.exit_fd = None

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
            # `exited()` asks the kernel (the helper's pidfd), not the reader thread: a
            # stray copy of the helper's socket end can keep the socket open after the
            # helper has died, and one lost helper must not fail every container after it.
            if _helper.process.returncode is None and not _helper.exited():
                return _helper
            _helper.collect()
        if rootless.running_rootless() and os.geteuid() != 0:
            # The helper maps the user's ids itself; only this process can say so in the notebook.
            rootless.say_single_id_once(rootless.id_maps()[2])
        from labkit.runtime.client.leftovers import sweep

        sweep()
        # Forked, the helper runs what this process runs: only a sealed copy will do.
        forked = _fork_from_caller and _single_threaded() and sealed_exe.running_sealed()
        _helper = Helper(forked=forked, one_container=_one_container)
        return _helper


class ForkedHelper(ForkedChild):
    """The helper as a fork of this process, with the part of subprocess.Popen's
    interface that Helper uses (pid, poll, wait, kill)."""

    def __init__(self, sock_fd, one_container=False):
        owner = os.getpid()
        pid = os.fork()
        if pid == 0:
            _become_helper(sock_fd, owner, one_container)
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


def _readable(sources, timeout=None) -> list:
    """Those of `sources` (descriptors, or objects with fileno()) that are readable or at
    their end, within `timeout` seconds (None: as long as it takes). poll(2), not
    select(2): select takes no descriptor numbered 1024 or more, and the kernel of a
    notebook that has opened many files has those (a start failed with ValueError, and
    the reader thread stopped, so that no one would see the helper go)."""
    poller = select.poll()
    by_fd = {}
    for source in sources:
        fd = source if isinstance(source, int) else source.fileno()
        poller.register(fd, select.POLLIN)
        by_fd[fd] = source
    events = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
    return [by_fd[fd] for fd, _ in events]


def _drain(fd):
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


def _become_helper(sock_fd, owner, one_container):
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

        main(one_container)
    except BaseException:  # noqa: BLE001 — sys.exit() in main included: leave quietly
        pass
    os._exit(0)


def settle() -> None:
    """Wait until this process's helper has finished tearing down every container that
    has exited (it does that right after reporting the exit), and has let go of the slots
    a burst of starts added to its pool (ready_slots.BURST_EXTRA). For checks of what is
    left behind or held; nothing else needs it."""
    _ping_own_helper("settle")


def caught_up() -> None:
    """Wait until this process's helper has handled everything it was told before (no
    teardown awaited). What a reader of state.json in this process needs: the helper
    removes an exited `--rm` container's state.json, and writes a stopped one's "exited",
    right after it has told the exit, not before, so that the exit is not kept waiting."""
    _ping_own_helper("caught-up", settle=False)


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


def _ping_own_helper(ident: str, settle: bool = True) -> dict | None:
    """A PONG from this process's helper, once it has handled everything before; None
    without a live helper."""
    with _lock:
        helper = _helper if _helper is not None and _helper.owner_pid == os.getpid() else None
    if helper is None or helper.gone is not None:
        return None
    helper.send(Op.PING, id=ident, settle=settle)
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
state.catch_up = caught_up   # readers of state.json in this process first wait for its helper
