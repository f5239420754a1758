"""Published ports: `-p [IP:]HOSTPORT:CONTAINERPORT[/tcp]` makes a container's TCP port
reachable on the host at IP:HOSTPORT (127.0.0.1 when no IP is given: Docker's default is
every address, 0.0.0.0, which would put a student's container on the network).

How: a small userspace proxy in the owner process (the kernel, script or CLI that
started the container), like Docker's `docker-proxy`. It listens on 127.0.0.1:HOSTPORT
and, for each connection, opens one to CONTAINER_IP:CONTAINERPORT over the bridge and
copies bytes both ways (two threads per connection: each direction blocks on its own,
so a full buffer one way can never stall the other).

Why not DNAT (nftables/iptables): packets to 127.0.0.1 never leave the host's loopback,
so DNAT to a container needs `route_localnet=1`, a system-wide knob that also makes
127.0.0.0/8 routable on the chosen interfaces, plus conntrack and rules that outlive a
killed owner and must be swept. This host has neither `nft` nor `iptables`, and labkit
does not shell out. The proxy needs none of that: the port is taken by `bind()` before
the container starts (so "port in use" is an exact, early error), nothing system-wide
changes, and everything it holds dies with the owner. The price, as with docker-proxy:
a copy through user space, and the container sees connections coming from the bridge
address rather than from the original client.

Rootless, the bridge is in a network namespace of the user's own: the same proxy makes each
connection's socket there (`start(ip, make_socket)`, labkit.net.rootless_bridge).
"""

import errno
import socket
import threading
import time
from dataclasses import dataclass

from labkit.errors import ConfigError, HostError

HOST_ADDRESS = "127.0.0.1"
CONNECT_TIMEOUT = 5.0
CHUNK = 256 * 1024
# Connections relayed at once per published port (each holds two descriptors and a
# thread of the owner, a notebook's kernel): past this, a new one is closed at once.
MOST_CONNECTIONS = 128
# accept() errors that say the owner (or the host) is short of something for now: wait
# and accept again. Any other error means the listener was closed.
SHORT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = HOST_ADDRESS

    @classmethod
    def parse(cls, text: str) -> "PortMapping":
        """Docker's `[IP:]HOSTPORT:CONTAINERPORT[/PROTOCOL]`, IPv4 (an IPv6 address is
        refused: the proxy listens on IPv4)."""
        ports, _, protocol = str(text).partition("/")
        protocol = protocol or "tcp"
        if protocol != "tcp":
            raise ConfigError(f"--publish {text!r}: only tcp is supported (udp has no connections to proxy)")
        parts = ports.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--publish {text!r} is not [IP:]HOSTPORT:CONTAINERPORT, e.g. 8080:80 or "
                              "127.0.0.1:8080:80")
        address = parts[0] if len(parts) == 3 else HOST_ADDRESS
        try:
            socket.inet_pton(socket.AF_INET, address)
        except OSError:
            raise ConfigError(f"--publish {text!r}: {address!r} is not an IPv4 address of this host, "
                              "e.g. 127.0.0.1") from None
        return cls(_port(parts[-2], text), _port(parts[-1], text), protocol, address)

    def __str__(self):
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


def _port(value, text) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"--publish {text!r}: {value!r} is not a port number (1-65535)")
    return int(value)


