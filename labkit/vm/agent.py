"""The VM kernel's agent: runs inside the guest, starts and signals the IPython kernel.

Started by the guest's stage 2 as `python -I agent.py` (standard library only: no
labkit import, so it is up a second after the guest), it brings the guest's network
device up for QEMU's port forwards and then answers one JSON request per TCP
connection on its control port:

    {"token": T, "op": "start", "argv": [...], "env": {...}, "cwd": D, "connection": {...}}
    {"token": T, "op": "signal", "signum": N}     -> to the kernel's process group
    {"token": T, "op": "poll"}                     -> {"exit": null | status}
    {"token": T, "op": "hello"}

Every answer is one JSON line. A request without the token (from
$LABKIT_VM_AGENT_TOKEN, given by the host) is refused. The connection file the
kernel reads is written here with ip 0.0.0.0: QEMU's forwards arrive on the guest's
network device, not on its loopback.
"""

import hmac
import json
import os
import signal
import socket
import subprocess
import sys

BUSYBOX = "/run/labkit/busybox"
GUEST_ADDRESS = "10.0.2.15/24"   # what QEMU's user-mode network gives its first guest
CONNECTION_FILE = "/run/labkit/kernel-connection.json"


class Agent:
    def __init__(self, token):
        self.token = token
        self.kernel = None

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

    def op_start(self, request):
        if self.kernel is not None and self.kernel.poll() is None:
            return {"error": f"a kernel already runs (pid {self.kernel.pid})"}
        connection = dict(request["connection"], ip="0.0.0.0")
        with open(os.open(CONNECTION_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(connection, handle)
        argv = [CONNECTION_FILE if word == request["connection_file"] else word for word in request["argv"]]
        # Its own session, as jupyter_client starts a local kernel: a signal goes to
        # the kernel and everything it started. Its output goes to the console.
        self.kernel = subprocess.Popen(argv, env=request["env"], cwd=request["cwd"], stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        return {"pid": self.kernel.pid}

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


def bring_network_up():
    for command in (["ip", "addr", "add", GUEST_ADDRESS, "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
        subprocess.run([BUSYBOX, *command], check=True)


def serve(port, agent):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(8)
    print(f"labkit-vm-agent: listening on port {port}", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection, connection.makefile("rw") as stream:
            try:
                request = json.loads(stream.readline() or "{}")
            except ValueError:
                request = {}
            stream.write(json.dumps(agent.answer(request)) + "\n")
            stream.flush()


def main():
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    bring_network_up()
    serve(int(sys.argv[1]), Agent(os.environ.pop("LABKIT_VM_AGENT_TOKEN")))


if __name__ == "__main__":
    main()
