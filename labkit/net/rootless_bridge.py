"""`--net bridge` without root: the bridge in a network namespace of the user's own, as
rootless podman keeps its "rootless netns".

Why a keeper process: an ordinary user owns no interface of the host's network namespace,
so the bridge cannot be there. It is put in a network namespace made inside a user
namespace of the user's, where he is root. A veth pair between that namespace and a
container's needs CAP_NET_ADMIN over both, which root of one user namespace has only
over namespaces owned by it (or by its descendants): every container on the bridge must
therefore be made in the *same* user namespace. So one process per LABKIT_HOME, the
keeper (`python -m labkit.net.rootless_bridge HOME`, named `labkit-netns`), holds that user
namespace (mapped from /etc/subuid like any of labkit's), and every rootless helper of
the home joins it instead of making one of its own (podman's "pause" process does the
same); containers are then made in it as before.

The keeper, on its socket `HOME/net/rootless.sock` (the home is the user's, 0700: no other
user can connect), one JSON message per datagram:

    {"op": "hello"}                                 a helper: the keeper's PID; the
                                                    connection stays open while it lives
    {"op": "bridge", "subnet", "gateway", "alias"}  the bridge made (with the network
                                                    namespace, on first use): its name, index
    {"op": "plug", "veth", "pid", "ip", "alias"}    a veth pair, eth0 in the netns of `pid`
    {"op": "unplug", "veth"}                        deleted
    {"op": "netns"}                                 the PID holding the bridge's namespace
    {"op": "socket"}                                a TCP socket made in that namespace,
                                                    passed back (SCM_RIGHTS): a published
                                                    port's connection to a container

What goes when: the bridge's namespace (a child process holds it, and nothing else does)
goes once no port is plugged into the bridge and no live owner holds a lease (checked under
the lease book's lock, so that a container being prepared keeps it); a container's veth pair
goes with the container's namespace, so a killed owner's containers (killed by its helper)
free the bridge by themselves. The keeper exits once no helper is connected and the
namespace is gone. Containers reach each other and the bridge's address, by name through
their /etc/hosts.

Published ports, as rootless podman's `rootlessport`: the owner listens on the host's port
(labkit.net.ports, as for root) and, for each connection, asks the keeper for a socket made
in the bridge's namespace and connects it to the container: a socket belongs to the
namespace it was made in, wherever it is used after. Nothing to undo: a killed owner's
listeners and connections close with it.

Outbound traffic, as podman's rootless netns: the keeper starts pasta for the bridge's
namespace with the bridge (an `uplink` interface with the host's address and default route;
pasta carries its traffic through sockets of the user's own, and maps the host's gateway
address to the host's loopback) and, in that namespace only, turns on forwarding and
masquerades the bridge's subnet behind the uplink's address (nftables: a table of the
namespace's own). The host's forwarding and firewall are not touched. pasta is stopped
with the namespace, and, as the keeper's child with a death signal, killed with a killed
keeper (it holds the namespace open and would not end by itself). Without pasta or nft
there is no uplink: the bridge still works, and the `netns` answer's "uplink" says why.
"""

import errno
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from labkit.errors import HostError
from labkit.files import open_lock
from labkit.linux import syscalls

NAME = "labkit-netns"
BRIDGE = "labkit0"          # the only bridge in its namespace: no host-wide naming needed
UPLINK = "uplink"           # pasta's interface in it: the way out
CHECK_EVERY = 0.5           # seconds between checks whether the bridge is still used
MAX_MESSAGE = 65536


def socket_path(home) -> Path:
    return Path(home) / "net" / "rootless.sock"


def _address(path: Path) -> str:
    """`path` as a Unix socket address: sun_path holds 108 bytes, and a deep LABKIT_HOME
    can be longer; then the directory is named through an O_PATH descriptor of ours."""
    if len(os.fsencode(path)) < 100:
        return str(path)
    if path.parent not in _directories:   # kept open: the address names it while this process uses it
        _directories[path.parent] = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    return f"/proc/self/fd/{_directories[path.parent]}/{path.name}"


