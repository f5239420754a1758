"""The runtime's three network hooks, in the order a container meets them. They are
given plain values (the spec, names, a PID), never the runtime's `Container`:

1. `prepare(spec, who, hosts, peer)` — before anything is made: check rights, take the
   published host ports, lease an address (and make the bridge if it is the first).
   Returns the `ContainerNetwork` and a `NetworkSetup`: which namespaces to join, what
   the container process sets up inside (eth0), and the text of its /etc/hosts.
2. `attach(network, pid, name)` — the container process exists, held in its new network
   namespace: plug a veth pair into the bridge with eth0 on the inside; start relaying
   published ports (rootless, through sockets of the keeper's network namespace).
3. `detach(network, ident)` — after exit: stop the relays, delete the veth, give the
   address back, drop the name from the others' /etc/hosts, and remove the bridge with
   its last user.

Each step undoes its own work when it fails, and `detach` may be called more than once.
"""

import atexit
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import ConfigError, HostError
from labkit.home import labkit_home
from labkit.net import bridge, hosts, ipam, veth
from labkit.net.ports import PortMapping, publish_all
from labkit.net.rtnl import require_net_admin
from labkit.linux.rootless import running_rootless


@dataclass
class ContainerNetwork:
    """What a container got from labkit.net: `container.network`."""
    mode: str                          # "bridge" or "container:NAME"
    ip: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    bridge: str | None = None
    bridge_index: int | None = None
    host_veth: str | None = None       # the host end of the veth pair (bridge mode)
    ports: list = field(default_factory=list)   # PublishedPort
    home: Path | None = None
    attached: bool = False
    released: bool = False
    forwarded: list = field(default_factory=list)   # --net pasta: the PortMappings pasta forwards
    pasta: object = None                            # --net pasta: its labkit.net.pasta.Pasta

    def __repr__(self):
        where = f"{self.ip}/{self.prefixlen} on {self.bridge}" if self.mode == "bridge" else self.mode
        published = ", ".join(str(port.mapping) for port in self.ports)
        return f"<ContainerNetwork {where}{' ports ' + published if published else ''}>"


@dataclass
class Who:
    """The container asking, in plain values."""
    id: str
    name: str
    hostname: str
    hosts_file: str       # where its /etc/hosts lives on the host (peers' names are added there)


@dataclass
class Peer:
    """`--net container:NAME`: the running container whose network namespace is shared."""
    name: str
    netns: str            # /proc/PID/ns/net
    network: "ContainerNetwork | None"
    hosts_text: str | None   # its /etc/hosts, if readable


@dataclass
class NetworkSetup:
    """The network's part of the launch plan."""
    join: dict                  # namespace kind -> path, joined instead of made
    inside: dict | None         # {"interface", "address", "netmask", "gateway"} for labkit.net.inside
    hosts: str                  # the container's /etc/hosts


_in_use = {}     # container id -> ContainerNetwork this process has not yet given back
_in_use_lock = threading.Lock()


# --- 1. prepare ------------------------------------------------------------------------

def prepare(spec, who: Who, hosts_text: str, peer: Peer | None = None):
    """(ContainerNetwork, NetworkSetup) for a `--net bridge`, `--net pasta` or `--net container:NAME` spec."""
    if spec.network.kind == "pasta":
        return _through_pasta(spec, who, hosts_text)
    if not running_rootless():
        require_net_admin()
    ports = publish_all(spec.publish)
    try:
        if spec.network.is_bridge:
            network, setup = _lease_address(who, hosts_text)
        else:
            network, setup = _join(who, hosts_text, peer)
        if ports and network.ip is None:
            raise ConfigError(f"cannot publish ports of {who.name}: the network it joins has no address "
                              f"(publish from a --net bridge container)")
    except BaseException:
        for port in ports:
            port.close()
        raise
    network.ports = ports
    with _in_use_lock:
        _in_use[who.id] = network
    return network, setup


