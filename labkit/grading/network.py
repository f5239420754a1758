"""Probes of container networking: two containers plugged into the same bridge (their
host-side veth ends enslaved to it, read through netlink) that reach each other by name,
and a published port answering on 127.0.0.1. Both poll: a link or a server may need a
moment after the cell that made it."""

import socket

from labkit.grading.checks import Observation, ProbeFailed
from labkit.grading.targets import poll, running_container, value_of


def _master_of(link_name):
    from labkit.net.rtnl import netlink

    def work(ipr):
        found = ipr.link_lookup(ifname=link_name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        master = link.get_attr("IFLA_MASTER")
        if master is None:
            return None
        return ipr.get_links(master)[0].get_attr("IFLA_IFNAME")
    return netlink(work)


def bridge_of(container) -> str | None:
    """The bridge the container's host-side veth end is plugged into, as the kernel says."""
    network = container.network
    if network is None or network.mode != "bridge" or not network.host_veth:
        return None
    return _master_of(network.host_veth)


def same_bridge(first, second):
    def look():
        a, b = running_container(first), running_container(second)
        bridges = bridge_of(a), bridge_of(b)
        if None in bridges:
            lonely = a.name if bridges[0] is None else b.name
            return Observation(False, f"{lonely} is not plugged into a bridge")
        return Observation(bridges[0] == bridges[1], "both on one bridge" if bridges[0] == bridges[1]
                           else "on different bridges")
    return look


def reaches_by_name(first, second, deadline=5.0):
    """From inside `first`, `ping NAME-OF-SECOND` gets an answer."""
    def look():
        a, b = running_container(first), running_container(second)
        if bridge_of(a) is None or bridge_of(a) != bridge_of(b):
            return Observation(False, f"{a.name} and {b.name} are not on one bridge")

        def ping():
            result = a.exec(["ping", "-c", "1", "-W", "1", b.name], timeout=5)
            return Observation(result.ok, f"ping {b.name} from {a.name}: "
                               + ("answered" if result.ok else "no answer"))
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
        return poll(lambda: _ask(number, contains), deadline, interval=0.2)
    return look


def _ask(port, contains) -> Observation:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
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
