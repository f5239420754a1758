"""IPAM: which address each container on the bridge has, kept in LABKIT_HOME/net/.

One JSON file (`leases.json`) holds the network (bridge name, subnet, gateway) and a
lease per address with its owner (the process that started the container, named by
PID and start time so that a reused PID is not mistaken for it). Every read-modify-write
happens under an exclusive `flock`: several Jupyter kernels or scripts may start
containers at the same moment, and two must never get the same address.

The subnet is `LABKIT_SUBNET`, or the first of a few private /24s that no route on the
host touches. An overlap is refused: a container address that is also somebody's real
network would hide that network from the host.
"""

import fcntl
import ipaddress
import json
import os
from contextlib import contextmanager
from pathlib import Path

from labkit.errors import ConfigError
from labkit.files import open_lock, write_atomically
from labkit.home import labkit_home
from labkit.linux import processes

# A private range rarely used by home, office or cloud networks (Docker takes 172.17/16,
# Podman 10.88/16, libvirt 192.168.122/24): its /24s are tried in order, one per
# LABKIT_HOME that has a bridge at the moment.
DEFAULT_SUBNETS = tuple(f"10.213.{third}.0/24" for third in range(256))
SMALLEST_PREFIX, LARGEST_PREFIX = 16, 30   # /30: the gateway and one container


def net_dir(home: Path | None = None) -> Path:
    return (home or labkit_home()) / "net"


class LeaseBook:
    """The lease file's content while its lock is held. Change it, then `save()`."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.network = data.get("network")       # {"bridge", "subnet", "gateway"} or None
        self.leases = data.get("leases", {})     # ip -> {"container", "name", "owner_pid", ...}

    def save(self):
        write_atomically(self.path, json.dumps({"network": self.network, "leases": self.leases}, indent=1))

    def allocate(self, record: dict) -> str:
        """The lowest free address of the subnet (the first one is the gateway's)."""
        subnet = ipaddress.ip_network(self.network["subnet"])
        gateway = ipaddress.ip_address(self.network["gateway"])
        for address in subnet.hosts():
            if address != gateway and str(address) not in self.leases:
                self.leases[str(address)] = record
                return str(address)
        raise ConfigError(
            f"no free address left on {subnet} ({len(self.leases)} containers hold the "
            f"{subnet.num_addresses - 3} it has); stop some, or set LABKIT_SUBNET to a larger "
            f"range once the bridge is empty")

    def release(self, ip: str) -> dict | None:
        return self.leases.pop(ip, None)

    def live_leases(self) -> dict:
        return {ip: lease for ip, lease in self.leases.items() if owner_alive(lease)}


@contextmanager
def lease_book(home: Path | None = None):
    """Yield the LeaseBook with the file locked; nothing else reads or writes it meanwhile."""
    directory = net_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    with open(open_lock(directory / "leases.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "leases.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        yield LeaseBook(path, data)


def read_leases(home: Path | None = None) -> LeaseBook | None:
    """A snapshot for display (no lock: a torn read is impossible, the file is renamed in)."""
    try:
        return LeaseBook(net_dir(home) / "leases.json", json.loads((net_dir(home) / "leases.json").read_text()))
    except (FileNotFoundError, ValueError):
        return None


# --- owners ----------------------------------------------------------------------------

def owner_record() -> dict:
    return processes.identity(os.getpid())


def owner_alive(lease: dict) -> bool:
    return processes.is_running(lease.get("owner_pid"), lease.get("owner_start"))


# --- choosing and checking a subnet ------------------------------------------------------

def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        raise ConfigError(f"LABKIT_SUBNET={text!r} is not a network like 10.213.0.0/24 ({error})") from None
    if subnet.version != 4:
        raise ConfigError(f"LABKIT_SUBNET={text!r}: the bridge is IPv4 only")
    if not SMALLEST_PREFIX <= subnet.prefixlen <= LARGEST_PREFIX:
        raise ConfigError(f"LABKIT_SUBNET={text!r}: use a prefix from /{SMALLEST_PREFIX} to /{LARGEST_PREFIX}")
    if not subnet.is_private or subnet.is_loopback or subnet.is_link_local:
        raise ConfigError(f"LABKIT_SUBNET={text!r} is not a private range; use one inside 10.0.0.0/8, "
                          f"172.16.0.0/12 or 192.168.0.0/16")
    return subnet


def overlapping_route(subnet, routes):
    """The first host route that shares addresses with `subnet`. The default route
    (0.0.0.0/0) overlaps everything and is not a network of its own: ignored."""
    for route in routes:
        if route.prefixlen and route.overlaps(subnet):
            return route
    return None


def choose_subnet(routes, wanted: str | None = None) -> ipaddress.IPv4Network:
    """`wanted` (LABKIT_SUBNET) if no route overlaps it, else the first free default."""
    if wanted:
        subnet = parse_subnet(wanted)
        clash = overlapping_route(subnet, routes)
        if clash is not None:
            raise ConfigError(f"LABKIT_SUBNET={wanted} overlaps {clash}, which the host already routes; "
                              f"pick a range no route on the host covers (see `ip route show table all`)")
        return subnet
    for candidate in DEFAULT_SUBNETS:
        subnet = ipaddress.ip_network(candidate)
        if overlapping_route(subnet, routes) is None:
            return subnet
    raise ConfigError(f"every default bridge subnet ({DEFAULT_SUBNETS[0]} … {DEFAULT_SUBNETS[-1]}) overlaps a "
                      f"route on this host; set LABKIT_SUBNET to a free private range")
