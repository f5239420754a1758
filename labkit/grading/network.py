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
from labkit.grading.processes import _inode, in_namespace
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
        # as the process sees it: never a host file through an absolute symlink, never a FIFO
        text = current_world().file_of(pid, "/etc/hosts", 1 << 20).decode(errors="replace")
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


# --- two network namespaces wired by hand: a veth pair between two processes ---------------

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000


def _veths(ipr, other_pid=None) -> dict:
    """{"veths": [...], "addresses": {address: interface name}, "other": nsid} of this
    namespace: every veth (index, name, peer index, the nsid its peer is in, up, carrier,
    IPv4 addresses) and the id this namespace gives `other_pid`'s (None if it has none)."""
    addresses, names = {}, {}
    for address in ipr.get_addr(family=socket.AF_INET):
        addresses.setdefault(address["index"], []).append(f"{address.get_attr('IFA_ADDRESS')}/{address['prefixlen']}")
    veths = []
    for link in ipr.get_links():
        names[link["index"]] = link.get_attr("IFLA_IFNAME")
        if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "veth":
            continue
        veths.append({"index": link["index"], "name": link.get_attr("IFLA_IFNAME"), "peer": link.get_attr("IFLA_LINK"),
                      "peer_nsid": link.get_attr("IFLA_LINK_NETNSID"), "up": bool(link["flags"] & IFF_UP),
                      "carrier": bool(link["flags"] & IFF_LOWER_UP), "addresses": addresses.get(link["index"], [])})
    other = None
    if other_pid is not None:
        try:
            fd = os.open(f"/proc/{other_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)   # ours, from the kernel's /proc
        except OSError:
            raise ProbeFailed(f"process {other_pid} is gone") from None
        try:
            answer = ipr.get_netnsid(fd=fd) or {}
        finally:
            os.close(fd)
        nsid = answer.get("nsid")
        other = nsid if isinstance(nsid, int) and nsid >= 0 else None
    local = {text.split("/")[0]: names.get(index, "?") for index, texts in addresses.items() for text in texts}
    return {"veths": veths, "addresses": local, "other": other}


def _wiring(first, second) -> tuple:
    """(a, b, what a's namespace shows, what b's does): both processes resolved by the world
    (the grader's: inside the sandbox), their namespaces read by threads of ours."""
    a, b = running_process(first), running_process(second)
    return a, b, in_namespace(a.pid, "net", _netlink_here, lambda ipr: _veths(ipr, b.pid)), \
        in_namespace(b.pid, "net", _netlink_here, lambda ipr: _veths(ipr, a.pid))


def two_network_namespaces(first, second, deadline=2.0):
    """The two processes are in two network namespaces, and neither is the notebook's."""
    def once():
        a, b = running_process(first), running_process(second)
        mine = _inode(current_world().reference, "net")
        seen = {process.label: _inode(process.pid, "net") for process in (a, b)}
        shared = [label for label, inode in seen.items() if inode == mine]
        if shared:
            return Observation(False, f"{' and '.join(shared)}: the notebook's own network namespace")
        if len(set(seen.values())) == 1:
            return Observation(False, f"{a.label} and {b.label} are in one network namespace")
        return Observation(True, f"{a.label} and {b.label}: two network namespaces of their own")
    return lambda: poll(once, deadline)


def veth_pair_between(first, second):
    """A veth in the first process's namespace whose peer is a veth in the second's: each
    end names the other's ifindex, and the namespace id its peer is in is the other's."""
    def look():
        a, b, here, there = _wiring(first, second)
        if _inode(a.pid, "net") == _inode(b.pid, "net"):
            return Observation(False, f"{a.label} and {b.label} are in one network namespace: a pair there joins nothing")
        for side, label in ((here, a.label), (there, b.label)):
            if not side["veths"]:
                return Observation(False, f"no veth in the network namespace of {label}")
        for end in here["veths"]:
            if here["other"] is None or end["peer_nsid"] != here["other"]:
                continue
            for peer in there["veths"]:
                if peer["index"] == end["peer"] and peer["peer"] == end["index"] and there["other"] is not None \
                        and peer["peer_nsid"] == there["other"]:
                    return Observation(True, f"{end['name']} ({a.label}) and {peer['name']} ({b.label}) are one veth pair")
        ends = ", ".join(end["name"] for end in here["veths"])
        return Observation(False, f"the veth(s) of {a.label} ({ends}) have their peer outside {b.label}'s namespace")
    return look


def veth_addresses_in(first, second, subnet: str):
    """Each process's namespace has a veth with an IPv4 address in `subnet`, and the two
    addresses differ."""
    import ipaddress

    def look():
        try:
            network = ipaddress.ip_network(value_of(subnet))
        except ValueError as error:
            raise ProbeFailed(f"{subnet!r} is not a subnet: {error}") from None
        a, b, here, there = _wiring(first, second)
        found = []
        for label, side in ((a.label, here), (b.label, there)):
            inside = [text for end in side["veths"] for text in end["addresses"]
                      if ipaddress.ip_address(text.split("/")[0]) in network]
            if not inside:
                shown = ", ".join(f"{end['name']} {' '.join(end['addresses']) or 'no address'}" for end in side["veths"])
                return Observation(False, f"{label}: no veth address in {network} ({shown or 'no veth'})")
            found.append(inside)
        pairs = [(x, y) for x in found[0] for y in found[1] if x.split("/")[0] != y.split("/")[0]]
        if not pairs:
            return Observation(False, f"{a.label} and {b.label} have one address: {found[0][0]}")
        return Observation(True, f"{a.label}: {pairs[0][0]}, {b.label}: {pairs[0][1]}")
    return look


def veths_up(first, second, deadline=2.0):
    """Every veth in both namespaces is up, and has a carrier (its peer is up too); polled a
    moment, since a link just set up takes a little while to report it."""
    def once():
        a, b, here, there = _wiring(first, second)
        words = []
        for label, side in ((a.label, here), (b.label, there)):
            if not side["veths"]:
                return Observation(False, f"no veth in the network namespace of {label}")
            for end in side["veths"]:
                state = "up" if end["up"] and end["carrier"] else "up, no carrier" if end["up"] else "down"
                words.append((end["up"] and end["carrier"], f"{end['name']} ({label}) {state}"))
        return Observation(all(ok for ok, _ in words), ", ".join(text for _, text in words))
    return lambda: poll(once, deadline, interval=0.1)


def echo_between(first, second, deadline=5.0):
    """From the first process's network namespace, the grader's own ICMP echo to an address
    of a veth in the second's (one the first does not have itself) is answered."""
    def look():
        def ping():
            a, b, here, there = _wiring(first, second)
            targets = [text.split("/")[0] for end in there["veths"] for text in end["addresses"]]
            remote = [address for address in targets if address not in here["addresses"]]
            if not targets:
                return Observation(False, f"no veth of {b.label} has an IPv4 address")
            if not remote:
                return Observation(False, f"every address of {b.label} ({', '.join(targets)}) is also one of "
                                          f"{a.label}'s namespace: one namespace, nothing crosses")
            for address in remote:
                if in_namespace(a.pid, "net", echo, address):
                    return Observation(True, f"ping {address} from {a.label}'s namespace: answered")
            return Observation(False, f"ping {', '.join(remote)} from {a.label}'s namespace: no answer")
        return poll(ping, deadline, interval=0.2)
    return look
