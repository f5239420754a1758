"""A detached container's monitor: the small process that owns it once `labkit run -d`
has returned (what conmon is to podman).

Runs in a fork of the `labkit` command. Why a process of its own: a container belongs to
the helper that forked it, and a helper to its owner (it kills its containers when its
owner goes: nothing outlives a dead notebook kernel). `labkit run -d` cannot be that owner,
since it returns at once; so it forks this monitor, detached (its own session, reparented
to init), which starts the container through a helper of its own, prints nothing, and
stays until the container is removed. Killing the monitor is then the end of its
container, as killing a kernel is the end of the kernel's: its helper gets its death
signal and removes everything (and `labkit gc` sweeps what a SIGKILL of both leaves).

While it lives it records the container for `ps -a` and `inspect` (the helper writes
state.json; the monitor writes inspect.json: the Docker-like record, with the exit code and
times once it exits), and answers the other `labkit` verbs on a Unix socket in the
container's directory (`monitor.sock`, reachable only by whoever may enter that 0700
directory): exec (with the caller's own stdio passed as fds), signal, stop, kill, remove.
With `--rm` it removes the container when its command exits, then leaves.

    labkit run -d --name web -- httpd -f        # → start_detached(): the id, at once
    labkit exec web ps                          # → call(state, "exec", fds=...)
"""

import json
import os
import select
import signal
import socket
import time

from labkit.errors import ContainerError
from labkit.files import write_atomically
from labkit.runtime.container_dir import ContainerDir

MAX_MESSAGE = 1 << 16
STOP_GRACE = 10.0


class StartFailed(ContainerError):
    """The detached container did not start; `returncode` is what `labkit run -d` exits
    with (125: labkit's own error, 126/127: the command could not be run, as Docker)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


# --- the caller's side ---------------------------------------------------------------


def start_detached(spec, auto_remove=False, keep_stdin=False, tty=False) -> dict:
    """Fork a monitor that starts `spec` (validated) and keeps it; return its {"id", "name"}
    once the container runs. The monitor is a grandchild, in its own session: this process
    may exit at once, and nothing waits for the monitor but init."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _monitor(spec, auto_remove, keep_stdin, tty, ready_w)
        except BaseException:  # noqa: BLE001 — the caller reads EOF and says so
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.waitpid(child, 0)
    data = b""
    with os.fdopen(ready_r, "rb") as ready:
        data = ready.read()
    if not data:
        raise StartFailed("the container's monitor exited before the container started", 125)
    answer = json.loads(data)
    if "error" in answer:
        raise StartFailed(answer["error"], answer["code"])
    return answer


