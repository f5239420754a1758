"""The host side of the bridge network: one Linux bridge per LABKIT_HOME, with the
gateway address, made when the first container needs it and removed with the last.

A bridge is a virtual switch: every container's veth end on the host is plugged into it,
so containers reach each other at layer 2 and the host reaches them through the
bridge's address (the route the kernel adds for it). Nothing is forwarded or NATed off
the host (the bridge's own forwarding is off, whatever the host's ip_forward): containers
have a default route to the gateway only so that the host's own addresses answer them,
and so every host service listening on all addresses does, as under Docker. The bridge
has no IPv6 (`SEALED`).

Several LABKIT_HOMEs (say a test run next to a notebook) may each want a bridge. The
interface alias records which home a bridge belongs to; names `labkit0`, `labkit1`, …
are handed out under a host-wide lock.
"""

import fcntl
import ipaddress
import os
from contextlib import contextmanager
from pathlib import Path

from labkit.files import open_lock
from labkit.net.bridge_names import ALIAS, PREFIX, alias_for
from labkit.net.rtnl import is_missing, netlink

HOST_LOCK = Path("/run/labkit-net.lock")   # bridge names are a host-wide resource


@contextmanager
def host_lock():
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(open_lock(HOST_LOCK), "w") as lock:   # 0600: no one else may hold it (files.open_lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def host_routes() -> list:
    """[(network, output interface index)] of every IPv4 route of every table: what a
    new subnet must not overlap."""
    def work(ipr):
        return [(ipaddress.ip_network(f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}", strict=False),
                 route.get_attr("RTA_OIF")) for route in ipr.get_routes(family=2)]
    return netlink(work)


def labkit_bridges() -> dict:
    """{name: alias} of every labkit bridge on the host, whoever's home it serves."""
    def work(ipr):
        found = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            name = link.get_attr("IFLA_IFNAME")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge" and name.startswith(PREFIX):
                found[name] = link.get_attr("IFLA_IFALIAS") or ""
        return found
    return netlink(work)


def find_bridge(home) -> str | None:
    """The name of the bridge serving `home`, if there is one."""
    return next((name for name, alias in labkit_bridges().items() if alias == alias_for(home)), None)


def orphaned_bridges() -> list:
    """labkit bridges whose LABKIT_HOME directory no longer exists (a deleted temporary
    home): no lease can name them any more. A truncated alias proves nothing: skipped."""
    return [name for name, alias in labkit_bridges().items()
            if alias.startswith(ALIAS) and len(alias) < 255 and not Path(alias[len(ALIAS):]).exists()]


def link_index(name) -> int | None:
    found = netlink(lambda ipr: ipr.link_lookup(ifname=name))
    return found[0] if found else None


def ensure_bridge(home, subnet, gateway, known_name=None) -> tuple:
    """(name, index) of the home's bridge, up, with `gateway`/prefix on it: the one
    already known (one netlink request), else found by alias, else made."""
    if known_name:
        index = _index_if_ours(known_name, home)
        if index is not None:
            return known_name, index
    with host_lock():
        bridges = labkit_bridges()
        for name, alias in bridges.items():
            if alias == alias_for(home):
                return name, link_index(name)
        name = _free_name(bridges)
        network = ipaddress.ip_network(subnet)

        def work(ipr):
            # A fixed MAC: otherwise a bridge takes the lowest MAC of its ports, which
            # changes as containers come and go and leaves stale ARP entries behind.
            mac = "02:6c:6b:" + ":".join(f"{byte:02x}" for byte in os.urandom(3))
            ipr.link("add", ifname=name, kind="bridge", address=mac)
            try:
                index = ipr.link_lookup(ifname=name)[0]
                seal(name)
                ipr.link("set", index=index, ifalias=alias_for(home), state="up")
                ipr.addr("add", index=index, address=str(gateway), prefixlen=network.prefixlen)
            except BaseException:
                ipr.link("del", ifname=name)
                raise
            return index
        return name, netlink(work)


# Per-device settings of the bridge itself (never the host-wide ones), set before it is up.
SEALED = {
    # No IPv6 on the host's side: a container (CAP_NET_RAW, as Docker gives) could send a
    # router advertisement that adds an address, a route or a default route to the host
    # (an audit added 2001:db8:1ab::/64 to labkit0 so; Docker's CVE-2020-13401), and host
    # services bound to `::` would answer it by link-local.
    "ipv6/conf/{}/disable_ipv6": "1",
    # Nothing that comes in on the bridge is forwarded, even on a host whose ip_forward is
    # 1 (one that runs Docker or libvirt): IPv4 asks the device a packet came in on.
    "ipv4/conf/{}/forwarding": "0",
}


def seal(name) -> None:
    """The bridge's own IPv6 off and its forwarding off (see SEALED). A host without IPv6
    has no such file: nothing to turn off there."""
    for setting, value in SEALED.items():
        try:
            with open(f"/proc/sys/net/{setting.format(name)}", "w") as knob:
                knob.write(value)
        except FileNotFoundError:
            pass


def _index_if_ours(name, home) -> int | None:
    def work(ipr):
        try:
            link = ipr.link("get", ifname=name)[0]
        except Exception as error:  # noqa: BLE001
            if is_missing(error):
                return None
            raise
        return link["index"] if link.get_attr("IFLA_IFALIAS") == alias_for(home) else None
    return netlink(work)


def _free_name(bridges) -> str:
    number = 0
    while f"{PREFIX}{number}" in bridges:
        number += 1
    return f"{PREFIX}{number}"


def remove_bridge(name) -> bool:
    """Delete the bridge (and with it its address and route). False if already gone."""
    def work(ipr):
        try:
            ipr.link("del", ifname=name)
            return True
        except Exception as error:  # noqa: BLE001
            if is_missing(error):
                return False
            raise
    with host_lock():
        return netlink(work)
