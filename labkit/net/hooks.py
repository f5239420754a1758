"""The runtime's three network hooks, in the order a container meets them:

1. `prepare(container, plan)` — before anything is made: check rights, take the
   published host ports, lease an address (and make the bridge if it is the first),
   write the container's /etc/hosts, and tell the container process what to set up
   inside (`plan["network_inside"]`) or which namespace to join (`plan["join"]`).
2. `attach(container)` — the container process exists, held in its new network
   namespace: plug a veth pair into the bridge with eth0 on the inside; start relaying
   published ports.
3. `detach(container)` — after exit: stop the relays, delete the veth, give the address
   back, drop the name from the others' /etc/hosts, and remove the bridge with its last
   user.

Each step undoes its own work when it fails, and `detach` may be called more than once.
"""

import atexit
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import ConfigError
from labkit.home import labkit_home
from labkit.net import bridge, hosts, ipam, veth
from labkit.net.ports import publish_all
from labkit.net.rtnl import require_net_admin


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

    def __repr__(self):
        where = f"{self.ip}/{self.prefixlen} on {self.bridge}" if self.mode == "bridge" else self.mode
        published = ", ".join(str(port.mapping) for port in self.ports)
        return f"<ContainerNetwork {where}{' ports ' + published if published else ''}>"


_in_use = {}     # container id -> container, whose network this process has not yet given back
_in_use_lock = threading.Lock()


# --- 1. prepare ------------------------------------------------------------------------

def prepare(container, plan) -> None:
    require_net_admin()
    ports = publish_all(container.spec.publish)
    try:
        if container.spec.network == "bridge":
            network = _lease_address(container, plan)
        else:
            network = _join(container, plan, container.spec.network.split(":", 1)[1])
        if ports and network.ip is None:
            raise ConfigError(f"cannot publish ports of {container.name}: the network it joins has no address "
                              f"(publish from a --net bridge container)")
    except BaseException:
        for port in ports:
            port.close()
        raise
    network.ports = ports
    container.network = network
    with _in_use_lock:
        _in_use[container.id] = container


def _lease_address(container, plan) -> ContainerNetwork:
    home = labkit_home()
    names = [container.hostname, container.name]
    with ipam.lease_book(home) as book:
        drop_dead_leases(book)
        subnet = _subnet_for(book, home)
        peers = dict(book.leases)
        ip = book.allocate({**ipam.owner_record(), "container": container.id, "name": container.name,
                            "names": names, "veth": veth.host_end_name(container.id),
                            "hosts_file": str(container.init_dir / "etc" / "hosts")})
        # Saved before the bridge exists: if we are killed now, the sweep still finds
        # the bridge (by its alias) through this dead owner's lease.
        book.save()
        try:
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
    plan["init_files"]["hosts"] = hosts.for_new_container(
        plan["init_files"]["hosts"], ip, names, {peer_ip: lease["names"] for peer_ip, lease in peers.items()})
    plan["network_inside"] = {"interface": veth.CONTAINER_NAME, "address": ip,
                              "netmask": str(subnet.netmask), "gateway": gateway}
    return ContainerNetwork("bridge", ip=ip, prefixlen=subnet.prefixlen, gateway=gateway, bridge=bridge_name,
                            bridge_index=bridge_index, host_veth=veth.host_end_name(container.id), home=home)


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


def _join(container, plan, name) -> ContainerNetwork:
    """`--net container:NAME`: share NAME's network namespace, as the containers of a
    Kubernetes pod do (same interfaces, address and ports; own everything else)."""
    from labkit.runtime.container import running_containers

    target = running_containers().get(name)
    if target is None or target.state != "running" or target.result is not None or not target.pid \
            or not os.path.exists(target.netns):
        running = ", ".join(sorted(running_containers())) or "none"
        raise ConfigError(f"cannot join the network of {name!r}: no running container by that name in this "
                          f"session (running: {running}); start it with detach=True first")
    if target.spec.network == "host":
        raise ConfigError(f"container {name!r} uses the host's network; use --net host instead of container:{name}")
    plan["join"] = {"net": target.netns}
    shared = target.network
    if shared is not None and shared.ip:
        try:
            base = (target.init_dir / "etc" / "hosts").read_text()
        except FileNotFoundError:
            base = plan["init_files"]["hosts"]
        plan["init_files"]["hosts"] = hosts.for_new_container(base, shared.ip, [container.hostname, container.name], {})
    return ContainerNetwork(f"container:{name}", ip=shared.ip if shared else None,
                            prefixlen=shared.prefixlen if shared else None,
                            gateway=shared.gateway if shared else None, bridge=shared.bridge if shared else None)


# --- 2. attach -------------------------------------------------------------------------

def attach(container) -> None:
    network = container.network
    if network.mode == "bridge":
        veth.create_pair(network.host_veth, container.pid, network.bridge_index, network.ip,
                         alias=f"{bridge.alias_for(network.home)} container {container.name}")
        network.attached = True
    for port in network.ports:
        port.start(network.ip)


# --- 3. detach -------------------------------------------------------------------------

def detach(container) -> None:
    network = container.network
    if network is None or network.released:
        return
    network.released = True
    with _in_use_lock:
        _in_use.pop(container.id, None)
    for port in network.ports:
        port.close()
    if network.mode != "bridge":
        return
    veth.delete(network.host_veth)
    with ipam.lease_book(network.home) as book:
        lease = book.leases.get(network.ip)
        if lease is not None and lease.get("container") == container.id:
            drop_lease(book, network.ip, veth_gone=True)
        remove_bridge_if_unused(book, network.home)
        book.save()


@atexit.register
def _detach_all():
    """The owner exits normally with containers still running (a detached container in a
    script, a kernel shut down): its helper kills them next (its atexit runs after this
    one), but only the owner knows their leases, so it gives them back now."""
    with _in_use_lock:
        containers = list(_in_use.values())
    for container in containers:
        try:
            detach(container)
        except Exception:  # noqa: BLE001 — at exit, the sweep is the fallback
            pass


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