_directories = {}


def _lock_path(home) -> Path:
    return Path(home) / "net" / "rootless.lock"


# --- the caller's side -----------------------------------------------------------------

def request(home, op: str, **fields) -> dict:
    """One request to the home's keeper, which a helper of this home keeps running.
    Descriptors the keeper passes come as the reply's "fds"."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        try:
            sock.connect(_address(socket_path(home)))
        except OSError as error:
            raise HostError(f"rootless --net bridge: no {NAME} process serves {home} ({error.strerror}); "
                            "it is started with labkit's helper: start a container first") from None
        sock.sendall(json.dumps({"op": op, **fields}).encode())
        answer, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4, socket.MSG_CMSG_CLOEXEC)
    if fds:
        return {**json.loads(answer), "fds": fds}
    if not answer:
        raise HostError(f"rootless --net bridge: the {NAME} process of {home} hung up")
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise HostError(f"rootless --net bridge: {reply.get('error')}")
    return reply


def socket_in_bridge_namespace(home) -> socket.socket:
    """A TCP socket of the bridge's namespace (to connect to a container's address)."""
    reply = request(home, "socket")
    return socket.socket(fileno=reply["fds"][0])


def join(home) -> socket.socket:
    """In a rootless helper, single-threaded, before anything is made: become root of the
    home's shared user namespace (the keeper's; started here if there is none). Returns
    the connection to the keeper, to keep open while the helper lives."""
    from labkit.linux.rootless import join_user_namespace_of

    path = socket_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = _hello(path)
    if sock is None:
        with open(open_lock(_lock_path(home)), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _hello(path)
            if sock is None:
                _start_keeper(home)
                sock = _hello(path)
        if sock is None:
            raise HostError(f"rootless: the {NAME} process for {home} did not start")
    pid = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    join_user_namespace_of(int.from_bytes(pid[:4], sys.byteorder))
    return sock


def _hello(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(_address(path))
        sock.sendall(b'{"op": "hello"}')
        if json.loads(sock.recv(MAX_MESSAGE) or b"{}").get("ok"):
            return sock
    except (OSError, ValueError):
        pass
    sock.close()
    return None


def _start_keeper(home) -> None:
    """The keeper, in a session of its own and not our child (a double fork): it outlives
    this helper when other helpers of the home still use it. Returns once it listens."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                os.dup2(ready_w, 1)
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 2)   # not the helper's stderr: a pipe someone may wait on to close
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.execv(sys.executable, [sys.executable, "-m", "labkit.net.rootless_bridge", str(home)])
        finally:
            os._exit(0)
    os.close(ready_w)
    os.waitpid(child, 0)
    with os.fdopen(ready_r, "rb") as ready:
        said = ready.read()
    if said.strip() != b"ready":
        raise HostError(f"rootless: the {NAME} process for {home} failed: "
                        f"{said.decode(errors='replace').strip() or 'no word'}")


# --- the keeper ------------------------------------------------------------------------