def _lease_address(who: Who, hosts_text: str):
    home = labkit_home()
    names = [who.hostname, who.name]
    with ipam.lease_book(home) as book:
        drop_dead_leases(book)
        subnet = _subnet_for(book, home)
        peers = dict(book.leases)
        rootless = running_rootless()
        ip = book.allocate({**ipam.owner_record(), "container": who.id, "name": who.name,
                            # rootless, the veth is in the keeper's namespace, and goes with the container's
                            "names": names, "veth": None if rootless else veth.host_end_name(who.id),
                            "hosts_file": who.hosts_file})
        # Saved before the bridge exists: if we are killed now, the sweep still finds
        # the bridge (by its alias) through this dead owner's lease.
        book.save()
        try:
            if rootless:
                from labkit.net import rootless_bridge

                made = rootless_bridge.request(home, "bridge", subnet=str(subnet), gateway=book.network["gateway"],
                                               alias=bridge.alias_for(home))
                book.network["bridge"], bridge_index = made["bridge"], made["index"]
            else:
                book.network["bridge"], bridge_index = bridge.ensure_bridge(home, subnet, book.network["gateway"],
                                                                             book.network.get("bridge"))
        except BaseException:
            book.release(ip)
            remove_bridge_if_unused(book, home)
            book.save()
            raise
        book.save()
        for lease in peers.values():
            hosts.add(lease["hosts_file"], ip, names)
        gateway, bridge_name = book.network["gateway"], book.network["bridge"]
    setup = NetworkSetup(
        join={},
        inside={"interface": veth.CONTAINER_NAME, "address": ip, "netmask": str(subnet.netmask), "gateway": gateway},
        hosts=hosts.for_new_container(hosts_text, ip, names,
                                      {peer_ip: lease["names"] for peer_ip, lease in peers.items()}))
    network = ContainerNetwork("bridge", ip=ip, prefixlen=subnet.prefixlen, gateway=gateway, bridge=bridge_name,
                               bridge_index=bridge_index, host_veth=veth.host_end_name(who.id), home=home)
    return network, setup


def _subnet_for(book, home):
    """The subnet in use, or (first container) one chosen now; LABKIT_SUBNET checked."""
    wanted = os.environ.get("LABKIT_SUBNET")
    if book.network is not None:
        subnet = ipaddress.ip_network(book.network["subnet"])
        if wanted and ipam.parse_subnet(wanted) != subnet:
            raise ConfigError(f"the bridge already uses {subnet} for {len(book.leases)} container(s); "
                              f"LABKIT_SUBNET={wanted} takes effect once they are gone")
        return subnet
    stale = bridge.find_bridge(home)
    if stale is not None:
        # No lease, yet a bridge (the lease file was removed by hand): it has the old
        # subnet's address and route, and nobody of this home uses it. Start afresh.
        bridge.remove_bridge(stale)
    subnet = ipam.choose_subnet([network for network, _ in bridge.host_routes()], wanted)
    book.network = {"bridge": None, "subnet": str(subnet), "gateway": str(next(subnet.hosts()))}
    return subnet


def _join(who: Who, hosts_text: str, peer: Peer):
    """`--net container:NAME`: share NAME's network namespace, as the containers of a
    Kubernetes pod do (same interfaces, address and ports; own everything else)."""
    shared = peer.network
    if shared is not None and shared.ip:
        hosts_text = hosts.for_new_container(peer.hosts_text or hosts_text, shared.ip, [who.hostname, who.name], {})
    network = ContainerNetwork(f"container:{peer.name}", ip=shared.ip if shared else None,
                               prefixlen=shared.prefixlen if shared else None,
                               gateway=shared.gateway if shared else None, bridge=shared.bridge if shared else None)
    return network, NetworkSetup(join={"net": peer.netns}, inside=None, hosts=hosts_text)


def _through_pasta(spec, who: Who, hosts_text: str):
    """`--net pasta`: no bridge, no veth, no address of labkit's: pasta (started at
    attach, as the caller) gives the namespace the host's address and routes and forwards
    the published ports. Needs no privilege: how a container without root gets out."""
    from labkit.net.pasta import program

    program()   # not installed: said now, before anything is made
    network = ContainerNetwork("pasta", forwarded=[PortMapping.parse(text) for text in spec.publish])
    with _in_use_lock:
        _in_use[who.id] = network
    return network, NetworkSetup(join={}, inside=None, hosts=hosts_text)


# --- 2. attach -------------------------------------------------------------------------

