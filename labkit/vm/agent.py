"""The VM kernel's agent: runs inside the guest, starts and signals the IPython kernel.

Started by the guest's stage 2 as `python -I agent.py` (standard library only: no
labkit import, so it is up a second after the guest), it brings the guest's network
device up for QEMU's port forwards and then answers one JSON request per TCP
connection on its control port:

    {"token": T, "op": "start", "argv": [...], "env": {...}, "cwd": D, "connection": {...}}
    {"token": T, "op": "signal", "signum": N}     -> to the kernel's process group
    {"token": T, "op": "poll"}                     -> {"exit": null | status}
    {"token": T, "op": "hello"}
    {"token": T, "op": "warm"}                     -> once the kernel's modules are imported
    {"token": T, "op": "resume", "token_after": T2, "time": S, "seed": HEX, "hostname": H,
     "root_cache": C, "modules_dir": D, "rw_dir": D}

`resume` (the guest was booted with its root in memory, maybe saved and restored: see
labkit/vm/snapshot.py) makes the guest fresh for its kernel: the token T2 from then on,
the host's clock, the random pool reseeded with the host's bytes, the hostname, and the
host's root and the notebooks' directory mounted (guest.RESUME).

Every answer is one JSON line. A request without the token (from
$LABKIT_VM_AGENT_TOKEN, given by the host) is refused. The connection file the
kernel reads is written here with ip 0.0.0.0: QEMU's forwards arrive on the guest's
network device, not on its loopback.

Warm starts: once listening, the agent imports what an IPython kernel with the labkit
extension imports (ipykernel, IPython, zmq, labkit's magics), in a thread, while the host
is still on its way to the first start request. A start of `PYTHON -m ipykernel_launcher
ARGS` by this same Python then forks the agent and runs the kernel in the child: under
emulation those imports are most of a kernel's start-up, and a restart no longer pays
them at all. Anything else (another Python, another command) is started as a new process.
The same thread then builds labkit's offline base image in the guest's fresh labkit home,
which the first container cell would otherwise build.
"""

import hmac
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

from labkit.linux.processes import ForkedChild
from labkit.vm.guest import RESUME

BUSYBOX = "/run/labkit/busybox"
GUEST_ADDRESS = "10.0.2.15/24"   # what QEMU's user-mode network gives its first guest
CONNECTION_FILE = "/run/labkit/kernel-connection.json"
# The control port inside the guest (the host forwards its own free port to it): below the
# ephemeral range, where the kernel's ZeroMQ ports (the host's numbers) never are.
CONTROL_PORT = 1023
# linux/random.h: credit entropy to the pool, then make the CRNG reseed from it now.
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# What `python -m ipykernel_launcher ... --ext labkit` imports before it answers.
WARM_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "IPython", "labkit", "labkit.magics")
# What a kernel imports later, as it starts (its debugger, tornado) and at its first
# container cell (netlink, the slot cgroups), where present: preloaded too, best effort.
LATER_MODULES = ("debugpy", "ipykernel.debugger", "ipykernel.comm", "tornado.ioloop", "psutil", "sqlite3", "pdb",
                 "pyroute2", "labkit.net.bridge", "labkit.runtime.client.leftovers", "labkit.cgroups.slot_cgroups")
LAUNCHER = "ipykernel_launcher"


class Warm:
    """The kernel's modules, imported in the background; `ready()` waits for them."""

    def __init__(self, modules=WARM_MODULES, base_image=False):
        self.error = None
        self.base_image = base_image
        self._thread = threading.Thread(target=self._import, args=(modules,), daemon=True)
        self._thread.start()

    def _import(self, modules):
        import importlib

        try:
            for name in modules:
                importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 — any failure means: start cold instead
            self.error = f"{type(error).__name__}: {error}"
            print(f"labkit-vm-agent: kernel modules not preloaded ({self.error}); starting kernels cold",
                  flush=True)
            return
        for name in LATER_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 — the kernel imports it itself, or does without
                continue
        if self.base_image:
            self._base_image()

    @staticmethod
    def _base_image():
        """The guest's labkit home is a fresh tmpfs: its offline base image would otherwise
        be built by the first container cell, in the student's wait."""
        try:
            from labkit.images.busybox import ensure_busybox

            ensure_busybox()
        except Exception as error:  # noqa: BLE001 — the first cell builds it, and says what fails
            print(f"labkit-vm-agent: base image not prepared ({type(error).__name__}: {error})", flush=True)

    def ready(self) -> bool:
        self._thread.join()
        return self.error is None


class ForkedKernel(ForkedChild):
    """A kernel forked from the warm agent: Popen's pid and poll(), by waitpid."""


def warm_start_possible(argv, python=sys.executable) -> bool:
    """`argv` is `python -m ipykernel_launcher ...` for this very Python."""
    return (len(argv) >= 3 and argv[1:3] == ["-m", LAUNCHER]
            and os.path.realpath(argv[0]) == os.path.realpath(python))


def fork_kernel(argv, env, cwd, close=()) -> ForkedKernel:
    """Run `python -m ipykernel_launcher ARGS` in a child of this (warm) process, as the
    new process would: its own session, stdin /dev/null, exactly `env`, in `cwd`, with
    sys.argv and the PYTHONPATH entries it would have had. `close`: the agent's own fds
    (its listening socket, the request's connection), closed in the child; any other fd
    a preloaded module opened stays valid there."""
    pid = os.fork()
    if pid:
        return ForkedKernel(pid)
    status = 1
    try:
        for fd in close:
            os.close(fd)
        os.setsid()
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(env)
        for entry in reversed([e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]):
            sys.path.insert(0, entry)
        sys.argv = [LAUNCHER, *argv[3:]]
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 — the child must never return into the agent's loop
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