class Keeper:
    def __init__(self, home: Path):
        self.home = home
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.clients = {}           # fd -> socket (helpers stay, requests come and go)
        self.holder = None          # (pid, fd of /proc/pid/ns/net, pipe write end)
        self.host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.bridge_index = None
        self.worker = None          # the thread in the bridge's namespace
        self.uplink = None          # its pasta (labkit.net.pasta.Pasta), the way out
        self.no_uplink = None       # or why there is none

    def listen(self):
        path = socket_path(self.home)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        self.listener.bind(_address(path))
        self.listener.listen(16)

    def serve(self):
        while True:
            readable, _, _ = select.select([self.listener, *self.clients.values()], [], [], CHECK_EVERY)
            for sock in readable:
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    self.clients[client.fileno()] = client
                else:
                    self.answer(sock)
            if self.holder is not None:
                self.end_bridge_if_unused()
            if self.holder is None and not self.clients and self.may_exit():
                return

    def answer(self, sock):
        try:
            data = sock.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            del self.clients[sock.fileno()]
            sock.close()
            return
        passed = []
        try:
            message = json.loads(data)
            reply = {"ok": True, **(getattr(self, "op_" + message["op"])(message) or {})}
            passed = reply.pop("pass", [])
        except Exception as error:  # noqa: BLE001 — said to the asker, the keeper goes on
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        try:
            socket.send_fds(sock, [json.dumps(reply).encode()], [item.fileno() for item in passed])
        except OSError:
            pass
        finally:
            for item in passed:
                item.close()

    def op_hello(self, message):
        return {"pid": os.getpid()}

    def op_netns(self, message):
        return {"pid": self.holder[0] if self.holder else None, "uplink": self.uplink_state()}

    def op_socket(self, message):
        if self.holder is None:
            raise HostError("the bridge's network namespace is gone (no container is on it)")
        return {"pass": [self.in_namespace(lambda ipr: socket.socket(socket.AF_INET, socket.SOCK_STREAM))]}

    def uplink_state(self):
        if self.holder is None:
            return None
        return f"pasta {self.uplink.pid}" if self.uplink is not None else self.no_uplink

    def op_bridge(self, message):
        import ipaddress

        if self.holder is None:
            self.make_namespace()
        if self.bridge_index is None:
            prefixlen = ipaddress.ip_network(message["subnet"]).prefixlen

            def work(ipr):
                ipr.link("add", ifname=BRIDGE, kind="bridge", address="02:6c:6b:00:00:01")
                index = ipr.link_lookup(ifname=BRIDGE)[0]
                ipr.link("set", index=index, ifalias=message["alias"][:255], state="up")
                ipr.addr("add", index=index, address=message["gateway"], prefixlen=prefixlen)
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                return index
            self.bridge_index = self.in_namespace(work)
            self.start_uplink(message["subnet"])
        return {"bridge": BRIDGE, "index": self.bridge_index}

    def op_plug(self, message):
        from labkit.net.veth import CONTAINER_NAME, mac_for, make_ready

        def work(ipr):
            ipr.link("add", ifname=message["veth"], kind="veth", master=self.bridge_index, state="up",
                     peer={"ifname": CONTAINER_NAME, "net_ns_pid": int(message["pid"]),
                           "address": mac_for(message["ip"])})
            ipr.link("set", ifname=message["veth"], ifalias=message["alias"][:255])
            make_ready(message["veth"], int(message["pid"]))
        self.in_namespace(work)

    def op_unplug(self, message):
        from labkit.net.rtnl import is_missing

        def work(ipr):
            try:
                ipr.link("del", ifname=message["veth"])
            except Exception as error:  # noqa: BLE001
                if not is_missing(error):
                    raise
        if self.holder is not None:
            self.in_namespace(work)

    def make_namespace(self):
        """A child that unshares a network namespace and holds it until told (or until
        the keeper dies: its pipe closes, and a death signal besides)."""
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(hold_w)
                syscalls.prctl_set_pdeathsig(signal.SIGKILL)
                syscalls.unshare(syscalls.CLONE_NEWNET)
                syscalls.prctl_set_name("labkit-netns-hold")
                os.write(ready_w, b"y")
                os.read(hold_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(hold_r)
        said = os.read(ready_r, 1)
        os.close(ready_r)
        if said != b"y":
            os.waitpid(pid, 0)
            os.close(hold_w)
            raise HostError("could not make the bridge's network namespace")
        self.holder = (pid, os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC), hold_w)

    def start_uplink(self, subnet):
        """pasta for the namespace, then forwarding and the masquerade inside it (see the
        module's text). What fails leaves the bridge without a way out, said in `no_uplink`."""
        from labkit.net import pasta

        if nft_program() is None:
            self.no_uplink = "no uplink: nft is not installed (apt-get install nftables; `make setup` does)"
            return
        try:
            # pasta is our child, killed with us: a killed keeper leaves no pasta holding the namespace
            self.uplink = pasta.start_tied(self.holder[0], UPLINK, lambda: self.in_namespace(_uplink_ready))
            self.in_namespace(lambda ipr: _route_out(subnet))
        except Exception as error:  # noqa: BLE001 — the bridge works without it; said on request
            self.no_uplink = f"no uplink: {error}"
            self.stop_uplink()

    def stop_uplink(self):
        if self.uplink is not None:
            from labkit.net import pasta

            pasta.stop(self.uplink)
            self.uplink = None

    def in_namespace(self, work):
        """`work(ipr)` with a netlink socket of the bridge's namespace, in a thread that
        joined it: setns of a network namespace moves the calling thread only, and one that
        left the host's could not come back (the host's is not the user's to join)."""
        if self.worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns",
                                             initializer=syscalls.setns, initargs=(self.holder[1], syscalls.CLONE_NEWNET))
        return self.worker.submit(_with_ipr, work).result()

    def end_bridge_if_unused(self):
        """Under the lease book's lock, tried without waiting: a client holds it while it
        asks this keeper for the bridge, and would wait for an answer forever."""
        from labkit.net import ipam

        with open(open_lock(ipam.net_dir(self.home) / "leases.lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            book = ipam.read_leases(self.home)
            if book is not None and book.live_leases():
                return
            ports = self.in_namespace(lambda ipr: [link for link in ipr.get_links()
                                                   if link.get_attr("IFLA_MASTER") == self.bridge_index])
            if ports:
                return
            self.end_namespace()

    def end_namespace(self):
        self.stop_uplink()
        self.no_uplink = None
        pid, netns, hold = self.holder
        self.holder = self.bridge_index = None
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None
        os.close(hold)          # the holder reads EOF and exits: the namespace goes with it
        os.close(netns)
        os.waitpid(pid, 0)

    def may_exit(self) -> bool:
        """Leave, unless a helper connects meanwhile: under the start lock, so that a helper
        either finds this keeper before it goes or starts the next one."""
        with open(open_lock(_lock_path(self.home)), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.listener.setblocking(False)
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                socket_path(self.home).unlink(missing_ok=True)
                return True
            finally:
                self.listener.setblocking(True)
            self.clients[client.fileno()] = client
            return False


def _uplink_ready(ipr) -> bool:
    """pasta's setup is done: its interface has an IPv4 address and the default route."""
    index = ipr.link_lookup(ifname=UPLINK)
    return bool(index and ipr.get_addr(family=socket.AF_INET, index=index[0])
                and ipr.get_default_routes(family=socket.AF_INET))


def nft_program() -> str | None:
    """nft, also where an ordinary user's PATH does not look (Debian's has no /usr/sbin)."""
    import shutil

    return shutil.which("nft", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _route_out(subnet):
    """In the bridge's namespace (a thread that joined it: /proc/sys/net and the nft child
    are that namespace's): forward, and masquerade the bridge's subnet behind the uplink."""
    import subprocess

    with open("/proc/sys/net/ipv4/ip_forward", "w") as forward:
        forward.write("1")
    rules = (f"table ip labkit {{\n chain out {{\n  type nat hook postrouting priority srcnat\n"
             f"  ip saddr {subnet} oifname \"{UPLINK}\" masquerade\n }}\n}}\n")
    done = subprocess.run([nft_program(), "-f", "-"], input=rules, capture_output=True, text=True)
    if done.returncode != 0:
        raise HostError(f"nft could not add the masquerade: {done.stderr.strip()}")


def _with_ipr(work):
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        return work(ipr)
    finally:
        ipr.close()


def main(argv) -> int:
    from labkit.linux.rootless import enter_user_namespace

    home = Path(argv[0])
    try:
        syscalls.prctl_set_name(NAME)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        enter_user_namespace(quiet=True)
        keeper = Keeper(home)
        keeper.listen()
    except BaseException as error:  # noqa: BLE001 — said to the helper that started us
        print(f"{type(error).__name__}: {error}", flush=True)
        return 1
    print("ready", flush=True)
    os.close(1)
    os.open(os.devnull, os.O_WRONLY)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        keeper.serve()
    finally:
        if keeper.holder is not None:
            keeper.end_namespace()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
