"""The owner's side of the helper: start it once, send it requests, collect its events.

Safe to use from a multi-threaded process (a Jupyter kernel): the helper is started with
subprocess (fork+exec of a fresh interpreter), never by forking the caller.
"""

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time

from labkit.errors import HostError
MAX_MESSAGE = 1 << 20  # as in labkit.runtime.zygote

_lock = threading.Lock()
_helper = None


class Helper:
    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, LABKIT_HELPER_FD=str(theirs.fileno()), LABKIT_OWNER_PID=str(os.getpid()))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labkit.runtime.zygote"],
            pass_fds=(theirs.fileno(),), env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, close_fds=True,
        )
        theirs.close()
        self.sock = ours
        self.owner_pid = os.getpid()
        self.events = {}             # id -> list of messages not yet taken
        self.condition = threading.Condition()
        self.reading = False
        self.send({"op": "ping", "id": "ping"})
        self.wait_for("ping", ("pong",), timeout=30)

    @property
    def pid(self):
        return self.process.pid

    def send(self, message, fds=()):
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError, OSError) as error:
            raise HostError(f"the labkit helper process is gone ({error}); it restarts on the next container") from None

    def _read_one(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except socket.timeout:
            return False
        if not data:
            raise HostError("the labkit helper process exited unexpectedly; it restarts on the next container")
        message = json.loads(data)
        self.events.setdefault(message.get("id"), []).append(message)
        return True

    def take(self, ident, ops):
        queue = self.events.get(ident, [])
        for index, message in enumerate(queue):
            if message["op"] in ops or message["op"] == "failed":
                return queue.pop(index)
        return None

    def wait_for(self, ident, ops, timeout=None):
        """The next message for `ident` whose op is in `ops` (or a failure); None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.condition:
            while True:
                found = self.take(ident, ops)
                if found is not None:
                    return found
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if self.reading:
                    self.condition.wait(remaining if remaining is not None else 0.5)
                    continue
                self.reading = True
                self.condition.release()
                try:
                    self._read_one(min(remaining, 0.5) if remaining is not None else 0.5)
                finally:
                    self.condition.acquire()
                    self.reading = False
                    self.condition.notify_all()

    def close(self):
        try:
            self.sock.send(json.dumps({"op": "shutdown"}).encode())
        except OSError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.sock.close()


def get_helper() -> Helper:
    """This process's helper, started (after a sweep of dead owners' leftovers) on first use."""
    global _helper
    with _lock:
        if _helper is not None and _helper.owner_pid == os.getpid() and _helper.process.poll() is None:
            return _helper
        if os.geteuid() != 0:
            raise HostError("labkit needs root to make namespaces, cgroups and mounts; run it as root "
                            "(sudo), or in a VM or Binder image where you are root")
        from labkit.runtime.state import sweep

        sweep()
        _helper = Helper()
        return _helper


def shutdown_helper():
    """Stop this process's helper: every container it started is killed and removed."""
    global _helper
    with _lock:
        if _helper is not None and _helper.owner_pid == os.getpid():
            _helper.close()
        _helper = None


atexit.register(shutdown_helper)