class PublishedPort:
    """One mapping: its listening socket exists from construction (the port is ours),
    and relaying starts with `start(container_ip)`."""

    def __init__(self, mapping: PortMapping):
        self.mapping = mapping
        self.target = None
        self.make_socket = None
        self.connections = set()
        self.room = threading.BoundedSemaphore(MOST_CONNECTIONS)   # one per connection, from accept to its end
        self.lock = threading.Lock()
        self.closed = False
        self.thread = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR only skips TIME_WAIT leftovers; a live listener still gives EADDRINUSE.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((mapping.host_ip, mapping.host_port))
            self.listener.listen(64)
        except OSError as error:
            self.listener.close()
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot publish {mapping}: port {mapping.host_port} on {mapping.host_ip} is "
                                  f"already in use (another program or container); pick another host port") from None
            if error.errno == errno.EACCES:
                raise ConfigError(f"cannot publish {mapping}: host ports below {_first_unprivileged_port()} "
                                  f"need root; pick a host port of {_first_unprivileged_port()} or more") from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"cannot publish {mapping}: {mapping.host_ip} is not an address of this host; "
                                  f"give one it has, e.g. {HOST_ADDRESS}") from None
            raise HostError(f"cannot listen on {mapping.host_ip}:{mapping.host_port}: {error.strerror}") from None

    def start(self, container_ip: str, make_socket=None):
        """Relay to `container_ip`; `make_socket()`, if given, makes each connection's
        socket (rootless: one of the bridge's network namespace, where the container is)."""
        self.target = (container_ip, self.mapping.container_port)
        self.make_socket = make_socket
        self.thread = threading.Thread(target=self._accept_loop, name=f"labkit-port-{self.mapping.host_port}",
                                       daemon=True)
        self.thread.start()

    def _accept_loop(self):
        """Accepts until the port is closed. Out of descriptors (EMFILE: many connections
        held open, by the container or any local user) it waits and accepts again: it
        used to end there, and the port then took connections it never served."""
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError as error:
                if self.closed or error.errno not in SHORT_OF + (errno.ECONNABORTED,):
                    return  # closed (shutdown wakes accept with EINVAL)
                time.sleep(0.05 if error.errno != errno.ECONNABORTED else 0)
                continue
            if not self.room.acquire(blocking=False):
                client.close()   # MOST_CONNECTIONS already: the client sees EOF
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client):
        """Holds a place in `room` until the relay has ended both ways (`_forget`)."""
        try:
            if self.make_socket is None:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            else:
                upstream = self.make_socket()
                upstream.settimeout(CONNECT_TIMEOUT)
                try:
                    upstream.connect(self.target)
                except OSError:
                    upstream.close()
                    raise
        except (OSError, HostError):
            client.close()  # nothing listens in the container: the client sees EOF
            self.room.release()
            return
        upstream.settimeout(None)
        relay = _Relay(client, upstream, self._forget)
        with self.lock:
            if self.closed:
                relay.abort()
            self.connections.add(relay)
        relay.run()

    def _forget(self, relay):
        with self.lock:
            self.connections.discard(relay)
        self.room.release()

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            connections = list(self.connections)
        _shutdown(self.listener)   # wakes the accept() blocked in the accept thread
        self.listener.close()
        for relay in connections:
            relay.abort()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=2)


def _first_unprivileged_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as start:
            return int(start.read())
    except (OSError, ValueError):
        return 1024


class _Relay:
    """One proxied connection: bytes copied both ways until both sides said EOF."""

    def __init__(self, client, upstream, on_done):
        self.client, self.upstream = client, upstream
        self.on_done = on_done
        self.lock = threading.Lock()
        self.finished = 0

    def run(self):
        threading.Thread(target=self._copy, args=(self.upstream, self.client), daemon=True).start()
        self._copy(self.client, self.upstream)

    def _copy(self, source, destination):
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                destination.sendall(data)
            # Pass the EOF on but keep the socket: the other direction may still be talking.
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
        finally:
            with self.lock:
                self.finished += 1
                last = self.finished == 2
            if last:
                self.client.close()
                self.upstream.close()
                self.on_done(self)

    def abort(self):
        """Wake both copiers (their recv returns) so that they finish and close."""
        _shutdown(self.client)
        _shutdown(self.upstream)


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def publish_all(texts) -> list:
    """Parse and bind every mapping, or none: a failure closes those already bound."""
    mappings = [PortMapping.parse(text) for text in texts]
    seen = set()
    for mapping in mappings:
        if (mapping.host_ip, mapping.host_port) in seen:
            raise ConfigError(f"host port {mapping.host_ip}:{mapping.host_port} is published twice")
        seen.add((mapping.host_ip, mapping.host_port))
    published = []
    try:
        for mapping in mappings:
            published.append(PublishedPort(mapping))
    except BaseException:
        for port in published:
            port.close()
        raise
    return published
