"""Probes of container networking, from the kernel's side: which bridge a process's
interface is plugged into (its veth peer's master, through netlink in the namespaces
themselves), whether one process reaches another by name (the name its own /etc/hosts
gives, an ICMP echo sent from its network namespace by a thread of ours, answered from
the other's address), and whether a port answers on 127.0.0.1 in the notebook's network
namespace (the sandbox's, in `labkit grade run`). No program of the container's runs."""

import os
import socket
import struct
import time

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.processes import in_namespace
from labkit.grading.targets import current_world, poll, running_process, value_of


def _links(ipr) -> list:
    return [(link["index"], link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_LINK"), link.get_attr("IFLA_MASTER"))
            for link in ipr.get_links()]


def _netlink_here(work):
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return work(ipr)


def _peer_indexes(pid) -> list:
    """The peer ifindexes (in the parent namespace) of the process's veth interfaces."""
    links = in_namespace(pid, "net", _netlink_here, _links)
    return [peer for _, name, peer, _ in links if name != "lo" and peer]


def bridge_of(process) -> str | None:
    """The bridge the process's veth peer is a port of, in the notebook's namespace (without
    root: in the network namespace the bridge is in, labkit/net/rootless_bridge.py)."""
    peers = _peer_indexes(process.pid)
    if not peers:
        return None

    def master(ipr):
        links = {index: (name, master) for index, name, _, master in _links(ipr)}
        for peer in peers:
            if peer in links and links[peer][1] in links:
                return links[links[peer][1]][0]
        return None
    from labkit.net import bridge_namespace

    rootless = bridge_namespace()   # without root the bridge is in a namespace of the user's own
    if rootless is not None:
        return in_namespace(int(rootless.split("/")[2]), "net", _netlink_here, master)
    return current_world().in_netns(_netlink_here, master)


def same_bridge(first, second):
    def look():
        a, b = running_process(first), running_process(second)
        bridges = bridge_of(a), bridge_of(b)
        if None in bridges:
            lonely = a.label if bridges[0] is None else b.label
            return Observation(False, f"{lonely} is not plugged into a bridge")
        return Observation(bridges[0] == bridges[1], "both on one bridge" if bridges[0] == bridges[1]
                           else "on different bridges")
    return look


def _addresses(ipr) -> set:
    return {address.get_attr("IFA_ADDRESS") for address in ipr.get_addr(family=socket.AF_INET)}


def _hosts_address(pid, name) -> str | None:
    """The IPv4 address `name` has in the process's own /etc/hosts (what it resolves)."""
    try:
        with open(f"/proc/{pid}/root/etc/hosts", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and name in words[1:] and words[0].count(".") == 3:
            return words[0]
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo(address: str, timeout: float = 1.0) -> bool:
    """One ICMP echo to `address` from the calling thread's network namespace."""
    ident, payload = os.getpid() & 0xFFFF, b"labkit-grader"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (address, 0))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                reply, (source, _) = sock.recvfrom(2048)
            except (socket.timeout, OSError):
                return False
            offset = (reply[0] & 0x0F) * 4
            kind, _, _, their_ident, _ = struct.unpack("!BBHHH", reply[offset:offset + 8])
            if kind == 0 and their_ident == ident and source == address:
                return True
    return False


def reaches_by_name(first, second, deadline=5.0):
    """From `first`'s network namespace, the name of `second` (as `first`'s /etc/hosts
    has it) is an address of `second`'s, and it answers an ICMP echo."""
    def look():
        a, b = running_process(first), running_process(second)
        name = value_of(second)
        name = getattr(name, "name", name)        # a Container of the kernel's (feedback only)
        if not isinstance(name, str) or name.startswith("/"):
            raise ProbeFailed("reaching by name needs the second container's name")
        if bridge_of(a) is None or bridge_of(a) != bridge_of(b):
            return Observation(False, f"{a.label} and {b.label} are not on one bridge")

        def ping():
            address = _hosts_address(a.pid, name)
            if address is None:
                return Observation(False, f"{name} is not in /etc/hosts of {a.label}")
            if address not in in_namespace(b.pid, "net", _netlink_here, _addresses):
                return Observation(False, f"{name} is {address} in {a.label}, which is not an address of {b.label}")
            answered = in_namespace(a.pid, "net", echo, address)
            return Observation(answered, f"ping {name} ({address}) from {a.label}: "
                               + ("answered" if answered else "no answer"))
        return poll(ping, deadline, interval=0.2)
    return look


def port_answers(port, contains: str = "", deadline=5.0):
    """A TCP server answers on 127.0.0.1:`port` (an HTTP GET; `contains` in the reply)."""
    def look():
        number = value_of(port)
        try:
            number = int(number)
        except (TypeError, ValueError):
            raise ProbeFailed(f"{number!r} is not a port number") from None
        if not 0 < number < 65536:
            raise ProbeFailed(f"{number} is not a port number")
        world = current_world()
        return poll(lambda: world.in_netns(_ask, number, contains), deadline, interval=0.2)
    return look


def _ask(port, contains) -> Observation:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.settimeout(2)
            connection.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            reply = b""
            while len(reply) < 65536:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as error:
        return Observation(False, f"127.0.0.1:{port}: {error.strerror or error}")
    if not reply:
        return Observation(False, f"127.0.0.1:{port} accepted, then closed without a reply")
    text = reply.decode(errors="replace")
    if contains and contains not in text:
        return Observation(False, f"127.0.0.1:{port} answered, but not with {contains!r}")
    return Observation(True, f"127.0.0.1:{port} answered")