class Agent:
    def __init__(self, token, warm=None, connection_file=CONNECTION_FILE):
        self.token = token
        self.kernel = None
        self.warm = warm
        self.connection_file = connection_file
        self.own_fds = ()   # the agent's sockets, which a forked kernel must not keep

    def answer(self, request):
        if not hmac.compare_digest(str(request.get("token", "")), self.token):
            return {"error": "bad token"}
        operation = getattr(self, "op_" + str(request.get("op")), None)
        if operation is None:
            return {"error": f"unknown op {request.get('op')!r}"}
        try:
            return operation(request)
        except (OSError, ValueError, KeyError, TypeError) as error:
            return {"error": f"{type(error).__name__}: {error}"}

    def op_hello(self, request):
        return {"ok": True}

    def op_warm(self, request):
        if self.warm is None or not self.warm.ready():
            return {"error": f"the kernel's modules are not preloaded: {self.warm and self.warm.error}"}
        return {"ok": True}

    def op_resume(self, request):
        token_after = str(request["token_after"])
        if len(token_after) < 32:
            return {"error": "the new token is too short"}
        time.clock_settime(time.CLOCK_REALTIME, float(request["time"]))
        reseed(bytes.fromhex(request["seed"]))
        if request.get("hostname"):
            socket.sethostname(request["hostname"])
        cache = request.get("root_cache") or ""
        subprocess.run([BUSYBOX, "sh", "-c", RESUME, "sh", f",cache={cache}" if cache else "",
                        request.get("modules_dir") or "", request.get("rw_dir") or ""],
                       check=True, stdin=subprocess.DEVNULL)
        # Directory listings the import system cached are of the copy in memory.
        importlib.invalidate_caches()
        self.token = token_after
        return {"ok": True}

    def op_start(self, request):
        if self.kernel is not None and self.kernel.poll() is None:
            return {"error": f"a kernel already runs (pid {self.kernel.pid})"}
        connection = dict(request["connection"], ip="0.0.0.0")
        with open(os.open(self.connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(connection, handle)
        argv = [self.connection_file if word == request["connection_file"] else word for word in request["argv"]]
        if self.warm is not None and warm_start_possible(argv) and self.warm.ready():
            self.kernel = fork_kernel(argv, request["env"], request["cwd"], close=self.own_fds)
            return {"pid": self.kernel.pid, "warm": True}
        # Its own session, as jupyter_client starts a local kernel: a signal goes to
        # the kernel and everything it started. Its output goes to the console.
        self.kernel = subprocess.Popen(argv, env=request["env"], cwd=request["cwd"], stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        return {"pid": self.kernel.pid, "warm": False}

    def op_signal(self, request):
        if self.kernel is None or self.kernel.poll() is not None:
            return {"sent": False}
        try:
            os.killpg(self.kernel.pid, int(request["signum"]))
        except ProcessLookupError:
            return {"sent": False}
        return {"sent": True}

    def op_poll(self, request):
        return {"exit": None if self.kernel is None else self.kernel.poll()}


def reseed(seed: bytes):
    """A restored guest's random pool is the snapshot's, the same in every guest restored
    from it: mix in (and credit) the host's fresh bytes and reseed now, and Python's
    `random` too."""
    import fcntl
    import random
    import struct

    with open("/dev/urandom", "wb", buffering=0) as pool:
        fcntl.ioctl(pool, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(pool, RNDRESEEDCRNG)
    random.seed()


def bring_network_up():
    for command in (["ip", "addr", "add", GUEST_ADDRESS, "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
        subprocess.run([BUSYBOX, *command], check=True)


REQUEST_SECONDS = 5.0
REQUEST_MOST = 16 << 20   # characters of one request line (a cell's source, files it writes)


def serve(port, agent):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(8)
    print(f"labkit-vm-agent: listening on port {port}", flush=True)
    while True:
        connection, _ = listener.accept()
        agent.own_fds = (listener.fileno(), connection.fileno())
        # One connection at a time, and the port is forwarded from the host's 127.0.0.1,
        # which every local user reaches: one that connects and says nothing (or sends a
        # line without end) held the agent for ever, and its kernel with it (an audit).
        # The request is one line, read within REQUEST_SECONDS and at most REQUEST_MOST.
        # A connection that fails (timed out, closed or reset by its peer, before or while
        # it is answered) ends, and the agent serves the next: one that went away before its
        # answer was written ended the agent itself, and the VM with it (a broken pipe, in
        # the v2 lane's snapshot restore).
        connection.settimeout(REQUEST_SECONDS)
        try:
            with connection, connection.makefile("rw") as stream:
                line = stream.readline(REQUEST_MOST)
                if not line:
                    continue   # closed without a request: nothing to answer
                connection.settimeout(None)
                try:
                    request = json.loads(line) if line.endswith("\n") else {}
                except ValueError:
                    request = {}
                stream.write(json.dumps(agent.answer(request)) + "\n")
                stream.flush()
        except OSError:
            continue


def main():
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    bring_network_up()
    token = os.environ.pop("LABKIT_VM_AGENT_TOKEN")
    hostname = os.environ.pop("LABKIT_VM_HOSTNAME", "")
    if hostname:
        socket.sethostname(hostname)
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else CONTROL_PORT, Agent(token, Warm(base_image=True)))


if __name__ == "__main__":
    main()
