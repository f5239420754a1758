"""A veth pair per container: a virtual cable with one end on the host's bridge and the
other, named eth0, inside the container's network namespace.

The container end is created directly in the container's namespace (IFLA_NET_NS_PID on
the peer), so it never appears on the host and its name cannot clash with the host's
eth0. Deleting either end deletes both; the kernel also deletes them when the namespace
dies, but later (netns cleanup runs in a work queue), so teardown deletes explicitly.
"""

from labkit.net.rtnl import is_missing, netlink

HOST_PREFIX = "lkv"          # host ends are lkv<8 hex of the container id> (IFNAMSIZ is 16)
CONTAINER_NAME = "eth0"


def host_end_name(container_id: str) -> str:
    return HOST_PREFIX + container_id[:8]


def mac_for(ip: str) -> str:
    """eth0's MAC made from its IP (as Docker does): an address given back and leased
    again keeps its MAC, so the neighbours' ARP caches stay right. 02: locally
    administered; 6c: "l"."""
    return "02:6c:" + ":".join(f"{int(part):02x}" for part in ip.split("."))


def create_pair(host_name: str, pid: int, bridge_index: int, ip: str, alias: str) -> None:
    """Host end `host_name` plugged into the bridge and up; eth0 in the netns of `pid`.
    `alias` says on the host whose end it is (`ip -d link` shows it)."""
    def work(ipr):
        # The kernel applies master and up while creating; an alias only by a later set.
        ipr.link("add", ifname=host_name, kind="veth", master=bridge_index, state="up",
                 peer={"ifname": CONTAINER_NAME, "net_ns_pid": pid, "address": mac_for(ip)})
        ipr.link("set", ifname=host_name, ifalias=alias[:255])
    netlink(work)


def delete(host_name: str) -> bool:
    """Delete the pair by its host end. False if it was already gone. Takes ~15-20 ms
    however it is done: the kernel waits for an RCU grace period to unregister a device
    (the same wait happens when a dying namespace takes the pair with it)."""
    def work(ipr):
        try:
            ipr.link("del", ifname=host_name)
            return True
        except Exception as error:  # noqa: BLE001
            if is_missing(error):
                return False
            raise
    return netlink(work)


def host_ends() -> list:
    """Names of labkit veth ends on the host (for leak checks and `network inspect`)."""
    def work(ipr):
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                if (link.get_attr("IFLA_IFNAME") or "").startswith(HOST_PREFIX)]
    return netlink(work)