def attach(network: ContainerNetwork, pid: int, name: str) -> None:
    """`pid`: the held container process, in its new network namespace."""
    if network.mode == "pasta":
        from labkit.net import pasta, pasta_dirs

        directory = pasta_dirs.new_dir()
        try:
            network.pasta = pasta.start(pid, network.forwarded, os.path.join(directory, "pid"))
        finally:
            os.rmdir(directory)
        network.attached = True
        return
    if network.mode == "bridge":
        alias = f"{bridge.alias_for(network.home)} container {name}"
        if running_rootless():
            from labkit.net import rootless_bridge

            rootless_bridge.request(network.home, "plug", veth=network.host_veth, pid=pid, ip=network.ip, alias=alias)
        else:
            veth.create_pair(network.host_veth, pid, network.bridge_index, network.ip, alias=alias)
        network.attached = True
    make_socket = None
    if network.ports and running_rootless():
        from functools import partial

        from labkit.net import rootless_bridge

        # the container's address is in the keeper's network namespace: connect from there
        make_socket = partial(rootless_bridge.socket_in_bridge_namespace, network.home or labkit_home())
    for port in network.ports:
        port.start(network.ip, make_socket)


# --- 3. detach -------------------------------------------------------------------------

def detach(network: ContainerNetwork | None, ident: str) -> None:
    """`ident`: the container's id (its lease names it)."""
    if network is None or network.released:
        return
    network.released = True
    with _in_use_lock:
        _in_use.pop(ident, None)
    for port in network.ports:
        port.close()
    if network.pasta is not None:
        from labkit.net import pasta

        pasta.stop(network.pasta)
    if network.mode != "bridge":
        return
    if not running_rootless():
        veth.delete(network.host_veth)
    elif network.attached:
        from labkit.net import rootless_bridge

        try:
            rootless_bridge.request(network.home, "unplug", veth=network.host_veth)
        except HostError:
            pass   # the keeper is gone, and the bridge's namespace with it
    with ipam.lease_book(network.home) as book:
        lease = book.leases.get(network.ip)
        if lease is not None and lease.get("container") == ident:
            drop_lease(book, network.ip, veth_gone=True)
        remove_bridge_if_unused(book, network.home)
        book.save()


@atexit.register
def _detach_all():
    """The owner exits normally with containers still running (a detached container in a
    script, a kernel shut down): its helper kills them next (its atexit runs after this
    one), but only the owner knows their leases, so it gives them back now."""
    with _in_use_lock:
        networks = list(_in_use.items())
    for ident, network in networks:
        try:
            detach(network, ident)
        except Exception:  # noqa: BLE001 — at exit, the sweep is the fallback
            pass


def published_ports() -> dict:
    """{container id: ["127.0.0.1:8080->80/tcp"]} for the networks this process holds
    (the relays live in their owner, so only the owner can list them)."""
    with _in_use_lock:
        networks = list(_in_use.items())
    return {ident: [str(port.mapping) for port in network.ports] + [str(mapping) for mapping in network.forwarded]
            for ident, network in networks}


# --- shared with the sweep ----------------------------------------------------------------

def drop_lease(book, ip, veth_gone=False) -> dict:
    """Give `ip` back: its veth (if still there) deleted, its name out of the others' hosts."""
    lease = book.release(ip)
    if lease and lease.get("veth") and not veth_gone:
        veth.delete(lease["veth"])
    for other in book.leases.values():
        hosts.remove(other["hosts_file"], ip)
    return lease


def drop_dead_leases(book) -> list:
    """Leases whose owner died without cleaning up (a killed kernel): their containers
    died with it, so the addresses are free again."""
    dead = [ip for ip, lease in book.leases.items() if not ipam.owner_alive(lease)]
    return [(ip, drop_lease(book, ip)) for ip in dead]


def remove_bridge_if_unused(book, home) -> str | None:
    """The last user is gone: remove the home's bridge. Found by its alias, not by the
    recorded name: a killed owner may never have recorded it, and a name alone could
    by now belong to another home's bridge. Returns the name removed."""
    if book.leases or book.network is None:
        return None
    book.network = None
    name = bridge.find_bridge(home)
    if name is not None and bridge.remove_bridge(name):
        return name
    return None