def call(state: dict, op: str, fds=(), timeout=None, after_send=None, **fields) -> dict:
    """One request to the monitor of the container whose state.json is `state` (as
    state.find_container returns it), and its answer. `after_send()` runs once the
    request (and its fds) left: a pty's slave is closed there."""
    directory = ContainerDir(state["dir"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    # Through an fd of the directory: a socket's path is limited to 107 bytes, a home's is not.
    dir_fd = os.open(directory.path, os.O_PATH | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dir_fd}/{directory.monitor_socket.name}")
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ContainerError(_not_monitored(state)) from None
    finally:
        os.close(dir_fd)
    with sock:
        data = json.dumps({"op": op, **fields}).encode()
        if fds:
            socket.send_fds(sock, [data], list(fds))
        else:
            sock.send(data)
        if after_send is not None:
            after_send()
        sock.settimeout(timeout)
        reply = sock.recv(MAX_MESSAGE)
    if not reply:
        raise ContainerError(f"the monitor of container {state.get('name')} left without answering {op}")
    answer = json.loads(reply)
    if "error" in answer:
        raise ContainerError(answer["error"])
    return answer


def monitored(state: dict) -> bool:
    return ContainerDir(state["dir"]).monitor_socket.exists()


def _not_monitored(state: dict) -> str:
    return (f"container {state.get('name')} was not started by `labkit run -d` (its owner is process "
            f"{state.get('client_pid')}, a notebook kernel or script): manage it from there")


def read_record(state: dict) -> dict | None:
    """The inspect.json its monitor wrote, or None."""
    try:
        with open(ContainerDir(state["dir"]).record_file) as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return None


# --- the monitor process ----------------------------------------------------------------


def _monitor(spec, auto_remove, keep_stdin, tty, ready_w):
    """The monitor, from the second fork on. Never returns."""
    from labkit.linux import syscalls
    from labkit.runtime.client import helper_client

    code = 0
    ready = Ready(ready_w)
    try:
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        syscalls.prctl_set_name("labkit-monitor")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # One container: no ready slots made ahead for a next one that never comes.
        helper_client.fork_from_caller(one_container=True)
        Monitor(spec, auto_remove).run(keep_stdin, tty, ready)
    except BaseException as error:  # noqa: BLE001
        ready.answer({"error": f"{type(error).__name__}: {error}", "code": 125})
        code = 1
    finally:
        helper_client.shutdown_helper()   # its teardown of the container, if any is left
    os._exit(code)


class Ready:
    """The pipe `labkit run -d` waits on: one answer, then closed (never written again: its
    number may by then be another file's)."""

    def __init__(self, fd):
        self.fd = fd

    def answer(self, answer: dict) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, json.dumps(answer).encode())
        except OSError:
            pass   # the caller is gone (interrupted)
        os.close(fd)


class Monitor:
    def __init__(self, spec, auto_remove):
        from labkit.runtime.client.container import Container

        self.container = Container(spec)
        self.auto_remove = auto_remove
        self.files = self.container.files
        self.record = None
        self.stop_deadline = None
        self.waiting = []        # connections answered when the container has exited (stop, wait)
        self.leaving = False
        self.threads = []

    def run(self, keep_stdin, tty, ready):
        from labkit.errors import LabkitError
        from labkit.runtime.client.inspect import describe

        stdin = keep = None
        if tty:   # the command's stdin is a terminal (a shell stays interactive); output goes to the logs
            keep, stdin = os.openpty()
        elif keep_stdin:   # `-d -i`: a stdin that stays open, never written (`docker run -di ... sh`)
            stdin, keep = os.pipe2(os.O_CLOEXEC)
        try:
            self.container.start(stdin=stdin, detach=True)
        except LabkitError as error:
            ready.answer({"error": str(error), "code": 125})
            return
        finally:
            if stdin is not None:
                os.close(stdin)
        self.container.poll()
        result = self.container.result
        if result is not None and result.error:   # the command could not be exec'd: 126 or 127
            self.record = describe(self.container, auto_remove=self.auto_remove)
            self._write_record()
            if self.auto_remove:
                self.container.remove()
            ready.answer({"error": f"container {self.container.name}: {result.error}",
                          "code": result.exit_code or 125})
            if self.auto_remove:
                return
            # answered: `ps -a` and `inspect` show it exited until `labkit rm`
        self.record = describe(self.container, auto_remove=self.auto_remove)
        self._write_record()
        server = self._listen()
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "leaving", True))
        ready.answer({"id": self.container.id, "name": self.container.name})
        try:
            self._serve(server)
        finally:
            server.close()
            if keep is not None:
                os.close(keep)

    def _listen(self):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        dir_fd = os.open(self.files.path, os.O_PATH | os.O_CLOEXEC)
        try:
            server.bind(f"/proc/self/fd/{dir_fd}/{self.files.monitor_socket.name}")
        finally:
            os.close(dir_fd)
        server.listen(8)
        return server

    def _serve(self, server):
        container = self.container
        while not self.leaving:
            readable, _, _ = select.select([server], [], [], 0.1)
            if readable:
                connection, _ = server.accept()
                self._handle(connection)
            if container.state == "running":
                container.poll()
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    container.kill()
            if container.state == "exited" and self.record["State"]["Running"]:
                self._exited()
                if self.auto_remove:
                    break
        for thread in self.threads:
            thread.join(timeout=5)
        container.remove()
        self.files.forget_state()

    def _exited(self):
        from labkit.runtime.client.inspect import exited_state

        self.record["State"].update(exited_state(self.container.result))
        self._write_record()
        self.stop_deadline = None
        for connection in self.waiting:
            _reply(connection, {"status": self.record["State"]["ExitCode"]})
        self.waiting = []

    def _write_record(self):
        try:
            write_atomically(self.files.record_file, json.dumps(self.record, indent=1), mode=0o600)
        except FileNotFoundError:
            pass   # removed meanwhile

    def _handle(self, connection):
        try:
            data, fds, _flags, _addr = socket.recv_fds(connection, MAX_MESSAGE, 3)
            request = json.loads(data)
            handler = getattr(self, f"op_{request['op']}", None)
            if handler is None:
                raise ValueError(f"{request['op']!r} is not a request")
        except (OSError, ValueError, KeyError) as error:
            _reply(connection, {"error": f"bad request: {error}"})
            return
        try:
            handler(connection, request, fds)
        except Exception as error:  # noqa: BLE001 — one bad request must not end the monitor
            for fd in fds:
                os.close(fd)
            _reply(connection, {"error": str(error)})

    # --- requests: each answers `connection` (now, or when the container has exited) ----

    def op_signal(self, connection, request, fds):
        self._must_run("kill")
        self.container.signal(int(request["signal"]))
        _reply(connection, {})

    def op_stop(self, connection, request, fds):
        """The image's STOPSIGNAL (SIGTERM), then SIGKILL after the grace time; answered
        once it has exited. Stopping an exited container does nothing, as Docker."""
        if self.container.state != "running":
            _reply(connection, {"status": self.record["State"]["ExitCode"]})
            return
        grace = float(request.get("grace", STOP_GRACE))
        self.container.signal(self.container.image.config.stop_signal_number())
        deadline = time.monotonic() + max(grace, 0.0)
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        self.waiting.append(connection)

    def op_wait(self, connection, request, fds):
        if self.container.state != "running":
            _reply(connection, {"status": self.record["State"]["ExitCode"]})
        else:
            self.waiting.append(connection)

    def op_remove(self, connection, request, fds):
        if self.container.state == "running" and not request.get("force"):
            raise ContainerError(f"container {self.container.name} is running: stop it first, or remove it "
                                 "with -f (SIGKILL)")
        self.leaving = True
        self.container.kill()
        self.container.remove()
        _reply(connection, {})

    def op_exec(self, connection, request, fds):
        """One process in the container, with the caller's stdin, stdout and stderr (a
        terminal's slave for `-t`), in a thread: the monitor keeps answering meanwhile."""
        import threading

        self._must_run("exec")
        names = request["fd_names"]
        stdio = dict(zip(names, fds))
        thread = threading.Thread(target=self._exec, args=(connection, request, stdio), daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    def _exec(self, connection, request, stdio):
        try:
            result = self.container.exec(request["command"], env=request.get("env", ()),
                                         workdir=request.get("workdir"), user=request.get("user"),
                                         stdio=stdio, tty=bool(request.get("tty")))
        except Exception as error:  # noqa: BLE001
            _reply(connection, {"error": str(error)})
            return
        finally:
            for fd in stdio.values():
                os.close(fd)
        _reply(connection, {"status": result.returncode, "setup_error": result.error})

    def _must_run(self, what):
        if self.container.state != "running":
            raise ContainerError(f"container {self.container.name} is not running ({self.container.state}); "
                                 f"cannot {what} it")


def _reply(connection, answer):
    try:
        connection.send(json.dumps(answer).encode())
    except OSError:
        pass   # the caller is gone (interrupted)
    connection.close()
